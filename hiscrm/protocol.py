"""Every message between master and worker: one pydantic union, one envelope, one codec.

Frames on the pipe are JSON envelopes::

    {"protocol": 1, "id": 17, "sent_at": 1763848020123, "body": {"type": "worker:heartbeat", ...}}

``decode`` never lets bad input escape as anything but a :class:`ProtocolError` that says
what was wrong (undecodable bytes, another protocol version, an unknown type, an invalid
field) and carries the first bytes, so receivers can log it, count it and carry on.

A type constant cannot be "undefined at run time" here: a message is its class, the union
lists every class, and ``tests/test_protocol.py`` checks that nothing is left out.
"""

import hashlib
import itertools
import json
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hiscrm.models import AccountSpec

PROTOCOL_VERSION = 1
ERROR_HEAD_BYTES = 80  # how much of a bad frame goes into the error message


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- worker -> master -------------------------------------------------------------------


class WorkerRegister(_Message):
    """First message of a worker: who it is and which protocol it speaks."""

    type: Literal["worker:register"] = "worker:register"
    worker_id: str
    pid: int
    protocol: int
    schema_hash: str
    platforms: list[str]
    boot_ms: float  # from the start of the interpreter to this message


class WorkerHeartbeat(_Message):
    """Sent by the worker's event loop every ``heartbeat_interval_s``."""

    type: Literal["worker:heartbeat"] = "worker:heartbeat"
    seq: int
    loop_lag_ms: float  # how late the loop woke up for this beat
    errors_total: int
    progress_at: dict[str, int] = Field(default_factory=dict)  # account id -> ms of last progress


class WorkerError(_Message):
    """An error caught in the worker; it is also in the worker's log with its traceback."""

    type: Literal["worker:error"] = "worker:error"
    source: str  # where it happened: "account", "heartbeat", "protocol", "loop", ...
    account_id: str | None = None
    error_type: str
    message: str
    traceback: str
    errors_total: int


class WorkerAccountState(_Message):
    """An account task in the worker changed state."""

    type: Literal["worker:account:state"] = "worker:account:state"
    account_id: str
    state: str
    restarts: int
    reason: str


class WorkerGoodbye(_Message):
    """The worker is about to exit on its own terms."""

    type: Literal["worker:goodbye"] = "worker:goodbye"
    reason: str


# --- master -> worker -------------------------------------------------------------------


class MasterWelcome(_Message):
    """Registration accepted; carries the master's protocol so the worker checks it too."""

    type: Literal["master:welcome"] = "master:welcome"
    protocol: int
    schema_hash: str
    master_pid: int


class MasterRefuse(_Message):
    """Registration refused; the worker exits with ``ExitCode.PROTOCOL_MISMATCH``."""

    type: Literal["master:refuse"] = "master:refuse"
    reason: str


class MasterShutdown(_Message):
    """Stop gracefully within ``timeout_s`` and exit 0."""

    type: Literal["master:shutdown"] = "master:shutdown"
    reason: str
    timeout_s: float


class MasterAccountAssign(_Message):
    type: Literal["master:account:assign"] = "master:account:assign"
    account: AccountSpec


class MasterAccountRevoke(_Message):
    type: Literal["master:account:revoke"] = "master:account:revoke"
    account_id: str


AnyMessage = (
    WorkerRegister
    | WorkerHeartbeat
    | WorkerError
    | WorkerAccountState
    | WorkerGoodbye
    | MasterWelcome
    | MasterRefuse
    | MasterShutdown
    | MasterAccountAssign
    | MasterAccountRevoke
)
Message = Annotated[AnyMessage, Field(discriminator="type")]


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: int
    id: int
    sent_at: int  # ms since the epoch
    body: Message

    @field_validator("protocol")
    @classmethod
    def _same_version(cls, value: int) -> int:
        if value != PROTOCOL_VERSION:
            raise ValueError(f"protocol version {value}, this side speaks {PROTOCOL_VERSION}")
        return value


def message_types() -> dict[str, type[_Message]]:
    """Every message class in the union, by its ``type`` tag."""
    members: tuple[type[_Message], ...] = AnyMessage.__args__
    return {m.model_fields["type"].default: m for m in members}


_SCHEMA_HASH: str | None = None


def schema_hash() -> str:
    """A short hash of the whole message schema; both sides compare it at registration."""
    global _SCHEMA_HASH
    if _SCHEMA_HASH is None:
        schema = json.dumps(Envelope.model_json_schema(), sort_keys=True)
        _SCHEMA_HASH = hashlib.sha256(schema.encode()).hexdigest()[:16]
    return _SCHEMA_HASH


class ProtocolError(Exception):
    """A frame that could not be turned into a message. ``kind`` is one of
    ``undecodable``, ``version``, ``unknown_type``, ``invalid``."""

    def __init__(self, kind: str, detail: str, head: bytes) -> None:
        super().__init__(f"{kind}: {detail}; first bytes: {head!r}")
        self.kind = kind
        self.detail = detail
        self.head = head


class Encoder:
    """Wraps messages into envelopes with increasing ids; one per sending side."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def encode(self, body: AnyMessage) -> bytes:
        envelope = Envelope.model_construct(
            protocol=PROTOCOL_VERSION,
            id=next(self._ids),
            sent_at=time.time_ns() // 1_000_000,
            body=body,
        )
        return envelope.model_dump_json().encode()


def decode(data: bytes) -> Envelope:
    """Validate one frame into an Envelope or raise ProtocolError saying what was wrong."""
    try:
        return Envelope.model_validate_json(data)
    except ValidationError as exc:
        raise _classify(exc, data) from exc


def _classify(exc: ValidationError, data: bytes) -> ProtocolError:
    head = bytes(data[:ERROR_HEAD_BYTES])
    errors = exc.errors(include_url=False)
    if any(e["type"] in ("json_invalid", "json_type") for e in errors):
        return ProtocolError("undecodable", errors[0]["msg"], head)
    for error in errors:
        if error["loc"][:1] == ("protocol",):
            return ProtocolError("version", str(error["msg"]).removeprefix("Value error, "), head)
    for error in errors:
        if error["loc"] == ("body",) and error["type"] == "union_tag_invalid":
            tag = _body_type(data)
            return ProtocolError("unknown_type", f"unknown message type {tag!r}", head)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    return ProtocolError("invalid", f"{where}: {first['msg']}", head)


def _body_type(data: bytes) -> Any:
    try:
        return json.loads(data)["body"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


class WorkerBoot(BaseModel):
    """What a worker process is told when it is started (not a message on the pipe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    worker_id: str
    master_pid: int
    log_path: str
    log_max_bytes: int
    log_backups: int
    heartbeat_interval_s: float
    stop_timeout_s: float
    backoff_initial_s: float
    backoff_max_s: float
    backoff_reset_after_s: float
    platforms: list[str]  # module:Class specs to import at boot
