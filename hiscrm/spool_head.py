"""The head of an account's spool: a small file beside its segments that says what this
host's worker last appended and the last sequence number acknowledged to it (or
resolved: taken back at a load, see ``worker/account_data.py``). Shared by both sides:
the worker writes it, a master that starts reads it to learn which accounts' spools on
its host hold changes the store may not have (``pending_accounts``).

The file (``<spool>/<account id>/head``) is one fixed-width line,
``<appended> <acked>\\n``, each a 20-digit number, written whole with one ``pwrite``.
``appended`` is written before the first change of a run of unacknowledged ones goes to
a segment, and again with every acknowledgement; so ``appended > acked`` whenever the
spool may hold a change that was never acknowledged here (it may also say so for a
change a killed worker was about to write: that only costs one hand-over).

A spool written before this file existed has none: its acknowledged point is unknown,
and a load falls back to the store's ``acked_seq``.
"""

import os
from pathlib import Path

import msgspec

HEAD_NAME = "head"
HEAD_BYTES = 42  # 20 digits, a space, 20 digits, a newline


class Head(msgspec.Struct, frozen=True):
    appended: int  # the last sequence number written to the spool (at least)
    acked: int  # every change up to it is in the store, or superseded there

    @property
    def pending(self) -> bool:
        return self.appended > self.acked


def encode(head: Head) -> bytes:
    return b"%020d %020d\n" % (head.appended, head.acked)


def decode(data: bytes) -> Head | None:
    """The head in a file's bytes; None if it is not one (missing, cut, damaged)."""
    if len(data) != HEAD_BYTES or data[20:21] != b" " or data[-1:] != b"\n":
        return None
    appended, acked = data[:20], data[21:41]
    if not (appended.isdigit() and acked.isdigit()):
        return None
    return Head(int(appended), int(acked))


def read(directory: Path) -> Head | None:
    """The head of the spool in ``directory``; None if it has none (or it is damaged)."""
    try:
        data = (directory / HEAD_NAME).read_bytes()
    except FileNotFoundError:
        return None
    return decode(data)


def write(fd: int, head: Head) -> None:
    os.pwrite(fd, encode(head), 0)


def pending_accounts(spool_root: Path) -> list[str]:
    """The accounts whose spool under ``spool_root`` may hold changes never acknowledged
    to this host, by id (the directory names)."""
    try:
        directories = sorted(p for p in spool_root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
    found: list[str] = []
    for directory in directories:
        head = read(directory)
        if head is not None and head.pending:
            found.append(directory.name)
    return found
