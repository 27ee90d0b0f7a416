"""A spool's unacknowledged changes after another host carried the account on: what a
load sends again (``spool_replay``, pure), under which numbers, and the spool's head."""

from pathlib import Path

from hiscrm import spool_head
from hiscrm.items import Message, item_hash
from hiscrm.worker.account_data import AccountData, renumbered
from hiscrm.worker.known_items import hash_of, version_of
from hiscrm.worker.spool import Spool
from hiscrm.worker.spool_replay import Spooled, Verdict, plan, verdict

# --- the decision, pure ------------------------------------------------------------------


def test_a_change_goes_again_only_where_the_store_lacks_it() -> None:
    assert verdict(3, 0xAB, None) is Verdict.REPLAY
    assert verdict(3, 0xAB, (2, 0xCD)) is Verdict.REPLAY
    assert verdict(3, 0xAB, (3, 0xAB)) is Verdict.IN_STORE


def test_the_store_wins_with_a_newer_version_or_another_at_the_same() -> None:
    assert verdict(3, 0xAB, (4, 0xAB)) is Verdict.STORE_WINS
    assert verdict(3, 0xAB, (3, 0xCD)) is Verdict.STORE_WINS


def change(seq: int, item: str, version: int, hash_: int = 1) -> Spooled:
    return Spooled(seq, ("message", item), version, hash_)


def test_plan_keeps_numbers_above_the_store_and_renumbers_those_below() -> None:
    store = {
        ("message", "b"): (1, 1),  # has this very change
        ("message", "c"): (2, 9),  # another host's version 2
        ("message", "d"): (5, 1),  # newer
    }
    changes = [
        change(1, "z", 1),  # acknowledged here
        change(4, "a", 1),
        change(5, "b", 1),
        change(6, "c", 2),
        change(7, "d", 4),
        change(8, "e", 1),
        change(9, "a", 2),  # supersedes seq 4
        change(12, "f", 1),
        change(13, "g", 1),
    ]
    decided = plan(reversed(changes), floor=3, acked_seq=10, stored=store.get)
    assert [(c.seq, c.key[1]) for c in decided.renumber] == [(8, "e"), (9, "a")]
    assert [(c.seq, c.key[1]) for c in decided.keep] == [(12, "f"), (13, "g")]
    assert (decided.in_store, decided.store_wins, decided.superseded) == (1, 2, 1)
    assert (decided.acknowledged, decided.replayed) == (1, 4)


def test_plan_of_a_single_host_restart_keeps_every_number() -> None:
    decided = plan([change(4, "a", 1), change(5, "b", 1)], 3, 3, {}.get)
    assert [c.seq for c in decided.keep] == [4, 5]
    assert decided.renumber == []


def test_renumbered_changes_only_the_number() -> None:
    line = b'{"seq":7,"version":2,"hash":"00","item":{"id":"x,y"}}'
    assert renumbered(line, 123) == b'{"seq":123,"version":2,"hash":"00","item":{"id":"x,y"}}'


# --- carried out by AccountData ------------------------------------------------------------


def message(n: int, text: str = "hi") -> Message:
    return Message(
        id=f"m{n}",
        conversation_id="c",
        direction="inbound",
        sender_id="u",
        text=text,
        sent_at=1_763_848_020_000 + n,
    )


def digest_of(item: Message, version: int) -> tuple[str, str, int, str]:
    return ("message", item.id, version, item_hash(item.model_dump_json().encode()))


def host_a_killed_with_unacknowledged_changes(tmp_path: Path) -> None:
    """Host A: m0..m2 acknowledged (seq 1-3); then m3..m5 (seq 4-6) and m0 edited (seq 7,
    version 2), never acknowledged: A was killed."""
    data = AccountData("acc", Spool(tmp_path / "acc"))
    data.load(0, [])
    for n in range(3):
        data.upsert(message(n))
    data.take(10**9)
    data.on_ack(3)
    for n in range(3, 6):
        data.upsert(message(n))
    data.upsert(message(0, "edited by A"))
    data.take(10**9)
    data.close()


# Meanwhile host B ran the account up to seq 20: it edited m0 (its own version 2) and
# added b1; it never saw m3..m5.
STORE_ACKED = 20
STORE = [
    digest_of(message(0, "edited by B"), 2),
    digest_of(message(1), 1),
    digest_of(message(2), 1),
    digest_of(Message.model_validate(message(1).model_dump() | {"id": "b1"}), 1),
]


def test_a_returning_host_sends_what_only_its_spool_had_under_new_numbers(
    tmp_path: Path,
) -> None:
    host_a_killed_with_unacknowledged_changes(tmp_path)
    assert spool_head.pending_accounts(tmp_path) == ["acc"]
    data = AccountData("acc", Spool(tmp_path / "acc"))
    report = data.load(STORE_ACKED, STORE)
    assert (report.replayed, report.renumbered, report.store_won) == (3, 3, 1)
    assert list(data.unsent) == [("message", "m3"), ("message", "m4"), ("message", "m5")]
    assert [seq for seq, _ in data.unsent.values()] == [21, 22, 23]
    assert data.sent_seq == STORE_ACKED  # the sync continues from the store: no gap
    m0 = data.known.get("message", "m0") or 0
    assert version_of(m0) == 2  # the store's m0 is kept: B's edit
    assert f"{hash_of(m0):016x}" == STORE[0][3]
    assert data.upsert(message(6)) == 1
    assert data.seq == 24
    data.take(10**9)
    data.on_ack(24)
    assert spool_head.pending_accounts(tmp_path) == []
    data.close()


def test_killed_again_before_the_ack_the_changes_go_once(tmp_path: Path) -> None:
    host_a_killed_with_unacknowledged_changes(tmp_path)
    first = AccountData("acc", Spool(tmp_path / "acc"))
    first.load(STORE_ACKED, STORE)
    first.close()  # killed before the store acknowledged 21-23
    assert spool_head.pending_accounts(tmp_path) == ["acc"]
    again = AccountData("acc", Spool(tmp_path / "acc"))
    report = again.load(STORE_ACKED, STORE)
    assert (report.replayed, report.renumbered) == (3, 0)
    assert [seq for seq, _ in again.unsent.values()] == [21, 22, 23]
    again.close()


def test_nothing_to_send_again_leaves_the_spool_acknowledged(tmp_path: Path) -> None:
    host_a_killed_with_unacknowledged_changes(tmp_path)
    store = [*STORE, *(digest_of(message(n), 1) for n in range(3, 6))]
    data = AccountData("acc", Spool(tmp_path / "acc"))
    report = data.load(STORE_ACKED, store)
    assert (report.replayed, report.store_won) == (0, 1)
    assert spool_head.pending_accounts(tmp_path) == []  # no master claims it for nothing
    assert data.upsert(message(7)) == 1
    assert data.seq == STORE_ACKED + 1
    data.close()


def test_a_spool_without_a_head_reads_from_the_stores_ack(tmp_path: Path) -> None:
    """A spool written before the head existed: as before, what is numbered after the
    store's ``acked_seq`` goes again."""
    host_a_killed_with_unacknowledged_changes(tmp_path)
    (tmp_path / "acc" / spool_head.HEAD_NAME).unlink()
    data = AccountData("acc", Spool(tmp_path / "acc"))
    report = data.load(5, [digest_of(message(n), 1) for n in range(4)])
    assert [seq for seq, _ in data.unsent.values()] == [6, 7]
    assert report.renumbered == 0
    data.close()


def test_the_head_file_is_read_whole_or_not_at_all(tmp_path: Path) -> None:
    head = spool_head.Head(12, 7)
    assert spool_head.decode(spool_head.encode(head)) == head
    assert spool_head.decode(spool_head.encode(head)[:-3]) is None
    assert spool_head.decode(b"x" * spool_head.HEAD_BYTES) is None
    assert spool_head.pending_accounts(tmp_path / "none") == []
