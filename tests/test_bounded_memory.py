"""A worker's memory does not grow with history: an item's full JSON is held only while
its change waits; a resend reads acknowledged changes back from the spool; unchanged items
are still no-ops; items beyond the store's retention are forgotten."""

import asyncio
import gc
import tracemalloc
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from hiscrm.items import Comment, Message, epoch_ms, item_hash
from hiscrm.protocol import Encoder, ItemChange, WorkerDataSync, decode
from hiscrm.worker import spool
from hiscrm.worker.account_data import FORGET_MARGIN_MS, AccountData
from hiscrm.worker.spool import Spool
from hiscrm.worker.sync import Syncer

DAY_MS = 86_400_000


def message(n: int, text: str = "hi", sent_at: int = 1_763_848_020_000) -> Message:
    return Message(
        id=f"m{n}",
        conversation_id="c",
        direction="inbound",
        sender_id="u",
        text=f"{text} {n}",
        sent_at=sent_at + n,
    )


def fresh(
    tmp_path: Path,
    acked: int = 0,
    digest: list[tuple[str, str, int, str]] | None = None,
    retention_days: dict[str, float] | None = None,
) -> AccountData:
    data = AccountData("acc", Spool(tmp_path / "acc"), retention_days)
    data.load(acked, digest or [])
    return data


def acknowledge_all(data: AccountData) -> None:
    data.take(10**9)
    data.on_ack(data.seq)


def syncer_for(data: AccountData, sent: list[WorkerDataSync]) -> Syncer:
    def send(frame: bytes) -> bool:
        body = decode(frame).body
        assert isinstance(body, WorkerDataSync)
        sent.append(body)
        return True

    syncer = Syncer(
        send, lambda: 0, Encoder(), ack_timeout_s=5, idle_sync_s=60, log=structlog.get_logger()
    )
    syncer.add(data)
    return syncer


def texts(sent: list[WorkerDataSync]) -> dict[int, str]:
    return {c.seq: c.item.text for s in sent for c in s.changes}  # type: ignore[union-attr]


def test_acknowledged_items_hold_no_json_and_unchanged_ones_stay_no_ops(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    for n in range(100):
        data.upsert(message(n))
    assert data.held_json == 100
    acknowledge_all(data)
    assert data.held_json == 0  # the JSON is gone; version and hash are kept
    assert [data.upsert(message(n)) for n in range(100)] == [0] * 100
    assert data.seq == 100
    assert not data.unsent
    assert data.upsert(message(7, "edited")) == 2
    assert data.held_json == 1
    data.close()
    # Across a restart: the store's digest (its hashes) makes them known, still no-ops.
    digest = [
        ("message", f"m{n}", 1, item_hash(message(n).model_dump_json().encode()))
        for n in range(100)
    ]
    again = fresh(tmp_path, acked=101, digest=digest)
    assert again.upsert(message(3)) == 0
    assert again.upsert(message(4, "new")) == 2


def test_a_resend_after_a_lost_ack_delivers_the_full_items(tmp_path: Path) -> None:
    async def main() -> None:
        data = fresh(tmp_path)
        sent: list[WorkerDataSync] = []
        syncer = syncer_for(data, sent)
        for n in range(1, 6):
            data.upsert(message(n))
        syncer.flush("acc", 0.0)
        assert sorted(texts(sent)) == [1, 2, 3, 4, 5]
        sent.clear()
        syncer.tick(10.0)  # no ack came within ack_timeout_s: everything again, in full
        assert texts(sent) == {n: f"hi {n}" for n in range(1, 6)}
        assert syncer.resends == 1

    asyncio.run(main())


def test_a_resend_from_a_seq_reads_acknowledged_items_back_from_the_spool(tmp_path: Path) -> None:
    async def main() -> None:
        data = fresh(tmp_path)
        sent: list[WorkerDataSync] = []
        syncer = syncer_for(data, sent)
        for n in range(1, 11):
            data.upsert(message(n))
        data.upsert(message(3, "edited"))  # seq 11, version 2 of m3
        syncer.flush("acc", 0.0)
        syncer.on_ack("acc", 11, 0.0)  # committed: no JSON in memory any more
        assert data.held_json == 0
        data.upsert(message(12))  # seq 12, waiting
        sent.clear()
        assert syncer.resend_from("acc", 4, 0.0) == 8
        got = {c.item.id: (c.seq, c.version, c.item.text) for s in sent for c in s.changes}  # type: ignore[union-attr]
        assert got == {
            **{f"m{n}": (n, 1, f"hi {n}") for n in range(5, 11)},
            "m3": (11, 2, "edited 3"),  # as it is now, once
            "m12": (12, 1, "hi 12"),
        }

    asyncio.run(main())


def test_a_resend_after_a_restart_reads_segments_it_did_not_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 1000)
    data = fresh(tmp_path)
    for n in range(1, 31):
        data.upsert(message(n))
    acknowledge_all(data)
    data.close()
    digest = [
        ("message", f"m{n}", 1, item_hash(message(n).model_dump_json().encode()))
        for n in range(1, 31)
    ]
    again = AccountData("acc", Spool(tmp_path / "acc"))
    report = again.load(30, digest)
    assert report.replayed == 0
    assert report.skipped < 10  # only the last segment is read: the others are all in the store
    changes = again.changed_after(20)
    assert [seq for seq, _ in changes] == list(range(21, 31))
    assert ItemChange.model_validate_json(changes[0][1]).item.text == "hi 21"  # type: ignore[union-attr]


def test_a_resend_from_before_what_the_spool_keeps_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 1000)
    monkeypatch.setattr(spool, "KEEP_ACKED_BYTES", 2000)

    async def main() -> None:
        data = fresh(tmp_path)
        sent: list[WorkerDataSync] = []
        syncer = syncer_for(data, sent)
        for n in range(1, 41):
            data.upsert(message(n))
        syncer.flush("acc", 0.0)
        for _ in range(10):  # the window lets it go in steps
            syncer.on_ack("acc", data.sent_seq, 0.0)
        assert data.acked_seq == 40
        floor = data.resend_floor
        assert floor > 1
        sent.clear()
        with capture_logs() as logs:
            syncer.resend_from("acc", 0, 0.0)
        assert sorted(texts(sent)) == list(range(floor, 41))
        warned = [e for e in logs if e.get("spool_from_seq") == floor]
        assert [e["log_level"] for e in warned] == ["warning"]

    asyncio.run(main())


def test_a_known_item_costs_a_few_hundred_bytes_not_its_json(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    long_text = "x" * 400  # the JSON of each item is ~550 bytes
    items = [message(n, long_text) for n in range(5000)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for item in items:
            data.upsert(item)
        acknowledge_all(data)
        gc.collect()
        grew = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert data.held_json == 0
    assert grew / len(items) < 250  # ids, dictionary slots and one integer each


def test_items_beyond_retention_are_forgotten_once_acknowledged(tmp_path: Path) -> None:
    now = epoch_ms()
    data = fresh(tmp_path, retention_days={"messages": 1.0, "comments": 1.0})
    old = now - DAY_MS - FORGET_MARGIN_MS - 60_000
    for n in range(10):
        data.upsert(message(n, sent_at=old))  # m0..m9: gone from the store by now
    data.upsert(message(100, sent_at=now))  # recent: kept
    data.upsert(Comment(id="k1", content_id="post", author_id="u", text="old", created_at=old))
    data.take(10**9)
    data.upsert(message(5, "edited", sent_at=old))  # waiting: not forgotten yet
    data.on_ack(12)  # the first ack looks for what to forget (then once a minute)
    assert data.forgotten == 10  # m0..m9 but m5, and k1
    assert data.holds("message", "m5")
    assert data.holds("message", "m100")
    assert not data.holds("message", "m1")
    assert not data.holds("comment", "k1")
    assert data.comment_content == {}
    assert data.count("message") == 2
    # Seen again (the store dropped it): above any version the store may have had.
    assert data.upsert(message(1, sent_at=old)) == 2
    acknowledge_all(data)
    assert data.forget_expired(now) == 2  # m5 (acknowledged now) and m1


def test_without_retention_nothing_is_forgotten(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    data.upsert(message(1, sent_at=1_000_000_000_000))
    acknowledge_all(data)
    assert data.forget_expired(epoch_ms()) == 0
    assert data.holds("message", "m1")
