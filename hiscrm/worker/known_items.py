"""What a worker remembers of each item its account holds: its version, its content hash
and its time, packed into one integer, by kind and id.

About 160 bytes an item (the id, a dictionary slot and a 48-byte integer) where the whole
item's JSON cost about 450 more: the JSON is kept only while a change waits to be
acknowledged (``AccountData.unsent``/``in_flight``, and the spool on disk).

The time is what the store's retention goes by: the kind's time field, or, where the
item has none, when the worker last saw it change (the store then goes by when it
synced it, a moment later). ``forget_older`` drops what is older than a cutoff, so a
worker holds no more history than its store keeps.

Layout of the integer, low bits first: time in ms (44 bits: up to the year 2527), the
content hash (64 bits), the version (the rest: any size).
"""

import hashlib
from collections.abc import Container, Iterator

from hiscrm.items import KINDS

TIME_BITS = 44
HASH_BITS = 64
TIME_MASK = (1 << TIME_BITS) - 1
HASH_MASK = (1 << HASH_BITS) - 1
VERSION_SHIFT = TIME_BITS + HASH_BITS


def content_hash(item_json: bytes) -> int:
    """The content hash of an item's JSON as a number (``hiscrm.items.item_hash`` is the
    same as 16 hex digits: what the store keeps and the digest carries)."""
    return int.from_bytes(hashlib.blake2b(item_json, digest_size=8).digest(), "big")


def hash_hex(hash_: int) -> str:
    return f"{hash_:016x}"


def hash_from_hex(text: str) -> int:
    """A hash as the store has it, as a number. One this program did not make (not 16 hex
    digits) becomes a number no item of ours hashes to, except by a 2^-64 chance."""
    if len(text) == 16:
        try:
            return int(text, 16)
        except ValueError:
            pass  # not hex: below
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") ^ 1


def pack(version: int, hash_: int, time_ms: int) -> int:
    return (version << VERSION_SHIFT) | (hash_ << TIME_BITS) | min(max(time_ms, 0), TIME_MASK)


def version_of(packed: int) -> int:
    return packed >> VERSION_SHIFT


def hash_of(packed: int) -> int:
    return (packed >> TIME_BITS) & HASH_MASK


def time_of(packed: int) -> int:
    return packed & TIME_MASK


class KnownItems:
    """Packed states by kind, then id."""

    def __init__(self) -> None:
        self._by_kind: dict[str, dict[str, int]] = {name: {} for name in KINDS}
        self._oldest: dict[str, int] = {name: TIME_MASK for name in KINDS}  # a lower bound

    def get(self, kind: str, item_id: str) -> int | None:
        return self._by_kind[kind].get(item_id)

    def put(self, kind: str, item_id: str, packed: int) -> None:
        self._by_kind[kind][item_id] = packed
        time_ms = packed & TIME_MASK
        if time_ms < self._oldest[kind]:
            self._oldest[kind] = time_ms

    def __contains__(self, key: tuple[str, str]) -> bool:
        items = self._by_kind.get(key[0])
        return items is not None and key[1] in items

    def count(self, kind: str) -> int:
        items = self._by_kind.get(kind)
        return 0 if items is None else len(items)

    def __len__(self) -> int:
        return sum(len(items) for items in self._by_kind.values())

    def kinds(self) -> Iterator[tuple[str, int]]:
        """(kind, how many) for every kind with items."""
        return ((kind, len(items)) for kind, items in self._by_kind.items() if items)

    def forget_older(
        self, kind: str, cutoff_ms: int, keep: Container[tuple[str, str]]
    ) -> tuple[list[str], int]:
        """Drop the items of ``kind`` whose time is before ``cutoff_ms``, except those in
        ``keep``; returns their ids and the highest version among them (0 if none)."""
        if self._oldest[kind] >= cutoff_ms:
            return [], 0
        items = self._by_kind[kind]
        old = [i for i, packed in items.items() if packed & TIME_MASK < cutoff_ms]
        forgotten: list[str] = []
        top = 0
        for item_id in old:
            if (kind, item_id) in keep:
                continue
            top = max(top, items.pop(item_id) >> VERSION_SHIFT)
            forgotten.append(item_id)
        self._oldest[kind] = min((p & TIME_MASK for p in items.values()), default=TIME_MASK)
        return forgotten, top
