"""An account's journal of changes: every one the master has not acknowledged yet, and
the most recent acknowledged ones, up to ``KEEP_ACKED_BYTES``.

Every change is appended here before ``upsert`` returns, so a worker killed right after
(or a master that dies before committing) loses nothing: whoever runs the account next
replays what the store does not have. Lives in ``<state_dir>/spool/<account id>/`` as
segment files named by their first sequence number. A lock file makes sure one process at
a time owns an account.

Acknowledged changes are kept on disk (not in memory) while the acknowledged segments
add up to at most ``KEEP_ACKED_BYTES``; older ones are deleted. They are what a resend
from a sequence number (``master:sync:request`` with ``from_seq``) reads back: the
worker keeps an item's full JSON in memory only while its change is unacknowledged.
A segment whose successor starts at or before the store's acknowledged sequence number
holds nothing the store lacks, so a restart does not read it.

The spool's head (``hiscrm/spool_head.py``, the file ``head``) keeps the last sequence
number acknowledged to this host, and marks that changes were appended since. It is what
a load reads from, whatever the store's ``acked_seq`` is now: in a cluster another
host may have carried the account past the numbers of this host's unacknowledged
changes while this one was away (``open`` reads from the lower of the two), and what a
starting master reads to claim first the accounts whose spools hold such changes.

Segments are memory-mapped (shared): an append is a memory copy into the page cache,
with no system call, and like a ``write(2)`` it survives the death of the process (not
a power cut). Unused space at the end of a segment reads as NUL bytes. Once everything
is acknowledged, the live segment is unmapped (its pages leave the worker's memory) and
mapped again at the next append.
"""

import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

from hiscrm import spool_head
from hiscrm.spool_head import Head

SEGMENT_BYTES = 4 * 1024 * 1024
KEEP_ACKED_BYTES = 16 * 1024 * 1024  # per account: what a resend from a seq can read back


class SpoolBusy(Exception):
    """Another process holds this account's spool: it is assigned twice."""


class SpoolClosed(Exception):
    """The account was released by this worker; nothing may be written for it here."""


class _Segment(msgspec.Struct):
    path: Path
    first_seq: int
    last_seq: int
    size: int  # bytes of complete lines in it


class SpoolContents(msgspec.Struct):
    segments: list[list[bytes]]  # complete lines of each segment read, oldest first
    torn_bytes: int  # incomplete last lines (the writer died mid-write), discarded
    first_seq: int  # the highest first sequence number of any segment kept (0: none)
    unread: int  # segments kept but not read: everything in them is acknowledged
    floor: int  # what was read is after it: the lower of the store's ack and this host's


def _complete(data: bytes) -> tuple[bytes, int]:
    """The complete lines of a segment's bytes, and how many bytes of a torn last line
    (and NUL padding) follow them."""
    data = data.rstrip(b"\0")
    cut = data.rfind(b"\n") + 1
    return data[:cut], len(data) - cut


def line_seq(line: bytes) -> int:
    """The sequence number of a change line (``{"seq":N,...``, as ``change_json`` makes it);
    -1 if the line does not start that way."""
    if not line.startswith(b'{"seq":'):
        return -1
    end = line.find(b",", 7)
    digits = line[7:end]
    return int(digits) if end > 7 and digits.isdigit() else -1


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock_fd: int | None = None
        self._segments: list[_Segment] = []
        self._map: mmap.mmap | None = None  # the segment being appended to, if mapped
        self._used = 0  # bytes written in the last segment
        self._acked_seq = 0
        self._head_fd: int | None = None
        self._head = Head(0, 0)  # as last written

    def open(self, acked_seq: int = 0) -> SpoolContents:
        """Take ownership and read back what may hold changes after ``acked_seq`` (the
        store's), or after the last one acknowledged to this host if that is lower."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusy(f"{self.directory} is held by another process") from None
        self._lock_fd = fd
        try:
            head = spool_head.read(self.directory)
            self._head_fd = os.open(
                self.directory / spool_head.HEAD_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
            floor = acked_seq if head is None else min(head.acked, acked_seq)
            self._head = head or Head(0, floor)
            return self._read(floor)
        except BaseException:
            self.close()  # as if never opened: the caller may try again
            raise

    def _read(self, acked_seq: int) -> SpoolContents:
        self._segments, self._used, self._acked_seq = [], 0, acked_seq
        paths = sorted(self.directory.glob("*.jsonl"))
        firsts = [int(path.stem) for path in paths]
        segments: list[list[bytes]] = []
        torn = unread = 0
        for n, path in enumerate(paths):
            following = firsts[n + 1] if n + 1 < len(paths) else None
            if following is not None and following <= acked_seq + 1:
                # Every line in it comes before its successor's first: all acknowledged.
                size = path.stat().st_size
                self._segments.append(_Segment(path, firsts[n], following - 1, size))
                unread += 1
                continue
            complete, torn_here = _complete(path.read_bytes())
            torn += torn_here
            if not complete:  # nothing complete in it (killed as it began): nothing to keep
                path.unlink()
                continue
            if torn_here:
                os.truncate(path, len(complete))
            segments.append(complete.splitlines())
            self._segments.append(_Segment(path, firsts[n], firsts[n], len(complete)))
        self._used = self._segments[-1].size if self._segments else 0
        first = self._segments[-1].first_seq if self._segments else 0
        return SpoolContents(segments, torn, first, unread, acked_seq)

    def note_loaded(self, last_seqs: list[int]) -> None:
        """The reader tells the last sequence number in each segment ``open`` returned
        (the segments it read: those it did not read end before their successor)."""
        read = self._segments[len(self._segments) - len(last_seqs) :]
        for segment, last in zip(read, last_seqs, strict=True):
            segment.last_seq = max(segment.first_seq, last)
        self._trim()

    def append(self, seq: int, line: bytes) -> None:
        if self._lock_fd is None:
            raise SpoolClosed(f"{self.directory} is closed: the account was released")
        end = self._used + len(line)
        if self._map is None and self._segments and self._reopenable(end):
            self._map_segment(self._segments[-1].path, create=False)
        if self._head.appended <= self._head.acked:  # the first of a run not acknowledged
            self._write_head(Head(seq, self._head.acked))
        if self._map is None or end > len(self._map):
            self._start_segment(seq, len(line))
            end = len(line)
        assert self._map is not None
        self._map[self._used : end] = line
        self._used = end
        segment = self._segments[-1]
        segment.last_seq, segment.size = seq, end

    def _reopenable(self, end: int) -> bool:
        """Whether the last segment, unmapped when everything was acknowledged, takes the
        next line (it was written by this process, so nothing of it is torn)."""
        return end <= SEGMENT_BYTES and self._segments[-1].size == self._used and self._used > 0

    def _start_segment(self, seq: int, size: int) -> None:
        self._finish_segment()
        path = self.directory / f"{seq:020d}.jsonl"
        self._map_segment(path, create=True, size=size)
        self._used = 0
        self._segments.append(_Segment(path, seq, seq, 0))

    def _map_segment(self, path: Path, *, create: bool, size: int = 0) -> None:
        # O_EXCL: a name in use means the sequence went backwards; never write over it.
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o644)
        length = max(SEGMENT_BYTES, size)
        try:
            # Space reserved now: a full disk is an error here, not a SIGBUS on a write.
            os.posix_fallocate(fd, 0, length)
            self._map = mmap.mmap(fd, length)
        except BaseException:
            os.close(fd)
            if create:
                path.unlink(missing_ok=True)
            else:  # give back the space reserved: the file holds what it held
                os.truncate(path, self._used)
            raise
        os.close(fd)

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
        """Everything up to ``seq`` is in the store: keep only the most recent
        acknowledged segments, and unmap the live one if nothing in it waits."""
        self._acked_seq = max(self._acked_seq, seq)
        last = self._segments[-1].last_seq if self._segments else 0
        if self._head.acked < self._acked_seq and self._lock_fd is not None:
            self._write_head(Head(max(last, self._acked_seq), self._acked_seq))
        if self._segments and last <= self._acked_seq:
            self._finish_segment()
        self._trim()

    def _write_head(self, head: Head) -> None:
        assert self._head_fd is not None
        spool_head.write(self._head_fd, head)
        self._head = head

    def _trim(self) -> None:
        """Delete the oldest acknowledged segments beyond ``KEEP_ACKED_BYTES`` (never
        the last one: the next changes go there)."""
        done = [s for s in self._segments[:-1] if s.last_seq <= self._acked_seq]
        kept = sum(s.size for s in done)
        if self._segments and self._segments[-1].last_seq <= self._acked_seq:
            kept += self._segments[-1].size
        while done and kept > KEEP_ACKED_BYTES:
            segment = done.pop(0)
            self._segments.remove(segment)
            kept -= segment.size
            segment.path.unlink(missing_ok=True)

    def lines_after(self, seq: int) -> Iterator[bytes]:
        """Every change line after ``seq`` the spool still has, oldest first."""
        for n, segment in enumerate(self._segments):
            following = self._segments[n + 1] if n + 1 < len(self._segments) else None
            if following is not None and following.first_seq <= seq + 1:
                continue  # all of it is at or before seq
            if segment is self._segments[-1] and self._map is not None:
                data = self._map[: self._used]
            else:
                try:
                    data = segment.path.read_bytes()
                except FileNotFoundError:
                    continue  # deleted by hand: what it held is not there to resend
            complete, _ = _complete(data)
            for line in complete.splitlines():
                if line_seq(line) > seq:
                    yield line

    @property
    def first_seq(self) -> int:
        """The first sequence number the spool still has (0: none)."""
        return self._segments[0].first_seq if self._segments else 0

    @property
    def kept_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def close(self) -> None:
        self._finish_segment()
        if self._head_fd is not None:
            os.close(self._head_fd)
            self._head_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
