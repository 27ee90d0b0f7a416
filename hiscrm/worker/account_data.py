"""One account's items in a worker, and its changes not yet acknowledged by the master.

``upsert`` replaces what the worker observes of an item and bumps its version; an upsert
that changes nothing is a no-op and sends nothing. Every change gets the account's next
sequence number, goes to the spool at once, and waits first in ``unsent``, then (once
sent) in ``in_flight`` until the master acknowledges it. Re-upserting an item replaces
its waiting change, so a sync costs what changed since the last one, never the size of
the account; taking the next changes to send costs what is taken.

Memory does not grow with history: an item's full JSON is held only while its change
waits (``unsent``/``in_flight``); once acknowledged, the worker keeps its version, hash
and time packed in one integer (``known``, see ``known_items``). A resend from a
sequence number reads the changes back from the spool, which keeps the most recent
acknowledged ones on disk. Items older than their collection's retention (``[retention]``,
plus ``FORGET_MARGIN_MS`` for the store's own pass to have run) are forgotten, as the
store drops them.

The account starts from what the store already holds (the digest sent with the
assignment: version and hash per item) plus whatever the spool still has, so versions go
on where they left off and unchanged items stay no-ops across restarts.

What a reply's target check needs (``reply_send``) is kept here too, and small: which
items the account holds (the keys of ``known``: kind and id) and, for each comment whose
fields this worker has seen (upserted or replayed from the spool), its content's id.
A comment known only from the store's digest has no content here (the digest carries
kind, id, version and hash).
"""

import json
import time
from collections import OrderedDict
from collections.abc import Iterator
from itertools import chain

import msgspec
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from hiscrm.items import KINDS, AnyItem, Comment, epoch_ms
from hiscrm.protocol import ItemChange, change_json
from hiscrm.worker import spool_replay
from hiscrm.worker.known_items import (
    KnownItems,
    content_hash,
    hash_from_hex,
    hash_hex,
    hash_of,
    pack,
    version_of,
)
from hiscrm.worker.spool import Spool, line_seq
from hiscrm.worker.spool_replay import Spooled

MAX_ITEM_BYTES = 256 * 1024  # far below the 1 MB message limit
# The store applies retention about once an hour: an item is forgotten here this long
# after it went out of its collection's retention, when the store has surely dropped it.
FORGET_MARGIN_MS = 2 * 3600 * 1000
FORGET_EVERY_S = 60.0  # how often an account looks for items to forget
_TIME_FIELD = {name: kind.time_field for name, kind in KINDS.items()}
_BY_COLLECTION = {kind.collection: name for name, kind in KINDS.items()}


def _unserializable(item: BaseModel, exc: Exception) -> str:
    """Which field of ``item`` cannot be written as JSON, and why."""
    for name in type(item).model_fields:
        value = getattr(item, name)
        for where, text in _texts(name, value):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as bad:
                return (
                    f"{where}: not valid Unicode text: {text[bad.start]!r} at position "
                    f"{bad.start} is a lone surrogate"
                )
    return f"cannot be serialized: {exc}"


def _texts(where: str, value: object) -> list[tuple[str, str]]:
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, (list, tuple)):
        return [t for n, v in enumerate(value) for t in _texts(f"{where}.{n}", v)]
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _texts(f"{where}.{k}", v)]
    return []


class InvalidItem(ValueError):
    """An item a platform tried to upsert is not valid; it was not stored."""

    reported = False  # set once it has been logged, counted and sent to the master


class LoadReport(msgspec.Struct):
    replayed: int  # changes from the spool the store did not have yet
    skipped: int  # spool lines acknowledged, in the store, or superseded in the spool
    corrupt: int  # spool lines that could not be read
    torn_bytes: int
    renumbered: int = 0  # of those replayed: numbered anew (another host went past them)
    store_won: int = 0  # dropped: the store has a newer version of their item


Key = tuple[str, str]  # (kind, item id)


class _Scan:
    """A spool's lines read once: their changes, how many could not be read, and the last
    number in each segment."""

    def __init__(self) -> None:
        self.corrupt = 0
        self.segment_last: list[int] = []

    def changes(self, segments: list[list[bytes]]) -> Iterator[Spooled]:
        for lines in segments:
            last = 0
            for line in lines:
                try:
                    change = ItemChange.model_validate_json(line)
                except ValidationError:
                    self.corrupt += 1
                    continue
                last = max(last, change.seq)
                key = (change.item.kind, change.item.id)
                yield Spooled(change.seq, key, change.version, hash_from_hex(change.hash))
            self.segment_last.append(last)


class AccountData:
    def __init__(
        self, account_id: str, spool: Spool, retention_days: dict[str, float] | None = None
    ) -> None:
        self.account_id = account_id
        self._spool = spool
        self.known = KnownItems()  # version, hash and time per item: no JSON
        self.comment_content: dict[str, str] = {}  # comment id -> its content's id, if seen
        # (seq, change JSON) by item, oldest first; every unsent seq is after every sent one.
        # The only place an item's full JSON is held.
        self.unsent: OrderedDict[Key, tuple[int, bytes]] = OrderedDict()
        self.in_flight: OrderedDict[Key, tuple[int, bytes]] = OrderedDict()
        self.seq = 0  # the last sequence number given out
        self.acked_seq = 0
        self.sent_seq = 0  # the last one sent and not yet known to be lost
        # kind -> ms to keep, from the config's ``[retention]`` (collections not there: forever)
        self._keep_ms = {
            _BY_COLLECTION[collection]: int(days * 86_400_000)
            for collection, days in (retention_days or {}).items()
            if collection in _BY_COLLECTION
        }
        self._next_forget = 0.0  # monotonic time of the next look for items to forget
        self._version_floor = 0  # the highest version of a forgotten item
        self.forgotten = 0
        self.unreadable = 0  # spool lines a resend could not read

    # --- start ---------------------------------------------------------------------------

    def load(self, acked_seq: int, digest: list[tuple[str, str, int, str]]) -> LoadReport:
        """Start from the store's digest and the spool (``spool_replay`` decides what of
        the spool goes again, and under which numbers). An item known only from the
        digest counts as seen now (the digest has no times): it is forgotten one
        retention period after the load at the latest."""
        self.seq = self.acked_seq = self.sent_seq = acked_seq
        now = epoch_ms()
        for kind, item_id, version, hash_ in digest:
            self.known.put(kind, item_id, pack(version, hash_from_hex(hash_), now))
        contents = self._spool.open(acked_seq)
        scan = _Scan()
        decided = spool_replay.plan(
            scan.changes(contents.segments), contents.floor, acked_seq, self._stored
        )
        self.seq = max([self.seq, *scan.segment_last])
        # Never below a segment's first number, even if its lines were unreadable: the next
        # segment must get a new name.
        self.seq = max(self.seq, contents.first_seq)
        self._spool.note_loaded(scan.segment_last)
        wanted = {change.seq for change in decided.keep + decided.renumber}
        lines_by_seq = self._spool_lines(contents.segments, wanted)
        for change in decided.keep:
            self._replay(change.seq, lines_by_seq[change.seq])
        for change in decided.renumber:  # another host numbered past it: a new number
            seq = self.seq + 1
            line = renumbered(lines_by_seq[change.seq], seq)
            self._spool.append(seq, line + b"\n")
            self.seq = seq
            self._replay(seq, line)
        # Everything before the first change sent again is in the store or given up.
        waiting = [seq for seq, _ in self.unsent.values()]
        self._spool.acked(min(waiting) - 1 if waiting else self.seq)
        skipped = decided.acknowledged + decided.in_store + decided.superseded
        return LoadReport(
            decided.replayed,
            skipped,
            scan.corrupt,
            contents.torn_bytes,
            renumbered=len(decided.renumber),
            store_won=decided.store_wins,
        )

    def _stored(self, key: Key) -> tuple[int, int] | None:
        """What the store has of an item (version and hash), as the digest said."""
        known = self.known.get(*key)
        return None if known is None else (version_of(known), hash_of(known))

    @staticmethod
    def _spool_lines(segments: list[list[bytes]], wanted: set[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        if wanted:
            for lines in segments:
                for line in lines:
                    seq = line_seq(line)
                    if seq in wanted:
                        found[seq] = line
        return found

    def _replay(self, seq: int, line: bytes) -> None:
        """Take a spooled change back into pending (the store lacks it)."""
        change = ItemChange.model_validate_json(line)
        item = change.item
        hash_ = hash_from_hex(change.hash)
        self.known.put(item.kind, item.id, pack(change.version, hash_, _time_of(item)))
        self._note_target(item)
        self._queue((item.kind, item.id), seq, line)

    # --- changes -------------------------------------------------------------------------

    def upsert(self, item: AnyItem) -> int:
        """Record what the platform observed; the item's new version, or 0 if unchanged."""
        try:  # the serializer itself: the same bytes as model_dump_json, without its wrapper
            data = type(item).__pydantic_serializer__.to_json(item)
        except PydanticSerializationError as exc:  # text that is not Unicode, or worse
            why = _unserializable(item, exc)
            raise InvalidItem(f"invalid {item.kind} {item.id!r}: {why}") from exc
        if len(data) > MAX_ITEM_BYTES:
            raise InvalidItem(
                f"{item.kind} {item.id!r} is {len(data)} bytes (limit {MAX_ITEM_BYTES})"
            )
        hash_ = content_hash(data)
        known = self.known.get(item.kind, item.id)
        if known is not None and hash_of(known) == hash_:
            return 0
        # A new item, or one forgotten (beyond retention) coming back: above any version
        # the store may still have of it.
        version = self._version_floor + 1 if known is None else version_of(known) + 1
        seq = self.seq + 1
        line = change_json(seq, version, hash_hex(hash_), data)
        self._spool.append(seq, line + b"\n")  # first: if it fails, nothing has changed
        self.seq = seq
        self.known.put(item.kind, item.id, pack(version, hash_, _time_of(item)))
        self._note_target(item)
        self._queue((item.kind, item.id), seq, line)
        return version

    def _note_target(self, item: AnyItem) -> None:
        if isinstance(item, Comment):
            self.comment_content[item.id] = item.content_id

    def holds(self, kind: str, item_id: str) -> bool:
        """Whether the account has this item (in the store, or seen since)."""
        return (kind, item_id) in self.known

    def count(self, kind: str) -> int:
        """How many items of ``kind`` the account has (in the store or seen since)."""
        return self.known.count(kind)

    def _queue(self, key: Key, seq: int, line: bytes) -> None:
        """Wait to be sent; an older waiting change of the same item is superseded."""
        if key in self.in_flight:
            del self.in_flight[key]
        elif key in self.unsent:
            del self.unsent[key]
        self.unsent[key] = (seq, line)

    def take(self, max_bytes: int) -> list[tuple[int, bytes]]:
        """The oldest unsent changes, up to ``max_bytes`` (at least one), as
        ``(seq, change JSON)``; from now on they are in flight."""
        taken: list[tuple[int, bytes]] = []
        size = 0
        while self.unsent:
            key, change = next(iter(self.unsent.items()))
            if taken and size + len(change[1]) > max_bytes:
                break
            del self.unsent[key]
            self.in_flight[key] = change
            taken.append(change)
            size += len(change[1])
        if taken:
            self.sent_seq = taken[-1][0]
        return taken

    def on_ack(self, seq: int) -> None:
        if seq <= self.acked_seq:
            return
        self.acked_seq = seq
        while self.in_flight and next(iter(self.in_flight.values()))[0] <= seq:
            self.in_flight.popitem(last=False)
        self._spool.acked(seq)
        if self._keep_ms and time.monotonic() >= self._next_forget:
            self._next_forget = time.monotonic() + FORGET_EVERY_S
            self.forget_expired(epoch_ms())

    def forget_expired(self, now_ms: int) -> int:
        """Forget the items the store's retention has dropped (older than their
        collection's retention, plus ``FORGET_MARGIN_MS``), except those whose change
        still waits; returns how many."""
        waiting = self.unsent.keys() | self.in_flight.keys()
        forgotten = 0
        for kind, keep_ms in self._keep_ms.items():
            ids, top = self.known.forget_older(kind, now_ms - keep_ms - FORGET_MARGIN_MS, waiting)
            self._version_floor = max(self._version_floor, top)
            if kind == "comment":
                for item_id in ids:
                    self.comment_content.pop(item_id, None)
            forgotten += len(ids)
        self.forgotten += forgotten
        return forgotten

    def resend_unacked(self) -> None:
        """Everything not acknowledged goes again, from the last acknowledgement."""
        if self.in_flight:
            self.in_flight.update(self.unsent)
            self.unsent, self.in_flight = self.in_flight, OrderedDict()
        self.sent_seq = self.acked_seq

    def mark_all_sent(self) -> None:
        """Everything waiting was just sent (by ``changed_after``)."""
        self.in_flight.update(self.unsent)
        self.unsent.clear()
        self.sent_seq = self.seq

    def changed_after(self, seq: int) -> list[tuple[int, bytes]]:
        """Every item changed after ``seq``, as it is now: its waiting change, or its last
        change read back from the spool (as far back as the spool keeps them; see
        ``resend_floor``). Items forgotten since are not sent."""
        waiting = dict(chain(self.in_flight.items(), self.unsent.items()))
        found: dict[Key, tuple[int, bytes]] = {}
        for line in self._spool.lines_after(seq):
            try:
                change = json.loads(line)
                item = change["item"]
                key = (item["kind"], item["id"])
            except (ValueError, KeyError, TypeError):  # damaged on disk since it was written
                self.unreadable += 1
                continue
            if key in waiting:
                continue  # its newest change waits in memory
            known = self.known.get(*key)
            if known is not None and version_of(known) == change["version"]:
                found[key] = (change["seq"], line)  # older lines of it have older versions
        found.update((key, change) for key, change in waiting.items() if change[0] > seq)
        return sorted(found.values())

    @property
    def resend_floor(self) -> int:
        """The first sequence number a resend can read back (changes before it are gone
        from the spool); 0 if it has none."""
        return self._spool.first_seq

    @property
    def held_json(self) -> int:
        """How many items' full JSON this account holds in memory (the waiting changes)."""
        return len(self.unsent) + len(self.in_flight)

    @property
    def unacked(self) -> int:
        return len(self.unsent) + len(self.in_flight)

    def close(self) -> None:
        self._spool.close()


def renumbered(line: bytes, seq: int) -> bytes:
    """A change line (as ``change_json`` makes it) under another sequence number."""
    if line_seq(line) < 0:
        raise ValueError(f"not a change line: {line[:40]!r}")
    return b'{"seq":%d' % seq + line[line.index(b",", 7) :]


def _time_of(item: AnyItem) -> int:
    """What the store's retention goes by: the kind's time field, or (not set) now, as
    the store then goes by when it synced the item."""
    value = getattr(item, _TIME_FIELD[item.kind])
    return epoch_ms() if value is None else int(value)
