"""An account's journal of changes the master has not acknowledged yet.

Every change is appended here before ``upsert`` returns, so a worker killed right after
(or a master that dies before committing) loses nothing: whoever runs the account next
replays what the store does not have. Lives in ``<state_dir>/spool/<account id>/`` as
segment files named by their first sequence number; a segment whose every change is
acknowledged is deleted. A lock file makes sure one process at a time owns an account.

Writes go straight to the file (no user-space buffer): they survive the process, not a
power cut.
"""

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

SEGMENT_BYTES = 4 * 1024 * 1024


class SpoolBusy(Exception):
    """Another process holds this account's spool: it is assigned twice."""


@dataclass
class _Segment:
    path: Path
    first_seq: int
    last_seq: int


@dataclass
class SpoolContents:
    segments: list[list[bytes]]  # complete lines per segment, oldest first
    torn_bytes: int  # incomplete last lines (the writer died mid-write), discarded


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock_fd: int | None = None
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the segment being appended to
        self._size = 0

    def open(self) -> SpoolContents:
        """Take ownership and read back what is there."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(f"{self.directory} is held by another process") from None
        self._lock_fd = fd
        segments: list[list[bytes]] = []
        torn = 0
        for path in sorted(self.directory.glob("*.jsonl")):
            data = path.read_bytes()
            cut = data.rfind(b"\n") + 1
            if cut < len(data):
                torn += len(data) - cut
                with path.open("r+b") as f:
                    f.truncate(cut)
            segments.append(data[:cut].splitlines())
            first = int(path.stem)
            self._segments.append(_Segment(path, first, first))  # see note_loaded
        return SpoolContents(segments, torn)

    def note_loaded(self, last_seqs: list[int]) -> None:
        """The reader tells the last sequence number in each segment ``open`` returned."""
        for segment, last in zip(self._segments, last_seqs, strict=True):
            segment.last_seq = max(segment.first_seq, last)

    def append(self, seq: int, line: bytes) -> None:
        if self._fd is None or self._size >= SEGMENT_BYTES:
            self._start_segment(seq)
        assert self._fd is not None
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(line)
        self._segments[-1].last_seq = seq

    def _start_segment(self, seq: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        path = self.directory / f"{seq:020d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._size = 0
        self._segments.append(_Segment(path, seq, seq))

    def acked(self, seq: int) -> None:
        """Drop every segment whose changes are all acknowledged."""
        while self._segments and self._segments[0].last_seq <= seq:
            segment = self._segments.pop(0)
            if not self._segments and self._fd is not None:  # it was the live one
                os.close(self._fd)
                self._fd = None
            segment.path.unlink(missing_ok=True)

    @property
    def segments(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
