"""Rotation at line boundaries under concurrent writers, and reading tails."""

import errno
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hiscrm.log_config import _FileLogger
from hiscrm.logfile import LineStream, RotatingLogFile, boot_error_path, strip_ansi, tail_lines

LINE = re.compile(r"^(w\d) (\d+) \.+$")


def test_concurrent_lines_are_never_torn_and_rotation_keeps_backups(tmp_path: Path) -> None:
    sink = RotatingLogFile(tmp_path / "w.log", max_bytes=20_000, backups=2)
    sink.open()
    stream = LineStream(sink, fd=sink.fd)

    def write(name: str) -> None:
        for i in range(3000):
            stream.write(f"{name} {i} ")  # a line in three pieces, as print() does
            stream.write("." * (i % 50 + 1))
            stream.write("\n")

    threads = [threading.Thread(target=write, args=(f"w{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.log", "w.log.1", "w.log.2"]
    assert sink.rotations > 5
    seen: dict[str, int] = {}
    for name in ["w.log.2", "w.log.1", "w.log"]:
        for line in (tmp_path / name).read_text().splitlines():
            match = LINE.match(line)
            assert match, f"torn line: {line!r}"
            writer, number = match.group(1), int(match.group(2))
            if writer in seen:
                assert number == seen[writer] + 1
            seen[writer] = number
    assert all(n == 2999 for n in seen.values())


def test_output_behind_our_back_rotates_at_the_next_line_end(tmp_path: Path) -> None:
    sink = RotatingLogFile(tmp_path / "w.log", max_bytes=4096, backups=1)
    sink.open()
    os.write(sink.fd, b"y" * 5000)  # like C code writing to fd 2, mid-line
    assert sink.maybe_rotate() is False
    os.write(sink.fd, b"\n")
    assert sink.maybe_rotate() is True
    sink.write(b"after\n")
    sink.close()
    assert (tmp_path / "w.log").read_text() == "after\n"
    assert (tmp_path / "w.log.1").read_text() == "y" * 5000 + "\n"


def test_no_backups_truncates(tmp_path: Path) -> None:
    sink = RotatingLogFile(tmp_path / "w.log", max_bytes=4096, backups=0)
    sink.open()
    for i in range(200):
        sink.write(f"line {i:04d} {'.' * 40}\n".encode())
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["w.log"]
    assert (tmp_path / "w.log").read_text().endswith("line 0199 " + "." * 40 + "\n")


def test_redirected_fds_follow_rotation(tmp_path: Path) -> None:
    target = os.open(os.devnull, os.O_WRONLY)  # an fd to stand in for fd 1
    try:
        sink = RotatingLogFile(
            tmp_path / "w.log", max_bytes=4096, backups=1, redirect_fds=(target,)
        )
        sink.open()
        os.write(target, b"before\n")
        sink.write(b"z" * 5000 + b"\n")  # rotates
        os.write(target, b"after\n")
        sink.close()
        assert (tmp_path / "w.log").read_text() == "after\n"
        assert (tmp_path / "w.log.1").read_text().startswith("before\n")
    finally:
        os.close(target)


def test_tail_reaches_into_the_rotated_file(tmp_path: Path) -> None:
    (tmp_path / "w.log.1").write_text("".join(f"old {i}\n" for i in range(30)))
    (tmp_path / "w.log").write_text("new 0\nnew 1\n")
    assert tail_lines(tmp_path / "w.log", 4) == ["old 28", "old 29", "new 0", "new 1"]
    assert tail_lines(tmp_path / "missing.log", 5) == []
    big = tmp_path / "big.log"
    big.write_text("".join(f"{i}\n" for i in range(100_000)))
    assert tail_lines(big, 3) == ["99997", "99998", "99999"]


def test_colour_codes_are_removed() -> None:
    assert strip_ansi("\x1b[1;31mred\x1b[0m plain") == "red plain"
    assert strip_ansi("no codes") == "no codes"


def test_flush_in_one_thread_does_not_tear_another_threads_line(tmp_path: Path) -> None:
    sink = RotatingLogFile(tmp_path / "w.log", max_bytes=1_000_000, backups=1)
    sink.open()
    stream = LineStream(sink, fd=sink.fd)
    started, release = threading.Event(), threading.Event()

    def slow_line() -> None:
        stream.write("first half ")
        started.set()
        release.wait(5)
        stream.write("second half\n")

    other = threading.Thread(target=slow_line)
    other.start()
    started.wait(5)
    stream.write("main line")
    stream.flush()  # print(..., flush=True) in the main thread
    release.set()
    other.join()
    stream.write("unfinished at exit")
    stream.flush()
    sink.close()
    # The flushed partial line has no newline (as on a terminal); the other thread's two
    # halves stay together.
    assert (tmp_path / "w.log").read_text() == (
        "main line" + "first half second half\n" + "unfinished at exit"
    )


class _FailOnce:
    """Replaces one ``os`` function: its first call once armed raises ``error``."""

    def __init__(self, name: str, error: OSError) -> None:
        self.name = name
        self.real: Callable[..., Any] = getattr(os, name)
        self.error = error
        self.armed = False
        self.failed = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.armed:
            self.armed = False
            self.failed += 1
            raise self.error
        return self.real(*args, **kwargs)


ROTATION_CALLS = [
    ("open", OSError(errno.EMFILE, "Too many open files")),
    ("open", OSError(errno.ENOSPC, "No space left on device")),
    ("replace", OSError(errno.EIO, "Input/output error")),
    ("link", OSError(errno.EPERM, "Operation not permitted")),  # no hard links here
    ("dup2", OSError(errno.EBADF, "Bad file descriptor")),
]


@pytest.mark.parametrize(("call", "error"), ROTATION_CALLS, ids=lambda v: str(v)[:30])
def test_a_rotation_that_fails_once_loses_no_line_and_keeps_the_live_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str, error: OSError
) -> None:
    target = os.open(os.devnull, os.O_WRONLY)  # stands in for fd 2
    path = tmp_path / "w.log"
    sink = RotatingLogFile(path, max_bytes=1000, backups=10, redirect_fds=(target,))
    sink.open()
    logger = _FileLogger(sink)  # what counts lines it could not write as lost
    fault = _FailOnce(call, error)
    monkeypatch.setattr(os, call, fault)
    try:
        for n in range(60):
            fault.armed = fault.armed or n == 9  # the 10th line fills the file: rotation
            logger.msg(f"line {n:03d} " + "." * 90)  # 100 bytes with the newline
            assert path.exists(), f"the live file is gone after line {n}"
            os.write(target, f"fd line {n:03d}\n".encode())
    finally:
        sink.close()
        os.close(target)
    assert fault.failed == 1
    assert sink.write_errors == 0  # nothing was lost, so nothing counts as lost
    written = [
        line
        for name in [*(f"w.log.{n}" for n in range(10, 0, -1)), "w.log"]
        if (tmp_path / name).exists()
        for line in (tmp_path / name).read_text().splitlines()
        if line.startswith("line ")
    ]
    assert written == [f"line {n:03d} " + "." * 90 for n in range(60)]  # each once, in order
    assert (path.stat().st_size) > 0  # the last lines went to the live file
    for file in tmp_path.glob("w.log*"):
        size = file.stat().st_size
        assert size <= 1000 + 100 + 16 * 12, f"{file.name} grew to {size} bytes"
    if call in ("link",):  # a file system without hard links rotates all the same
        assert sink.rotate_errors == 0
    else:
        assert sink.rotate_errors == 1
        assert sink.last_rotate_error is error
    assert sink.rotations >= 5
    assert not sink.rotation_failing
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_a_rotation_that_keeps_failing_is_retried_by_every_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.log"
    sink = RotatingLogFile(path, max_bytes=1000, backups=2)
    sink.open()
    real_open = os.open

    def no_fds(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "open", no_fds)
    for n in range(15):
        sink.write(f"line {n:03d} ".encode() + b"." * 90 + b"\n")
    assert sink.rotate_errors == 6  # lines 10 to 15 each tried
    assert sink.rotation_failing
    assert path.stat().st_size == 1500  # all in the live file, which still has its name
    monkeypatch.setattr(os, "open", real_open)
    sink.write(b"and now it rotates\n")
    sink.close()
    assert sink.rotations == 1
    assert not sink.rotation_failing
    assert (tmp_path / "w.log.1").read_text().count("\n") == 16
    assert path.read_text() == ""


def test_the_tail_ends_with_why_the_log_could_not_be_opened(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.mkdir()  # a directory where the log file should be
    assert tail_lines(path, 5) == [f"(cannot read {path}: [Errno 21] Is a directory: '{path}')"]
    boot_error_path(path).write_text("Traceback ...\nworker w pid 1: cannot open its log\n")
    assert tail_lines(path, 5)[-2:] == ["Traceback ...", "worker w pid 1: cannot open its log"]
    assert tail_lines(path, 1) == ["worker w pid 1: cannot open its log"]
