"""Rotation at line boundaries under concurrent writers, and reading tails."""

import os
import re
import threading
from pathlib import Path

from hiscrm.logfile import LineStream, RotatingLogFile, strip_ansi, tail_lines

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
