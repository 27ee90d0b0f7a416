"""The worker's Syncer with a real AccountData and spool, and frames caught on their way out."""

import asyncio
from pathlib import Path

import structlog

from hiscrm.items import Message
from hiscrm.protocol import Encoder, WorkerDataSync, decode
from hiscrm.worker.account_data import AccountData
from hiscrm.worker.spool import Spool
from hiscrm.worker.sync import Syncer


def message(n: int) -> Message:
    return Message(
        id=f"m{n}",
        conversation_id="c",
        direction="inbound",
        sender_id="u",
        text=f"t{n}",
        sent_at=1_763_848_020_000 + n,
    )


def setup(tmp_path: Path) -> tuple[Syncer, AccountData, list[WorkerDataSync]]:
    sent: list[WorkerDataSync] = []

    def send(frame: bytes) -> bool:
        body = decode(frame).body
        assert isinstance(body, WorkerDataSync)
        sent.append(body)
        return True

    syncer = Syncer(
        send, lambda: 0, Encoder(), ack_timeout_s=5, idle_sync_s=60, log=structlog.get_logger()
    )
    data = AccountData("acc", Spool(tmp_path / "acc"))
    data.load(0, [])
    syncer.add(data)
    return syncer, data, sent


def test_resend_from_beyond_the_last_ack_still_sends_what_was_not_acknowledged(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        syncer, data, sent = setup(tmp_path)
        for n in range(1, 11):
            data.upsert(message(n))
        syncer.flush("acc", 0.0)
        syncer.on_ack("acc", 10, 0.0)
        for n in range(11, 14):
            data.upsert(message(n))  # 11-13: not sent yet
        sent.clear()
        syncer.resend_from("acc", 12, 0.0)
        seqs = sorted(c.seq for s in sent for c in s.changes)
        assert seqs == [11, 12, 13]
        assert sent[0].base_seq <= 10

    asyncio.run(main())


def test_a_stale_nack_does_not_send_everything_again(tmp_path: Path) -> None:
    async def main() -> None:
        syncer, data, sent = setup(tmp_path)
        for n in range(1, 6):
            data.upsert(message(n))
        syncer.flush("acc", 0.0)
        syncer.on_ack("acc", 3, 0.0)  # 4 and 5 still in flight
        sent.clear()
        syncer.on_nack("acc", 2, "gap")  # about an older sync
        syncer.flush("acc", 0.0)
        assert sent == []  # 4 and 5 are not sent again
        assert syncer.nacks == 0
        syncer.on_nack("acc", 5, "gap")  # about the sync in flight: everything goes again
        syncer.flush("acc", 0.0)
        assert sorted(c.seq for s in sent for c in s.changes) == [4, 5]
        assert syncer.nacks == 1

    asyncio.run(main())


def test_the_window_holds_back_changes_until_acks_come(tmp_path: Path) -> None:
    async def main() -> None:
        syncer, data, sent = setup(tmp_path)
        for n in range(1, 5001):
            data.upsert(message(n))
        syncer.flush("acc", 0.0)
        first = max(c.seq for s in sent for c in s.changes)
        assert 0 < first < 5000  # the window stopped it
        syncer.on_ack("acc", first, 0.0)  # the ack lets the next ones go
        assert max(c.seq for s in sent for c in s.changes) > first

    asyncio.run(main())
