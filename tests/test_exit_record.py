import pytest

from hiscrm.exit_codes import ExitCode
from hiscrm.master.supervision.exit_record import describe_exit, exit_tail
from hiscrm.master.supervision.stop_plan import StopReason


def describe(exitcode: int, requested: str | None = None, during_start: bool = False):
    return describe_exit(
        exitcode,
        requested=StopReason(requested) if requested is not None else None,
        during_start=during_start,
        uptime_s=1.23456,
        at_ms=5,
        log_tail=["last"],
    )


@pytest.mark.parametrize(
    ("exitcode", "requested", "during_start", "reason", "failure", "code", "sig"),
    [
        (-9, None, False, "killed", True, None, "SIGKILL"),
        (-11, None, False, "crashed", True, None, "SIGSEGV"),
        (-15, None, False, "killed", True, None, "SIGTERM"),
        (1, None, False, "crashed", True, 1, None),
        (0, None, False, "exited", True, 0, None),
        (ExitCode.ORPHANED, None, False, "orphaned", True, 75, None),
        (ExitCode.BOOT_FAILED, None, True, "boot_failed", True, 78, None),
        (ExitCode.LOG_FAILED, None, True, "boot_failed", True, 73, None),
        (ExitCode.LOG_FAILED, None, False, "log_failed", True, 73, None),
        (-9, None, True, "boot_failed", True, None, "SIGKILL"),
        (0, "shutdown", False, "shutdown", False, 0, None),
        (-9, "restart", False, "restart", False, None, "SIGKILL"),
        (-6, "heartbeat_timeout", False, "heartbeat_timeout", True, None, "SIGABRT"),
        (
            ExitCode.PROTOCOL_MISMATCH,
            "protocol_mismatch",
            True,
            "protocol_mismatch",
            True,
            76,
            None,
        ),
    ],
)
def test_exit_reasons(
    exitcode: int,
    requested: str | None,
    during_start: bool,
    reason: str,
    failure: bool,
    code: int | None,
    sig: str | None,
) -> None:
    record = describe(exitcode, requested, during_start)
    assert (record.reason, record.is_failure, record.code, record.signal) == (
        reason,
        failure,
        code,
        sig,
    )
    assert record.detail
    assert record.uptime_s == 1.235
    assert record.log_tail == ["last"]


def test_sigkill_hints_at_the_oom_killer() -> None:
    assert "out-of-memory" in describe(-9).detail


def test_a_log_failure_names_the_log_file_not_the_code() -> None:
    record = describe(ExitCode.LOG_FAILED, during_start=True)
    assert "could not open its log file" in record.detail
    assert "import" not in record.detail


def test_the_tail_of_a_crash_dump_starts_at_its_header_however_deep_the_stack() -> None:
    dump = [
        "Fatal Python error: Segmentation fault",
        "",
        "Current thread 0x01 (most recent call first):",
        '  File "platform.py", line 3 in run',
        *[f'  File "frame{n}.py", line 1 in f' for n in range(25)],
        "",
        "Extension modules: setproctitle._setproctitle (total: 1)",
    ]
    log = [f"line {n}" for n in range(30)] + dump
    assert exit_tail(log, 20, -11) == dump  # the faulting frame kept
    assert exit_tail(log, 20, -6) == dump  # SIGABRT: a hung worker's stack
    assert exit_tail(log, 20, -9) == log[-20:]  # SIGKILL writes no dump
    assert exit_tail(log, 20, 1) == log[-20:]
    short = [f"line {n}" for n in range(30)] + dump[:4]
    assert exit_tail(short, 20, -11) == short[-20:]  # within the last lines: as usual
    assert exit_tail(["a", "b"], 20, -11) == ["a", "b"]
    assert exit_tail(["a", "b"], 0, 1) == []
