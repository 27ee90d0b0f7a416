"""An account's journal of changes the master has not acknowledged yet.

Every change is appended here before ``upsert`` returns, so a worker killed right after
(or a master that dies before committing) loses nothing: whoever runs the account next
replays what the store does not have. Lives in ``<state_dir>/spool/<account id>/`` as
segment files named by their first sequence number; a segment whose every change is
acknowledged is deleted. A lock file makes sure one process at a time owns an account.

Segments are memory-mapped (shared): an append is a memory copy into the page cache,
with no system call, and like a ``write(2)`` it survives the death of the process (not
a power cut). Unused space at the end of a segment reads as NUL bytes.
"""

import fcntl
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

SEGMENT_BYTES = 4 * 1024 * 1024


class SpoolBusy(Exception):
    """Another process holds this account's spool: it is assigned twice."""


class SpoolClosed(Exception):
    """The account was released by this worker; nothing may be written for it here."""


@dataclass
class _Segment:
    path: Path
    first_seq: int
    last_seq: int


@dataclass
class SpoolContents:
    segments: list[list[bytes]]  # complete lines per segment, oldest first
    torn_bytes: int  # incomplete last lines (the writer died mid-write), discarded
    first_seq: int  # the highest first sequence number of any segment kept (0: none)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock_fd: int | None = None
        self._segments: list[_Segment] = []
        self._map: mmap.mmap | None = None  # the segment being appended to
        self._used = 0

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
        first = 0
        for path in sorted(self.directory.glob("*.jsonl")):
            data = path.read_bytes().rstrip(b"\0")
            cut = data.rfind(b"\n") + 1
            torn += len(data) - cut
            if cut == 0:  # nothing complete in it (killed as it began): nothing to keep
                path.unlink()
                continue
            os.truncate(path, cut)
            segments.append(data[:cut].splitlines())
            first = int(path.stem)
            self._segments.append(_Segment(path, first, first))  # see note_loaded
        return SpoolContents(segments, torn, first)

    def note_loaded(self, last_seqs: list[int]) -> None:
        """The reader tells the last sequence number in each segment ``open`` returned."""
        for segment, last in zip(self._segments, last_seqs, strict=True):
            segment.last_seq = max(segment.first_seq, last)

    def append(self, seq: int, line: bytes) -> None:
        if self._lock_fd is None:
            raise SpoolClosed(f"{self.directory} is closed: the account was released")
        end = self._used + len(line)
        if self._map is None or end > SEGMENT_BYTES:
            self._start_segment(seq, len(line))
            end = len(line)
        assert self._map is not None
        self._map[self._used : end] = line
        self._used = end
        self._segments[-1].last_seq = seq

    def _start_segment(self, seq: int, size: int) -> None:
        self._finish_segment()
        path = self.directory / f"{seq:020d}.jsonl"
        # O_EXCL: a name in use means the sequence went backwards; never write over it.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            # Space reserved now: a full disk is an error here, not a SIGBUS on a write.
            os.posix_fallocate(fd, 0, max(SEGMENT_BYTES, size))
            self._map = mmap.mmap(fd, max(SEGMENT_BYTES, size))
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self._used = 0
        self._segments.append(_Segment(path, seq, seq))

    def _finish_segment(self) -> None:
        """Unmap the live segment and cut its file to what was written."""
        if self._map is None:
            return
        self._map.close()
        self._map = None
        path = self._segments[-1].path
        if path.exists():
            os.truncate(path, self._used)

    def acked(self, seq: int) -> None:
        """Drop every segment whose changes are all acknowledged."""
        while self._segments and self._segments[0].last_seq <= seq:
            segment = self._segments.pop(0)
            if not self._segments and self._map is not None:  # it was the live one
                self._map.close()
                self._map = None
            segment.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._finish_segment()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
