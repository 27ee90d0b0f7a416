"""One account's items in a worker, and its changes not yet acknowledged by the master.

``upsert`` replaces what the worker observes of an item and bumps its version; an upsert
that changes nothing is a no-op and sends nothing. Every change gets the account's next
sequence number, goes to the spool at once, and waits first in ``unsent``, then (once
sent) in ``in_flight`` until the master acknowledges it. Re-upserting an item replaces
its waiting change, so a sync costs what changed since the last one, never the size of
the account; taking the next changes to send costs what is taken.

The account starts from what the store already holds (the digest sent with the
assignment: version and hash per item) plus whatever the spool still has, so versions go
on where they left off and unchanged items stay no-ops across restarts.

What a reply's target check needs (``reply_send``) is kept here too, and small: which
items the account holds (the keys of ``items``: kind and id) and, for each comment whose
fields this worker has seen (upserted or replayed from the spool), its content's id.
A comment known only from the store's digest has no content here (the digest carries
kind, id, version and hash).
"""

from collections import OrderedDict
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from hiscrm.items import AnyItem, Comment, item_hash
from hiscrm.protocol import ItemChange, change_json
from hiscrm.worker.spool import Spool

MAX_ITEM_BYTES = 256 * 1024  # far below the 1 MB message limit


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


@dataclass(slots=True)
class ItemState:
    version: int
    hash: str
    seq: int  # the change that made it so (0: known only from the store's digest)
    json: bytes | None  # None when known only from the digest


@dataclass(slots=True)
class LoadReport:
    replayed: int  # changes from the spool the store did not have yet
    skipped: int  # spool lines already committed
    corrupt: int  # spool lines that could not be read
    torn_bytes: int


Key = tuple[str, str]  # (kind, item id)


class AccountData:
    def __init__(self, account_id: str, spool: Spool) -> None:
        self.account_id = account_id
        self._spool = spool
        self.items: dict[Key, ItemState] = {}
        self.counts: dict[str, int] = {}  # items per kind
        self.comment_content: dict[str, str] = {}  # comment id -> its content's id, if seen
        # (seq, change JSON) by item, oldest first; every unsent seq is after every sent one.
        self.unsent: OrderedDict[Key, tuple[int, bytes]] = OrderedDict()
        self.in_flight: OrderedDict[Key, tuple[int, bytes]] = OrderedDict()
        self.seq = 0  # the last sequence number given out
        self.acked_seq = 0
        self.sent_seq = 0  # the last one sent and not yet known to be lost

    # --- start ---------------------------------------------------------------------------

    def load(self, acked_seq: int, digest: list[tuple[str, str, int, str]]) -> LoadReport:
        self.seq = self.acked_seq = self.sent_seq = acked_seq
        for kind, item_id, version, hash_ in digest:
            self.items[(kind, item_id)] = ItemState(version, hash_, 0, None)
            self.counts[kind] = self.counts.get(kind, 0) + 1
        contents = self._spool.open()
        replayed = skipped = corrupt = 0
        segment_last: list[int] = []
        for lines in contents.segments:
            last = 0
            for line in lines:
                try:
                    change = ItemChange.model_validate_json(line)
                except ValidationError:
                    corrupt += 1
                    continue
                last = max(last, change.seq)
                if self._replay(change, line, acked_seq):
                    replayed += 1
                else:
                    skipped += 1
            segment_last.append(last)
            self.seq = max(self.seq, last)
        # Never below a segment's first number, even if its lines were unreadable: the next
        # segment must get a new name.
        self.seq = max(self.seq, contents.first_seq)
        self._spool.note_loaded(segment_last)
        return LoadReport(replayed, skipped, corrupt, contents.torn_bytes)

    def _replay(self, change: ItemChange, line: bytes, acked_seq: int) -> bool:
        """Take a spooled change back into pending unless the store already has it."""
        key = (change.item.kind, change.item.id)
        known = self.items.get(key)
        if change.seq <= acked_seq or (known is not None and known.version >= change.version):
            return False
        item_json = change.item.model_dump_json().encode()
        if known is None:
            self.counts[change.item.kind] = self.counts.get(change.item.kind, 0) + 1
        self.items[key] = ItemState(change.version, change.hash, change.seq, item_json)
        self._note_target(change.item)
        self._queue(key, change.seq, line)
        return True

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
        hash_ = item_hash(data)
        key = (item.kind, item.id)
        state = self.items.get(key)
        if state is not None and state.hash == hash_:
            return 0
        version = 1 if state is None else state.version + 1
        seq = self.seq + 1
        line = change_json(seq, version, hash_, data)
        self._spool.append(seq, line + b"\n")  # first: if it fails, nothing has changed
        self.seq = seq
        if state is None:
            self.counts[item.kind] = self.counts.get(item.kind, 0) + 1
            self.items[key] = ItemState(version, hash_, seq, data)
        else:
            state.version, state.hash, state.seq, state.json = version, hash_, seq, data
        self._note_target(item)
        self._queue(key, seq, line)
        return version

    def _note_target(self, item: AnyItem) -> None:
        if isinstance(item, Comment):
            self.comment_content[item.id] = item.content_id

    def holds(self, kind: str, item_id: str) -> bool:
        """Whether the account has this item (in the store, or seen since)."""
        return (kind, item_id) in self.items

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
        """Every item this worker holds that changed after ``seq``, as it is now."""
        chosen = sorted((s for s in self.items.values() if s.seq > seq), key=lambda s: s.seq)
        return [
            (s.seq, change_json(s.seq, s.version, s.hash, s.json))
            for s in chosen
            if s.json is not None
        ]

    @property
    def unacked(self) -> int:
        return len(self.unsent) + len(self.in_flight)

    def close(self) -> None:
        self._spool.close()
