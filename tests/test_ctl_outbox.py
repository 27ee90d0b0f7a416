"""``hiscrmctl outbox``: an operator's retry and cancel of a reply, and the listing of an
account's replies, every page of them."""

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import MasterFactory
from test_ctl import ctl
from test_replies import entry, sender, start, wait_state
from testplatforms.senders import recorded_sends

from hiscrm.replies import MessageReply

MANY = 1100  # more than one page of the API (1000)


def stored_failed_replies(db: Path, account: str, count: int) -> None:
    """``count`` failed replies of ``account``, written into the store as its writer would
    (each with its own seq, made 1 ms apart)."""
    action = MessageReply(conversation_id="conv-1", text="old").model_dump_json()
    with sqlite3.connect(db, timeout=10) as conn:
        first = conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0] + 1
        conn.executemany(
            "INSERT INTO outbox (account_id, request_id, seq, body_hash, action, target, "
            "state, error, attempts, created_at, updated_at, queued_at) VALUES "
            "(?, ?, ?, 'h', ?, 'conversation:conv-1', 'failed', 'refused', 1, ?, ?, ?)",
            [
                (account, f"old-{n:04d}", first + n, action, 1000 + n, 1000 + n, 1000 + n)
                for n in range(count)
            ],
        )
    conn.close()


@pytest.mark.timeout(90)
def test_hiscrmctl_outbox_cancel_retry_and_every_page(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    record = tmp_path / "sends"
    master = start(start_master, record, sender("acc-1", record), outbox={"expire_after_s": 3})
    with master.http() as http:
        assert http.post("/workers/worker1/stop").is_success
        sent = ctl(master, "send", "acc-1", "conv-1", "hi", "--request-id", "r-cancel")
        assert sent.returncode == 0, sent.stderr
        cancelled = ctl(master, "outbox", "cancel", "acc-1", "r-cancel")
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancelled" in cancelled.stdout
        assert entry(http, "acc-1", "r-cancel")["state"] == "cancelled"
        again = ctl(master, "outbox", "cancel", "acc-1", "r-cancel")
        assert again.returncode != 0
        assert "only a queued one is cancelled" in again.stderr
        refused = ctl(master, "outbox", "retry", "acc-1", "r-cancel")  # cancelled: final
        assert refused.returncode != 0
        assert "cancelled cannot become queued" in refused.stderr

        sent = ctl(master, "send", "acc-1", "conv-1", "hi", "--request-id", "r-expire")
        assert sent.returncode == 0, sent.stderr
        wait_state(http, "acc-1", "r-expire", "expired", timeout=15)
        retried = ctl(master, "--json", "outbox", "retry", "acc-1", "r-expire")
        assert retried.returncode == 0, retried.stderr
        assert json.loads(retried.stdout)["state"] == "queued"
        usage = ctl(master, "outbox", "retry", "acc-1")
        assert usage.returncode != 0
        assert "usage: hiscrmctl outbox retry ACCOUNT REQUEST_ID" in usage.stderr
        assert http.post("/workers/worker1/start").is_success
        wait_state(http, "acc-1", "r-expire", "sent")
    assert [s["request_id"] for s in recorded_sends(record, "acc-1")] == ["r-expire"]

    # More replies than one page: the listing shows them all, newest first, once each.
    stored_failed_replies(master.db, "acc-1", MANY)
    listed = ctl(master, "--json", "outbox", "acc-1")
    assert listed.returncode == 0, listed.stderr
    ids = [e["request_id"] for e in json.loads(listed.stdout)]
    assert len(ids) == len(set(ids)) == MANY + 2
    assert ids[0] == f"old-{MANY - 1:04d}"
    assert ids[-2:] == ["r-expire", "r-cancel"]
    failed = ctl(master, "--json", "outbox", "acc-1", "--state", "failed")
    assert len(json.loads(failed.stdout)) == MANY
    # The API's filters by the time a reply was made, in either order.
    with master.http() as http:
        params = {"since": 1000 + MANY - 5, "until": 1000 + MANY - 1, "order": "asc", "limit": 3}
        page = http.get("/accounts/acc-1/outbox", params=params).json()
        assert [e["request_id"] for e in page["items"]] == [
            f"old-{n:04d}" for n in range(MANY - 5, MANY - 2)
        ]
        assert (page["total"], page["next_offset"]) == (4, 3)
        bad = http.get("/accounts/acc-1/outbox", params={"order": "sideways"})
        assert bad.status_code == 422, bad.text
    assert master.stop() == 0
