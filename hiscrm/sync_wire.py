"""The master's fast reading of ``worker:data:sync`` frames.

Syncs are nearly all the master reads, so they are validated by msgspec straight from
the frame's bytes into light structs (no pydantic model per item), with the same rules
as the pydantic messages (``protocol.WorkerDataSync``, ``ItemChange`` and the item
models of ``hiscrm.items.KINDS``, from which the structs here are derived): extra fields
refused, the same types, bounds, id rules and time range, and the same check of the
sequence numbers.

Whatever this fast path does not accept (another message, or a sync it finds wrong in
any way) goes through ``protocol.decode``, which accepts it or raises the usual
``ProtocolError`` saying what is wrong. So this path may only ever be stricter than the
pydantic one, never looser: everything it accepts, pydantic accepts with the same
values (``tests/test_sync_wire.py`` holds the two side by side).
"""

import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Protocol, Union

import msgspec
from msgspec import Meta
from pydantic_core import PydanticUndefined

from hiscrm.items import (
    KINDS,
    MAX_INT,
    MS_MAX,
    MS_MIN,
    Count,
    Direction,
    EpochMs,
    ItemId,
)
from hiscrm.protocol import PROTOCOL_VERSION, AnyMessage, decode

# ``items._check_item_id`` as a pattern: not '.' or '..', no '/', no control character
# (C0, DEL, C1) and no lone surrogate; 1 to 256 characters.
_ID_PATTERN = r"\A(?!\.\.?\Z)[^/\x00-\x1f\x7f-\x9f\ud800-\udfff]+\Z"
WireId = Annotated[str, Meta(min_length=1, max_length=256, pattern=_ID_PATTERN)]
WireMs = Annotated[int, Meta(ge=MS_MIN, le=MS_MAX)]
WireCount = Annotated[int, Meta(ge=0, le=MAX_INT)]
WireSeq = Annotated[int, Meta(ge=1, le=MAX_INT)]
WireBase = Annotated[int, Meta(ge=0, le=MAX_INT)]

# Each type an item model's field may have, and its msgspec twin. A field of a type not
# listed stops the import: add its twin here (and a case to the tests).
_TWINS: list[tuple[Any, Any]] = [
    (str, str),
    (str | None, str | None),
    (list[str], list[str]),
    (ItemId, WireId),
    (EpochMs, WireMs),
    (EpochMs | None, WireMs | None),
    (Count, WireCount),
    (Direction, Direction),
]


def _twin(model: type, name: str, annotation: Any) -> Any:
    for pydantic_type, wire_type in _TWINS:
        if annotation == pydantic_type:
            return wire_type
    raise TypeError(
        f"{model.__name__}.{name}: no wire type for {annotation!r}; add one to sync_wire._TWINS"
    )


def _item_struct(kind_name: str) -> type[msgspec.Struct]:
    """The struct of one kind: its model's fields in the model's order (``kind`` is the
    union's tag, also readable as a class attribute), the same defaults."""
    model = KINDS[kind_name].model
    hints = typing.get_type_hints(model, include_extras=True)
    fields: list[tuple[str, Any, Any]] = []
    for name, info in model.model_fields.items():
        if name == "kind":
            continue
        wire_type = _twin(model, name, hints[name])
        if info.default_factory is not None:
            fields.append((name, wire_type, msgspec.field(default_factory=info.default_factory)))  # type: ignore[arg-type]
        elif info.default is not PydanticUndefined:
            fields.append((name, wire_type, info.default))
        else:
            fields.append((name, wire_type, msgspec.NODEFAULT))
    return msgspec.defstruct(
        f"Wire{model.__name__}",
        [(n, t) if d is msgspec.NODEFAULT else (n, t, d) for n, t, d in fields],
        tag_field="kind",
        tag=kind_name,
        kw_only=True,
        forbid_unknown_fields=True,
        frozen=True,
        namespace={"kind": kind_name},
    )


ITEM_STRUCTS: dict[str, type[msgspec.Struct]] = {name: _item_struct(name) for name in KINDS}


class ItemView(Protocol):
    """What the store reads of an item: its kind, its id, and (by name) its fields."""

    @property
    def kind(self) -> str: ...

    @property
    def id(self) -> str: ...


class ChangeView(Protocol):
    """One change as the store reads it: an ``ItemChange``, or its wire twin."""

    @property
    def seq(self) -> int: ...

    @property
    def version(self) -> int: ...

    @property
    def hash(self) -> str: ...

    @property
    def item(self) -> ItemView: ...


if TYPE_CHECKING:
    WireItem = ItemView
else:
    WireItem = Union[tuple(ITEM_STRUCTS.values())]  # noqa: UP007


class WireChange(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    seq: WireSeq
    version: WireSeq
    hash: str
    item: WireItem


class WireSync(
    msgspec.Struct,
    tag_field="type",
    tag="worker:data:sync",
    forbid_unknown_fields=True,
    frozen=True,
):
    """A ``worker:data:sync`` as the master received and checked it."""

    account_id: str
    base_seq: WireBase
    last_seq: WireBase
    changes: list[WireChange]


class _WireEnvelope(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    protocol: int
    id: int
    sent_at: int
    body: WireSync


_DECODER = msgspec.json.Decoder(_WireEnvelope)


def seqs_match(body: WireSync) -> bool:
    """``WorkerDataSync``'s own check: the range is what the changes say."""
    base, last = body.base_seq, body.last_seq
    if last < base:
        return False
    previous = base
    for change in body.changes:
        seq = change.seq
        if not previous < seq <= last:
            return False
        previous = seq
    return previous == last


def fast_sync(data: bytes) -> WireSync | None:
    """The sync in ``data`` if the fast path accepts it, else None."""
    try:
        envelope = _DECODER.decode(data)
    except msgspec.DecodeError:  # ValidationError is one: any doubt goes the slow way
        return None
    if envelope.protocol != PROTOCOL_VERSION or not seqs_match(envelope.body):
        return None
    return envelope.body


def decode_from_worker(data: bytes) -> AnyMessage | WireSync:
    """A frame from a worker: a sync the fast way, anything else (or any sync the fast
    way doubts) through ``protocol.decode``, which raises ``ProtocolError`` if it is
    wrong."""
    sync = fast_sync(data)
    return sync if sync is not None else decode(data).body


class SyncView(Protocol):
    """A sync as the master hands it to the store (either decoding of it)."""

    @property
    def account_id(self) -> str: ...

    @property
    def base_seq(self) -> int: ...

    @property
    def last_seq(self) -> int: ...

    @property
    def changes(self) -> Sequence[ChangeView]: ...
