"""Size-rotated log files that never tear a line, and reading their last lines.

A worker's file descriptors 1 and 2 point straight at its log file, so whatever it writes
there (C code, a faulthandler dump, an uncaught traceback) lands in the file without
passing through anybody. Nothing is held in user space except an incomplete line, so
nothing already written is lost if the master dies.

Python-level output goes through :class:`LineStream`, which hands whole lines to
:meth:`RotatingLogFile.write` in one ``write(2)`` each; rotation happens only between
lines. Output that bypasses Python (fd 1 and 2) is noticed by :meth:`maybe_rotate`, which
the worker calls on every heartbeat.

Standard library only: a worker imports this before its log file exists.
"""

import io
import os
import re
import threading
from pathlib import Path
from typing import BinaryIO

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
_PARTIAL_LINE_LIMIT = 64 * 1024  # a line longer than this is written in pieces
_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC  # read: see maybe_rotate


class RotatingLogFile:
    """An append-only file rotated by size to ``path.1 … path.N``.

    Rotation opens the next file first (under a temporary name), then shifts the backups
    and swaps it in, so ``path`` always exists and always receives what follows. If any
    step fails (out of file descriptors, disk full), the current file stays in use and
    the next write (or ``maybe_rotate``) tries again; the failure is counted in
    ``rotate_errors`` and kept in ``last_rotate_error``, and ``write`` raises only when
    its own data was not written.
    """

    def __init__(
        self, path: Path, max_bytes: int, backups: int, redirect_fds: tuple[int, ...] = ()
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.redirect_fds = redirect_fds
        self._fd = -1
        self._size = 0
        self._lock = threading.RLock()  # a signal handler may log while we write
        self.rotations = 0  # rotations done
        self.rotate_errors = 0  # rotations that failed (each retried at the next line)
        self.last_rotate_error: OSError | None = None
        self.rotation_failing = False  # the last rotation attempt failed
        self.write_errors = 0  # counted by loggers that could not write (disk full)

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, _FLAGS, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._point_redirects()

    def _point_redirects(self) -> None:
        for target in self.redirect_fds:
            os.dup2(self._fd, target)

    @property
    def fd(self) -> int:
        return self._fd

    def write(self, data: bytes) -> None:
        """Append ``data``; rotate afterwards if the file is full and ``data`` ended a line.
        Raises OSError only if ``data`` was not (wholly) written."""
        with self._lock:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            self._size += len(data)
            if self._size >= self.max_bytes and data.endswith(b"\n"):
                self._rotate_locked()

    def maybe_rotate(self) -> bool:
        """Rotate if output written behind our back filled the file; only at a line end.
        True if it rotated."""
        with self._lock:
            self._size = os.fstat(self._fd).st_size
            if self._size < self.max_bytes or os.pread(self._fd, 1, self._size - 1) != b"\n":
                return False
            return self._rotate_locked()

    def _rotate_locked(self) -> bool:
        try:
            if self.backups == 0:
                os.ftruncate(self._fd, 0)
                self._size = 0
            else:
                self._swap_in_new_file()
                self._point_redirects()
        except OSError as exc:
            self.rotate_errors += 1
            self.last_rotate_error = exc
            self.rotation_failing = True
            return False
        self.rotation_failing = False
        self.rotations += 1
        return True

    def _swap_in_new_file(self) -> None:
        """Open the next file, shift the backups, and put the next file in place under
        ``path``; on failure, the current file keeps its name and stays in use."""
        fresh = self.path.with_name(f".{self.path.name}.next")
        fd = os.open(fresh, _FLAGS | os.O_TRUNC, 0o644)
        try:
            for n in range(self.backups - 1, 0, -1):
                if self._backup(n).exists():
                    os.replace(self._backup(n), self._backup(n + 1))
            first = self._backup(1)
            first.unlink(missing_ok=True)  # with one backup, nothing moved it away
            try:  # the live name stays throughout: linked as .1, then replaced
                os.link(self.path, first)
                linked = True
            except OSError:  # a file system without hard links: a moment without the name
                os.replace(self.path, first)
                linked = False
            try:
                os.replace(fresh, self.path)
            except OSError:
                if linked:
                    os.unlink(first)
                else:
                    os.replace(first, self.path)
                raise
        except OSError:
            os.close(fd)
            fresh.unlink(missing_ok=True)
            raise
        old, self._fd, self._size = self._fd, fd, 0
        os.close(old)

    def _backup(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def boot_error_path(path: Path) -> Path:
    """Where a worker that cannot open its log file ``path`` writes why (shown at the end
    of the file's tail)."""
    return path.with_name(f"{path.name}.boot-error")


def strip_ansi(text: str) -> str:
    return _ANSI_ESCAPE.sub("", text) if "\x1b" in text else text


class LineStream(io.TextIOBase):
    """A text stream (for ``sys.stdout``/``sys.stderr``) that writes whole lines.

    ``print()`` calls ``write`` twice (text, then newline). Each thread's incomplete line
    is held apart until its newline arrives, so every line is one ``write(2)`` and lines
    from different threads never mix. Colour codes are removed.
    """

    def __init__(self, sink: RotatingLogFile, fd: int) -> None:
        super().__init__()
        self._sink = sink
        self._fd = fd
        self._pending: dict[int, io.StringIO] = {}  # thread id -> its incomplete line
        self._lock = threading.RLock()  # a signal handler may log while we write
        self._binary = _BinaryLines(self)

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "backslashreplace"

    @property
    def buffer(self) -> "_BinaryLines":
        return self._binary

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        thread = threading.get_ident()
        with self._lock:
            partial = self._pending.get(thread)
            cut = s.rfind("\n")
            if cut < 0:
                if partial is None:
                    partial = self._pending[thread] = io.StringIO(newline="")
                partial.write(s)
                if partial.tell() > _PARTIAL_LINE_LIMIT:
                    self._emit(self._pending.pop(thread).getvalue())
                return len(s)
            complete = s[: cut + 1]
            if partial is not None:
                complete = self._pending.pop(thread).getvalue() + complete
            if cut + 1 < len(s):
                rest = self._pending[thread] = io.StringIO(newline="")
                rest.write(s[cut + 1 :])
            self._emit(complete)
        return len(s)

    def flush(self) -> None:
        """Write out this thread's incomplete line, and those of threads that have ended;
        never another live thread's, which would tear its line."""
        me = threading.get_ident()
        with self._lock:
            if not self._pending:
                return
            alive = {t.ident for t in threading.enumerate()}
            for thread in [t for t in self._pending if t == me or t not in alive]:
                self._emit(self._pending.pop(thread).getvalue())

    def _emit(self, text: str) -> None:
        self._sink.write(strip_ansi(text).encode("utf-8", "backslashreplace"))


class _BinaryLines(io.RawIOBase):
    """``sys.stdout.buffer`` for code that writes bytes; same line handling."""

    def __init__(self, text: LineStream) -> None:
        super().__init__()
        self._text = text

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._text.fileno()

    def write(self, b: "bytes | bytearray | memoryview") -> int:  # type: ignore[override]
        data = bytes(b)
        self._text.write(data.decode("utf-8", "backslashreplace"))
        return len(data)


TAIL_BYTES_PER_LINE = 1024  # how far back a tail looks: this much per line asked for ...
TAIL_MIN_BYTES = 64 * 1024  # ... but at least this
TAIL_LINE_CHARS = 500  # longer lines are cut, so a tail stays a few kilobytes per line


def tail_lines(path: Path, n: int, current: BinaryIO | None = None) -> list[str]:
    """The last ``n`` lines of a log file, reaching into ``path.1`` if the file is short
    (it may just have been rotated). Reads a bounded stretch from the end (about 1 KiB
    per line asked for, at least 64 KiB); cuts long lines. Missing files give no lines.
    If the worker could not open the file at its last start, the lines end with why
    (from ``boot_error_path``); a file that cannot be read gives a line saying so.
    With ``current`` (``path`` opened, at the offset a follower goes on from), the lines
    end at that offset of that file, whatever was written or rotated since: the tail
    and what follows it meet, no line lost or repeated."""
    budget = max(TAIL_MIN_BYTES, n * TAIL_BYTES_PER_LINE)
    failure = _tail_of(boot_error_path(path), n, budget) if n > 0 else []
    n -= len(failure)
    lines = _tail_of(path, n, budget) if current is None else _tail_before(current, n, budget)
    if len(lines) < n:
        lines = _tail_of(path.with_name(f"{path.name}.1"), n - len(lines), budget) + lines
    lines += failure
    return [
        line if len(line) <= TAIL_LINE_CHARS else line[:TAIL_LINE_CHARS] + " …" for line in lines
    ]


def _tail_before(current: BinaryIO, n: int, budget: int) -> list[str]:
    """The last ``n`` lines of an open file before its offset (which is left as it is)."""
    if n <= 0:
        return []
    end = current.tell()
    start = max(0, end - budget)
    data = os.pread(current.fileno(), end - start, start)
    return _last_lines(data, start, n)


def _tail_of(path: Path, n: int, budget: int) -> list[str]:
    if n <= 0:
        return []
    try:
        with path.open("rb") as f:
            end = f.seek(0, io.SEEK_END)
            start = max(0, end - budget)
            f.seek(start)
            data = f.read(end - start)
    except FileNotFoundError:
        return []
    except OSError as exc:  # a directory, no permission: say so instead of the lines
        return [f"(cannot read {path}: {exc})"]
    return _last_lines(data, start, n)


def _last_lines(data: bytes, start: int, n: int) -> list[str]:
    lines = data.decode("utf-8", "replace").splitlines()
    if start > 0 and lines:
        lines = lines[1:]  # the first one is probably cut
    return lines[-n:]
