"""Every message type round-trips; the union is complete; bad input is classified."""

import json
import subprocess
import sys
import typing
from typing import Any

import pytest
from pydantic import BaseModel, Field

from hiscrm import protocol
from hiscrm.code_fingerprint import CodeFile
from hiscrm.items import Message, item_hash
from hiscrm.models import AccountSpec
from hiscrm.protocol import (
    PROTOCOL_VERSION,
    AnyMessage,
    Encoder,
    ProtocolError,
    decode,
    message_types,
    schema_hash,
)
from hiscrm.replies import MessageReply

MESSAGE = Message(
    id="m1",
    conversation_id="c1",
    direction="inbound",
    sender_id="u1",
    text="hi",
    sent_at=1_763_848_020_123,
)

EXAMPLES: dict[str, AnyMessage] = {
    "worker:register": protocol.WorkerRegister(
        worker_id="worker1",
        pid=42,
        protocol=1,
        schema_hash="abc",
        platforms=["x:Y"],
        boot_ms=12.5,
        code_version="0123456789ab",
        code_files=[CodeFile(path="/srv/x.py", size=10, mtime_ns=1, sha256="ff")],
    ),
    "worker:heartbeat": protocol.WorkerHeartbeat(
        seq=3, loop_lag_ms=0.4, errors_total=0, progress_at={"acc-1": 1763848020123}
    ),
    "worker:error": protocol.WorkerError(
        source="account",
        account_id="acc-1",
        error_type="ValueError",
        message="bad",
        traceback="Traceback ...",
        errors_total=1,
    ),
    "worker:account:state": protocol.WorkerAccountState(
        account_id="acc-1", state="running", restarts=0, reason="assigned"
    ),
    "worker:goodbye": protocol.WorkerGoodbye(reason="master:shutdown"),
    "master:welcome": protocol.MasterWelcome(protocol=1, schema_hash="abc", master_pid=1),
    "master:refuse": protocol.MasterRefuse(reason="protocol mismatch"),
    "master:shutdown": protocol.MasterShutdown(reason="shutdown", timeout_s=10),
    "master:account:assign": protocol.MasterAccountAssign(
        account=AccountSpec(id="acc-1", platform="demo", options={"rate": 1}),
        acked_seq=7,
        digest_total=1,
    ),
    "master:account:digest": protocol.MasterAccountDigest(
        account_id="acc-1", entries=[("message", "m1", 2, "00ff")]
    ),
    "master:account:revoke": protocol.MasterAccountRevoke(account_id="acc-1"),
    "worker:data:sync": protocol.WorkerDataSync(
        account_id="acc-1",
        base_seq=3,
        last_seq=4,
        changes=[protocol.ItemChange(seq=4, version=2, hash="ab", item=MESSAGE)],
    ),
    "worker:account:released": protocol.WorkerAccountReleased(account_id="acc-1", unacked=0),
    "master:data:ack": protocol.MasterDataAck(account_id="acc-1", seq=4),
    "master:data:nack": protocol.MasterDataNack(account_id="acc-1", seq=4, reason="gap"),
    "master:sync:request": protocol.MasterSyncRequest(account_id="acc-1", from_seq=0),
    "master:send": protocol.MasterSend(
        account_id="acc-1",
        request_id="r-1",
        action=MessageReply(conversation_id="conv-1", text="hello"),
    ),
    "worker:send:result": protocol.WorkerSendResult(
        account_id="acc-1", request_id="r-1", outcome="sent", item_id="out-r-1"
    ),
}


def all_message_classes() -> set[type[Any]]:
    found: set[type[Any]] = set()
    pending = list(protocol._Message.__subclasses__())
    while pending:
        cls = pending.pop()
        found.add(cls)
        pending += cls.__subclasses__()
    return found


def test_union_is_complete_and_tags_are_unique() -> None:
    in_union = set(typing.get_args(AnyMessage))
    assert in_union == all_message_classes(), "a message class is missing from the union"
    tags = [cls.model_fields["type"].default for cls in in_union]
    assert len(tags) == len(set(tags))
    assert set(message_types()) == set(tags)


def test_every_type_has_an_example_and_round_trips() -> None:
    assert set(EXAMPLES) == set(message_types()), "add an example for each new message type"
    encoder = Encoder()
    ids = []
    for tag, message in EXAMPLES.items():
        assert message.type == tag
        envelope = decode(encoder.encode(message))
        assert envelope.body == message
        assert type(envelope.body) is type(message)
        assert envelope.protocol == PROTOCOL_VERSION
        assert envelope.sent_at > 1_600_000_000_000  # milliseconds
        ids.append(envelope.id)
    assert ids == sorted(set(ids))


def _envelope(**overrides: Any) -> bytes:
    data = {
        "protocol": PROTOCOL_VERSION,
        "id": 1,
        "sent_at": 1,
        "body": {"type": "worker:goodbye", "reason": "x"},
    }
    data.update(overrides)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("data", "kind", "detail"),
    [
        (b"\x00\xff not json", "undecodable", "Invalid JSON"),
        (b"[1, 2]", "invalid", ""),
        (_envelope(protocol=2), "version", "protocol version 2"),
        (_envelope(body={"type": "worker:bogus"}), "unknown_type", "'worker:bogus'"),
        (_envelope(body={"type": "worker:goodbye"}), "invalid", "body.worker:goodbye.reason"),
        (_envelope(body={"type": "worker:goodbye", "reason": "x", "extra": 1}), "invalid", "extra"),
        (_envelope(id="seven"), "invalid", "id"),
    ],
)
def test_bad_frames_raise_classified_errors(data: bytes, kind: str, detail: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(data)
    assert info.value.kind == kind
    assert detail in info.value.detail
    assert info.value.head == data[:80]
    assert repr(data[:10])[2:-1] in str(info.value)


def test_schema_hash_covers_the_schema() -> None:
    assert len(schema_hash()) == 16
    assert schema_hash() == protocol.model_schema_hash(protocol.Envelope)
    schema = json.dumps(protocol.Envelope.model_json_schema())
    for tag in message_types():
        assert tag in schema


def test_schema_hash_tells_schemas_apart() -> None:
    """A changed field type, constraint, name or default, or a new field, changes it."""

    class Base(BaseModel):
        seq: int = Field(ge=0)
        text: str = ""

    class OtherType(BaseModel):
        seq: float = Field(ge=0)
        text: str = ""

    class OtherConstraint(BaseModel):
        seq: int = Field(ge=1)
        text: str = ""

    class OtherName(BaseModel):
        seq: int = Field(ge=0)
        body: str = ""

    class OtherDefault(BaseModel):
        seq: int = Field(ge=0)
        text: str = "x"

    class OneMore(BaseModel):
        seq: int = Field(ge=0)
        text: str = ""
        at: int | None = None

    hashes = [
        protocol.model_schema_hash(m)
        for m in (Base, OtherType, OtherConstraint, OtherName, OtherDefault, OneMore)
    ]
    assert len(set(hashes)) == len(hashes), hashes


@pytest.mark.timeout(30)
def test_schema_hash_is_the_same_in_every_process() -> None:
    """Object ids in the core schema are left out: another interpreter gets the same."""
    code = "from hiscrm.protocol import schema_hash; print(schema_hash())"
    seen = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=25, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert seen == {schema_hash()}


def test_sync_fast_path_encodes_what_decode_validates() -> None:
    item_json = MESSAGE.model_dump_json().encode()
    changes = [protocol.change_json(s, 1, item_hash(item_json), item_json) for s in (5, 6)]
    frame = Encoder().encode_sync('acc-"1', base_seq=4, last_seq=6, changes=changes)
    body = decode(frame).body
    assert isinstance(body, protocol.WorkerDataSync)
    assert (body.account_id, body.base_seq, body.last_seq) == ('acc-"1', 4, 6)
    assert [c.seq for c in body.changes] == [5, 6]
    assert body.changes[0].item == MESSAGE


def test_sync_batches_stay_under_the_message_limit() -> None:
    item_json = (
        Message(
            id="m",
            conversation_id="c",
            direction="inbound",
            sender_id="u",
            text="x" * 300,
            sent_at=1_763_848_020_123,
        )
        .model_dump_json()
        .encode()
    )
    changes = [(s, protocol.change_json(s, 1, "00", item_json)) for s in range(1, 5001)]
    batches = protocol.sync_batches(changes)
    assert len(batches) >= 2
    assert [seq for batch in batches for seq, _ in batch] == list(range(1, 5001))
    encoder = Encoder()
    base = 0
    for batch in batches:
        frame = encoder.encode_sync("acc-1", base, batch[-1][0], [c for _, c in batch])
        assert len(frame) <= protocol.MAX_MESSAGE_BYTES
        assert len(decode(frame).body.changes) == len(batch)  # type: ignore[union-attr]
        base = batch[-1][0]


def test_sync_with_seqs_outside_its_range_is_invalid() -> None:
    item_json = MESSAGE.model_dump_json().encode()
    change = protocol.change_json(9, 1, "00", item_json)
    with pytest.raises(ProtocolError, match="outside"):
        decode(Encoder().encode_sync("acc-1", base_seq=4, last_seq=6, changes=[change]))
