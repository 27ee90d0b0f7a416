"""The worker's per-account data: upsert semantics, pending changes, acks, the spool."""

from pathlib import Path

import pytest

from hiscrm.items import Comment, Message
from hiscrm.protocol import ItemChange
from hiscrm.worker import spool
from hiscrm.worker.account_data import AccountData, InvalidItem
from hiscrm.worker.known_items import version_of
from hiscrm.worker.spool import Spool, SpoolBusy


def message(n: int, text: str = "hi") -> Message:
    return Message(
        id=f"m{n}",
        conversation_id="c",
        direction="inbound",
        sender_id="u",
        text=text,
        sent_at=1_763_848_020_000 + n,
    )


def fresh(
    tmp_path: Path, acked: int = 0, digest: list[tuple[str, str, int, str]] | None = None
) -> AccountData:
    data = AccountData("acc", Spool(tmp_path / "acc"))
    data.load(acked, digest or [])
    return data


def seqs(data: AccountData) -> list[int]:
    return [seq for seq, _ in data.unsent.values()]


def test_upsert_bumps_versions_and_a_repeat_is_a_no_op(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    assert data.upsert(message(1)) == 1
    assert data.upsert(message(1)) == 0
    assert data.upsert(message(1, "edited")) == 2
    assert version_of(data.known.get("message", "m1") or 0) == 2
    assert data.seq == 2
    assert (data.count("message"), len(data.known)) == (1, 1)


def test_a_re_changed_item_has_one_pending_change_and_costs_what_changed(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    for n in range(1000):
        data.upsert(message(n))
    data.take(10**9)
    data.on_ack(data.seq)
    assert not data.unsent
    data.upsert(message(5, "new text"))
    data.upsert(message(5, "newer text"))
    unsent = data.take(10**9)
    assert [seq for seq, _ in unsent] == [1002]
    assert len(unsent[0][1]) < 400  # one item's worth, whatever the account's size
    assert ItemChange.model_validate_json(unsent[0][1]).item.text == "newer text"  # type: ignore[union-attr]


def test_acks_drop_pending_changes_and_old_spool_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Acknowledged changes stay on disk (for a resend from a sequence number) up to
    ``KEEP_ACKED_BYTES``; older segments are deleted, and the live one is unmapped."""
    monkeypatch.setattr(spool, "SEGMENT_BYTES", 1000)
    monkeypatch.setattr(spool, "KEEP_ACKED_BYTES", 2000)
    data = fresh(tmp_path)
    for n in range(40):
        data.upsert(message(n))
    segments = sorted((tmp_path / "acc").glob("*.jsonl"))
    assert len(segments) > 4
    data.take(10**9)
    data.on_ack(4)
    assert [s for s, _ in data.in_flight.values()] == list(range(5, 41))
    assert sorted((tmp_path / "acc").glob("*.jsonl")) == segments  # nothing beyond the keep
    data.on_ack(40)
    assert data.unacked == 0
    kept = sorted((tmp_path / "acc").glob("*.jsonl"))
    assert kept == segments[-len(kept) :]  # the newest ones
    assert 2000 - 1000 < sum(p.stat().st_size for p in kept) <= 2000
    assert data._spool._map is None  # nothing waits: its pages leave the worker's memory
    data.upsert(message(41))  # mapped again, appended after what is there
    assert [s for s, _ in data.take(10**9)] == [41]


def test_resend_goes_back_to_the_last_ack(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    for n in range(5):
        data.upsert(message(n))
    data.take(10**9)
    data.on_ack(2)
    assert not data.unsent
    data.upsert(message(9))  # seq 6, not sent yet
    data.resend_unacked()
    assert seqs(data) == [3, 4, 5, 6]
    assert data.sent_seq == 2


def test_take_sends_the_oldest_within_a_byte_budget(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    for n in range(10):
        data.upsert(message(n))
    sizes = [len(line) for _, line in data.unsent.values()]
    first = data.take(sizes[0] + sizes[1] + sizes[2] - 1)
    assert [seq for seq, _ in first] == [1, 2]
    assert data.sent_seq == 2
    data.upsert(message(1, "edited"))  # supersedes seq 2 in flight
    assert list(data.in_flight) == [("message", "m0")]
    assert [seq for seq, _ in data.take(10**9)] == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert data.unacked == 10


def test_a_restart_replays_only_what_the_store_lacks(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    for n in range(6):
        data.upsert(message(n))
    data.upsert(message(0, "edited"))  # seq 7, version 2
    data.close()  # the worker dies; the store had committed up to seq 3
    digest = [("message", f"m{n}", 1, "x") for n in range(3)]
    again = AccountData("acc", Spool(tmp_path / "acc"))
    report = again.load(3, digest)
    assert (report.replayed, report.corrupt, report.torn_bytes) == (4, 0, 0)
    assert seqs(again) == [4, 5, 6, 7]
    assert version_of(again.known.get("message", "m0") or 0) == 2
    assert again.seq == 7
    assert again.upsert(message(9)) == 1
    assert again.seq == 8


def test_a_torn_last_line_is_cut_and_reported(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    data.upsert(message(1))
    data.upsert(message(2))
    data.close()
    segment = next((tmp_path / "acc").glob("*.jsonl"))
    with segment.open("ab") as f:
        f.write(b'{"seq":3,"version":1,"hash":"ab","item":{"id":"m3"')  # killed mid-write
    again = AccountData("acc", Spool(tmp_path / "acc"))
    report = again.load(0, [])
    assert report.replayed == 2
    assert report.torn_bytes > 0
    assert segment.read_bytes().endswith(b"\n")


def test_the_spool_belongs_to_one_process_at_a_time(tmp_path: Path) -> None:
    first = fresh(tmp_path)
    with pytest.raises(SpoolBusy):
        AccountData("acc", Spool(tmp_path / "acc")).load(0, [])
    first.close()
    fresh(tmp_path).close()


def test_an_item_too_large_for_a_message_is_refused(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    with pytest.raises(InvalidItem, match="bytes"):
        data.upsert(message(1, "x" * 300_000))
    assert data.seq == 0


def test_changed_after_sends_current_states(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    for n in range(4):
        data.upsert(message(n))
    data.upsert(message(1, "edited"))  # seq 5
    assert [seq for seq, _ in data.changed_after(2)] == [3, 4, 5]


def test_a_segment_killed_as_it_began_does_not_swallow_the_next_changes(tmp_path: Path) -> None:
    data = fresh(tmp_path)
    data.upsert(message(1))
    data.upsert(message(2))
    data.take(10**9)
    data.on_ack(2)  # its segment is gone
    data.upsert(message(3))  # seq 3 starts a new segment ...
    data.close()
    segment = next((tmp_path / "acc").glob("*.jsonl"))
    segment.write_bytes(b'{"seq":3,"vers')  # ... and the worker died in its first line
    again = AccountData("acc", Spool(tmp_path / "acc"))
    report = again.load(2, [("message", "m1", 1, "x"), ("message", "m2", 1, "y")])
    assert report.torn_bytes > 0
    assert not segment.exists()  # nothing in it was ever durable: its name is free again
    again.upsert(message(4))
    again.take(10**9)
    again.on_ack(2)  # an old ack must not delete the live segment
    again.close()
    third = AccountData("acc", Spool(tmp_path / "acc"))
    third.load(2, [])
    assert [seq for seq, _ in third.unsent.values()] == [again.seq]


def test_a_released_account_refuses_writes(tmp_path: Path) -> None:
    from hiscrm.worker.spool import SpoolClosed

    data = fresh(tmp_path)
    data.close()
    with pytest.raises(SpoolClosed):
        data.upsert(message(1))


def test_what_a_reply_check_needs_is_known_across_a_restart(tmp_path: Path) -> None:
    """Which items the account holds, and which content each comment it has seen is on:
    from upserts, from the spool after a restart, and (holding only) from the digest."""
    comment = Comment(
        id="k1", content_id="post-1", author_id="u", text="nice", created_at=1_763_848_020_000
    )
    data = fresh(tmp_path, digest=[("comment", "k-store", 1, "h"), ("content", "post-1", 1, "h")])
    data.upsert(comment)
    assert data.comment_content == {"k1": "post-1"}
    assert data.holds("comment", "k1")
    assert data.holds("comment", "k-store")
    assert data.holds("content", "post-1")
    assert not data.holds("conversation", "post-1")
    data.close()
    again = fresh(tmp_path, digest=[("content", "post-1", 1, "h")])  # k1 never committed
    assert again.holds("comment", "k1")
    assert again.comment_content == {"k1": "post-1"}
    assert not again.holds("comment", "k-store")
