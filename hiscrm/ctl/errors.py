"""hiscrmctl's one kind of failure: a sentence for the operator, and for ``--json`` the
same sentence with the facts behind it."""

from typing import Any

from hiscrm.exit_codes import ExitCode


class CtlError(Exception):
    """Something went wrong; the message is for the operator.

    ``fields`` and ``answer`` (what the master said) go into the ``--json`` error object
    beside ``error``; ``notes`` are extra lines for people (e.g. the end of a worker's log);
    ``said`` is the master's own sentence when it refused a request.
    """

    def __init__(
        self,
        message: str,
        *,
        exit_code: int = ExitCode.CRASHED,
        notes: list[str] | None = None,
        answer: dict[str, Any] | None = None,
        said: str | None = None,
        **fields: Any,
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.said = said
        self.notes = notes or []
        self.fields = {**(answer or {}), **fields}

    def as_json(self) -> dict[str, Any]:
        return {"error": str(self), **{k: v for k, v in self.fields.items() if k != "error"}}
