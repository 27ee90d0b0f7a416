"""Why a worker process ended, as a value: logged, kept for status, served by the API.

``describe_exit`` is pure: it turns an exit status and what the master knew (had it asked
the process to stop? had it registered?) into an :class:`ExitRecord` with a short
``reason`` token (a bounded set, fit for a metric label) and a sentence for people.
"""

import signal

from pydantic import BaseModel

from hiscrm.exit_codes import ExitCode
from hiscrm.master.supervision.stop_plan import OPERATOR_REASONS, StopReason

# Ends an account's platform can cause: evidence for quarantine (see may_be_an_accounts_doing).
ACCOUNT_CAUSED = frozenset(
    {
        "killed",
        "crashed",
        "exited",
        StopReason.HEARTBEAT_TIMEOUT.value,
        StopReason.MEMORY_LIMIT.value,
    }
)

_EXIT_CODE_REASONS = {
    ExitCode.CRASHED: ("crashed", "an uncaught exception"),
    ExitCode.BOOT_FAILED: ("boot_failed", "it could not import its runtime or platforms"),
    ExitCode.LOG_FAILED: ("log_failed", "it could not open its log file (why: end of log_tail)"),
    ExitCode.PROTOCOL_MISMATCH: ("protocol_mismatch", "it speaks another protocol than the master"),
    ExitCode.ORPHANED: ("orphaned", "it lost its master"),
}

# Signals on which faulthandler writes a crash dump (``Fatal Python error: ...``, the
# stacks, the non-standard extension modules loaded) into the worker's log.
DUMP_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGFPE, signal.SIGABRT, signal.SIGBUS, signal.SIGILL}
)
DUMP_HEADER = "Fatal Python error: "


def exit_tail(lines: list[str], keep: int, exitcode: int) -> list[str]:
    """The end of a worker's log for its exit record: the last ``keep`` lines, or, for a
    death by a signal that makes a crash dump which began further back than that, the
    dump from its first line on (its first frame is where the process crashed or hung; a
    deep stack, or the list of extension modules that ends the dump, would push it out)."""
    if exitcode < 0 and -exitcode in DUMP_SIGNALS:
        for index in range(len(lines) - 1, -1, -1):
            if lines[index].startswith(DUMP_HEADER):
                return lines[min(index, max(0, len(lines) - keep)) :]
    return lines[-keep:] if keep > 0 else []


# Every reason a record can give (for metric labels known before their first event).
EXIT_REASONS = tuple(
    dict.fromkeys(
        ["killed", "crashed", "exited", "boot_failed"]
        + [token for token, _ in _EXIT_CODE_REASONS.values()]
        + [reason.value for reason in StopReason]
    )
)


class ExitRecord(BaseModel):
    code: int | None  # exit code, when it exited by itself
    signal: str | None  # signal name, when a signal ended it
    reason: str  # short token, e.g. "killed", "crashed", "heartbeat_timeout"
    detail: str  # one sentence for people
    at: int  # ms since the epoch
    during_start: bool  # it ended before it had registered
    uptime_s: float
    log_tail: list[str]

    @property
    def may_be_an_accounts_doing(self) -> bool:
        """An end a platform can cause (killed — the OOM killer too —, crashed, hung,
        exited by itself, restarted for growing over the memory limit), after the worker
        had registered: evidence for quarantine."""
        return not self.during_start and self.reason in ACCOUNT_CAUSED

    @property
    def is_failure(self) -> bool:
        """Every reason but an operator's counts towards backoff, including those the
        master acts on by itself (heartbeat_timeout, start_timeout, protocol errors)."""
        return self.reason not in OPERATOR_REASONS


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(
    exitcode: int,
    *,
    requested: StopReason | None,
    during_start: bool,
    uptime_s: float,
    at_ms: int,
    log_tail: list[str],
) -> ExitRecord:
    """``exitcode`` as multiprocessing reports it (negative: killed by that signal);
    ``requested`` is the reason the master asked it to stop, if it did."""
    code = exitcode if exitcode >= 0 else None
    sig = _signal_name(-exitcode) if exitcode < 0 else None
    how = f"exit code {code}" if sig is None else f"signal {sig}"

    if requested is not None:
        reason, detail = requested.value, f"stopped by the master ({requested}), {how}"
    elif sig == "SIGKILL":
        reason, detail = "killed", "killed by SIGKILL (perhaps the out-of-memory killer)"
    elif sig in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT"):
        reason, detail = "crashed", f"crashed with {sig}; see the faulthandler dump in its log"
    elif sig is not None:
        reason, detail = "killed", f"killed by {sig}"
    elif code == 0:
        reason, detail = "exited", "exited with code 0 although nobody asked it to stop"
    elif code in _EXIT_CODE_REASONS:
        token, why = _EXIT_CODE_REASONS[ExitCode(code)]
        reason, detail = token, f"exited with code {code}: {why}"
    else:
        reason, detail = "crashed", f"exited with code {code}"

    if during_start and requested is None and reason != "boot_failed":
        reason, detail = "boot_failed", f"died before registering: {detail}"
    return ExitRecord(
        code=code,
        signal=sig,
        reason=reason,
        detail=detail,
        at=at_ms,
        during_start=during_start,
        uptime_s=round(uptime_s, 3),
        log_tail=log_tail,
    )
