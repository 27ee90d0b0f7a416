"""The master's fast reading of syncs (``hiscrm.sync_wire``) beside ``protocol.decode``:
whatever the fast path accepts, pydantic accepts with the same values; whatever pydantic
refuses, the fast path refuses too, and the frame then raises pydantic's own error."""

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hiscrm import protocol
from hiscrm.items import KINDS
from hiscrm.protocol import PROTOCOL_VERSION, ProtocolError, decode
from hiscrm.sync_wire import WireSync, decode_from_worker, fast_sync

T = 1_763_848_020_123
ITEMS: dict[str, dict[str, Any]] = {
    "conversation": {"kind": "conversation", "id": "c1", "participants": ["a", "b"]},
    "message": {
        "kind": "message",
        "id": "m1",
        "conversation_id": "c1",
        "direction": "inbound",
        "sender_id": "u1",
        "text": "hi ✓",
        "sent_at": T,
    },
    "comment": {
        "kind": "comment",
        "id": "k1",
        "content_id": "p1",
        "parent_id": None,
        "author_id": "u1",
        "text": "nice",
        "created_at": T,
    },
    "content": {"kind": "content", "id": "p1", "title": "t", "views": 3, "published_at": None},
    "notification": {
        "kind": "notification",
        "id": "n1",
        "category": "x",
        "text": "y",
        "created_at": T,
    },
}


def test_every_kind_has_an_example() -> None:
    assert set(ITEMS) == set(KINDS)


def frame(items: list[dict[str, Any]], base: int = 0, **body: Any) -> bytes:
    changes = [
        {"seq": base + n, "version": 1, "hash": "00ff", "item": item}
        for n, item in enumerate(items, 1)
    ]
    sync = {
        "type": "worker:data:sync",
        "account_id": "acc-1",
        "base_seq": base,
        "last_seq": base + len(items),
        "changes": changes,
    }
    sync.update(body)
    envelope = {"protocol": PROTOCOL_VERSION, "id": 1, "sent_at": T, "body": sync}
    return json.dumps(envelope).encode()


def as_values(body: Any) -> Any:
    """A sync of either decoding as plain values, defaults filled in."""
    if isinstance(body, WireSync):
        return {
            "account_id": body.account_id,
            "base_seq": body.base_seq,
            "last_seq": body.last_seq,
            "changes": [
                {
                    "seq": c.seq,
                    "version": c.version,
                    "hash": c.hash,
                    "item": {"kind": c.item.kind, **msgspec.structs.asdict(c.item)},  # type: ignore[arg-type]
                }
                for c in body.changes
            ],
        }
    assert isinstance(body, protocol.WorkerDataSync)
    return body.model_dump(exclude={"type"})


def same_as_pydantic(data: bytes) -> None:
    """The check every case runs: fast accepts -> pydantic accepts the same values;
    pydantic refuses -> fast refuses and ``decode_from_worker`` raises pydantic's error."""
    fast = fast_sync(data)
    error: ProtocolError | None = None
    try:
        slow = decode(data).body
    except ProtocolError as exc:
        error = exc
    if error is not None:
        assert fast is None, f"the fast path accepted what pydantic refuses: {error}"
        with pytest.raises(ProtocolError) as raised:
            decode_from_worker(data)
        assert (raised.value.kind, raised.value.detail) == (error.kind, error.detail)
        return
    if fast is not None:
        assert as_values(fast) == as_values(slow)
    assert as_values(decode_from_worker(data)) == as_values(slow)


def test_every_kind_takes_the_fast_path_with_pydantics_values() -> None:
    data = frame(list(ITEMS.values()), base=7)
    body = fast_sync(data)
    assert body is not None
    assert [c.item.kind for c in body.changes] == list(ITEMS)
    same_as_pydantic(data)


def test_what_the_worker_encodes_takes_the_fast_path() -> None:
    item_json = json.dumps(ITEMS["message"]).encode()
    changes = [protocol.change_json(s, 1, "ab", item_json) for s in (5, 6)]
    data = protocol.Encoder().encode_sync('acc-"1', base_seq=4, last_seq=6, changes=changes)
    body = fast_sync(data)
    assert body is not None
    assert body.account_id == 'acc-"1'
    same_as_pydantic(data)


def test_an_empty_sync_takes_the_fast_path() -> None:
    data = frame([], base=4)
    assert fast_sync(data) is not None
    same_as_pydantic(data)


def test_other_messages_go_through_decode() -> None:
    data = protocol.Encoder().encode(protocol.WorkerAccountReleased(account_id="a", unacked=0))
    assert fast_sync(data) is None
    assert isinstance(decode_from_worker(data), protocol.WorkerAccountReleased)


def message(**changes: Any) -> dict[str, Any]:
    item = dict(ITEMS["message"])
    item.update(changes)
    return {k: v for k, v in item.items() if v is not DROP}


DROP = object()
REFUSED = {
    "id with a slash": [message(id="a/b")],
    "id dot dot": [message(id="..")],
    "id dot": [message(id=".")],
    "empty id": [message(id="")],
    "id too long": [message(id="x" * 257)],
    "control character in an id": [message(id="a\x07b")],
    "C1 character in an id": [message(id="a\x85b")],
    "conversation id with a slash": [message(conversation_id="c/1")],
    "time in seconds": [message(sent_at=1_763_848_020)],
    "time in microseconds": [message(sent_at=T * 1000)],
    "time as a float": [message(sent_at=float(T))],
    "time as a string": [message(sent_at=str(T))],
    "bool as a time": [message(sent_at=True)],
    "unknown direction": [message(direction="sideways")],
    "missing field": [message(text=DROP)],
    "extra field": [message(is_read=True)],
    "unknown kind": [message(kind="tweet")],
    "missing kind": [message(kind=DROP)],
    "null text": [message(text=None)],
    "negative count": [{"kind": "content", "id": "p", "views": -1}],
    "count beyond int64": [{"kind": "content", "id": "p", "views": 2**63}],
    "participants not strings": [{"kind": "conversation", "id": "c", "participants": [1]}],
}


@pytest.mark.parametrize("items", REFUSED.values(), ids=REFUSED.keys())
def test_items_pydantic_refuses_are_refused_with_its_error(items: list[dict[str, Any]]) -> None:
    data = frame(items)
    assert fast_sync(data) is None
    with pytest.raises(ProtocolError):
        decode(data)
    same_as_pydantic(data)


BODIES: dict[str, dict[str, Any]] = {
    "last_seq beyond the changes": {"last_seq": 5},
    "last_seq before base_seq": {"base_seq": 3, "last_seq": 2},
    "extra field in the sync": {"secret": 1},
    "account id not a string": {"account_id": 7},
    "negative base_seq": {"base_seq": -1, "last_seq": 0, "changes": []},
    "empty sync covering a range": {"changes": [], "last_seq": 3},
}


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
def test_syncs_pydantic_refuses_are_refused_with_its_error(body: dict[str, Any]) -> None:
    data = frame([ITEMS["message"]], **body)
    assert fast_sync(data) is None
    with pytest.raises(ProtocolError):
        decode(data)
    same_as_pydantic(data)


def test_changes_out_of_order_are_refused() -> None:
    sync = json.loads(frame([ITEMS["message"], ITEMS["content"]]))
    changes = sync["body"]["changes"]
    changes[0]["seq"], changes[1]["seq"] = 2, 1
    data = json.dumps(sync).encode()
    assert fast_sync(data) is None
    with pytest.raises(ProtocolError, match="out of order"):
        decode_from_worker(data)


def test_another_protocol_version_is_refused_by_pydantics_rule() -> None:
    sync = json.loads(frame([ITEMS["message"]]))
    sync["protocol"] = PROTOCOL_VERSION + 1
    data = json.dumps(sync).encode()
    assert fast_sync(data) is None
    with pytest.raises(ProtocolError) as raised:
        decode_from_worker(data)
    assert raised.value.kind == protocol.ProtocolErrorKind.VERSION


def test_what_only_pydantic_accepts_still_goes_through() -> None:
    """Lax JSON pydantic takes (a whole float as an int) is not for the fast path, and
    still arrives, through pydantic."""
    sync = json.loads(frame([ITEMS["message"]]))
    sync["body"]["changes"][0]["version"] = 1.0
    data = json.dumps(sync).encode()
    assert fast_sync(data) is None
    same_as_pydantic(data)


def test_a_repeated_key_reads_as_pydantic_reads_it() -> None:
    data = frame([ITEMS["message"]]).replace(
        b'"account_id": "acc-1"', b'"account_id": "acc-1", "account_id": "acc-2"'
    )
    same_as_pydantic(data)


@pytest.mark.parametrize(
    "data",
    [
        frame([ITEMS["message"]])[:-3],
        frame([ITEMS["message"]]).replace(b'"id": "m1"', b'"id": "\\ud800x"'),
    ],
    ids=["cut short", "lone surrogate"],
)
def test_undecodable_json_is_refused(data: bytes) -> None:
    assert fast_sync(data) is None
    same_as_pydantic(data)


@settings(max_examples=300, deadline=None)
@given(
    item_id=st.text(max_size=260),
    text=st.text(max_size=20),
    sent_at=st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()),
)
def test_any_message_is_read_as_pydantic_reads_it(item_id: str, text: str, sent_at: Any) -> None:
    same_as_pydantic(frame([message(id=item_id, text=text, sent_at=sent_at)]))


@settings(max_examples=200, deadline=None)
@given(
    views=st.one_of(st.integers(min_value=-(2**70), max_value=2**70), st.booleans()),
    title=st.one_of(st.text(max_size=5), st.none(), st.integers()),
)
def test_any_content_is_read_as_pydantic_reads_it(views: Any, title: Any) -> None:
    same_as_pydantic(frame([{"kind": "content", "id": "p", "views": views, "title": title}]))


def test_a_burst_over_1mb_goes_in_frames_the_fast_path_reads_whole() -> None:
    item = {**ITEMS["message"], "text": "x" * 300}
    changes = [
        (seq, protocol.change_json(seq, 1, "00", json.dumps({**item, "id": f"m{seq}"}).encode()))
        for seq in range(1, 5001)
    ]
    encoder = protocol.Encoder()
    base, frames = 0, []
    for batch in protocol.sync_batches(changes):
        frames.append(encoder.encode_sync("acc-1", base, batch[-1][0], [c for _, c in batch]))
        base = batch[-1][0]
    assert sum(len(f) for f in frames) > 1024 * 1024
    assert len(frames) >= 2
    read = [fast_sync(f) for f in frames]
    assert all(r is not None for r in read)
    ids = [c.item.id for r in read if r is not None for c in r.changes]
    assert ids == [f"m{seq}" for seq in range(1, 5001)]
    same_as_pydantic(frames[0])
