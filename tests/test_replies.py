"""Replies on real masters and workers: the outbox from the API to the platform and back,
at most once, with a state for every request."""

import os
import signal
import threading
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import MasterFactory, make_config
from harness import Master, gone, to_toml, wait_until
from sse_reader import SseReader
from test_ctl import ctl
from testplatforms.senders import recorded_sends

SENDER = "testplatforms.senders:Sender"


@pytest.fixture
def start_master(start_master_each_store: MasterFactory) -> MasterFactory:
    """Every test here runs on SQLite and on PostgreSQL."""
    return start_master_each_store


def sender(account_id: str, record: Path, **options: Any) -> dict[str, Any]:
    return {
        "id": account_id,
        "platform": SENDER,
        "options": {"rate": 2.0, "seed": 1, "record_dir": str(record), **options},
    }


def start(
    start_master: MasterFactory, record: Path, *accounts: dict[str, Any], **top: Any
) -> Master:
    record.mkdir(exist_ok=True)
    master = start_master(
        make_config(workers=1, accounts=list(accounts), events={"heartbeat_s": 0.2}, **top)
    )
    master.wait_running("worker1")
    with master.http() as http:
        for account in accounts:
            wait_until(
                lambda a=account["id"]: http.get(f"/accounts/{a}/conversations/conv-1").is_success,
                20,
                f"{account['id']}'s conversations stored",
            )
    return master


def reply(http: httpx.Client, account: str, request_id: str, text: str = "hello") -> httpx.Response:
    body = {"conversation_id": "conv-1", "text": text, "request_id": request_id}
    return http.post(f"/accounts/{account}/messages", json=body)


def entry(http: httpx.Client, account: str, request_id: str) -> dict[str, Any]:
    return dict(http.get(f"/accounts/{account}/outbox/{request_id}").json())


def wait_state(
    http: httpx.Client, account: str, request_id: str, state: str, timeout: float = 20
) -> dict[str, Any]:
    wait_until(lambda: entry(http, account, request_id)["state"] == state, timeout, state)
    return entry(http, account, request_id)


@pytest.mark.timeout(60)
def test_a_reply_is_sent_once_and_comes_back(start_master: MasterFactory, tmp_path: Path) -> None:
    record = tmp_path / "sends"
    master = start(start_master, record, sender("acc-1", record))
    stream = SseReader(master.api_url(), master.token, params={"types": "reply"})
    try:
        stream.wait(lambda es: stream.comments > 0, 10, "following (a heartbeat came)")
        with master.http() as http:
            first = reply(http, "acc-1", "r-1")
            assert first.status_code == 202
            assert first.json()["state"] in ("queued", "sending", "sent")
            sent = wait_state(http, "acc-1", "r-1", "sent")
            assert sent["item_id"] == "out-r-1"
            assert sent["attempts"] == 1
            assert sent["sent_at"] is not None
            # The same request again: the same entry, nothing sent again.
            again = reply(http, "acc-1", "r-1")
            assert again.status_code == 200
            assert again.json()["state"] == "sent"
            # Another reply under the same request id: 409.
            clash = reply(http, "acc-1", "r-1", text="something else")
            assert clash.status_code == 409
            assert "r-1" in clash.json()["error"]
            # The sent message comes back through the sync, as an outbound message.
            wait_until(
                lambda: http.get("/accounts/acc-1/messages/out-r-1").is_success, 10, "synced"
            )
            message = http.get("/accounts/acc-1/messages/out-r-1").json()
            assert message["direction"] == "outbound"
            assert message["text"] == "hello"
        events = stream.wait(
            lambda es: [e.data["state"] for e in es][-1:] == ["sent"], 10, "reply events"
        )
    finally:
        stream.close()
    assert [e.data["state"] for e in events] == ["queued", "sending", "sent"]
    assert {e.name for e in events} == {"reply.state"}
    assert len(recorded_sends(record, "acc-1")) == 1


@pytest.mark.timeout(60)
def test_bad_requests_are_refused_before_anything_is_sent(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    record = tmp_path / "sends"
    master = start(start_master, record, sender("acc-1", record), sender("acc-2", record))
    with master.http() as http:
        other = http.post(
            "/accounts/acc-1/messages", json={"conversation_id": "nope", "text": "hi"}
        )
        assert other.status_code == 422
        assert "conversation 'nope' is not one of 'acc-1'" in other.json()["error"]
        unknown = http.post("/accounts/ghost/messages", json={"conversation_id": "c", "text": "x"})
        assert unknown.status_code == 404
        for body, problem in (
            ({"conversation_id": "conv-1", "text": ""}, "text"),
            ({"conversation_id": "conv-1", "text": "   "}, "text"),
            ({"conversation_id": "conv-1", "text": "x" * 20_001}, "text"),
            ({"conversation_id": "conv-1", "text": "hi", "request_id": "a b"}, "request_id"),
            ({"conversation_id": "conv-1"}, "text"),
        ):
            answer = http.post("/accounts/acc-1/messages", json=body)
            assert answer.status_code == 422, body
            assert problem in answer.text
        comment = http.post(
            "/accounts/acc-1/comments", json={"content_id": "nothing", "text": "hi"}
        )
        assert comment.status_code == 422
        made = http.post(
            "/accounts/acc-1/messages", json={"conversation_id": "conv-1", "text": "x"}
        )
        assert made.status_code == 202
        assert len(made.json()["request_id"]) == 32  # made by the master
        wait_state(http, "acc-1", made.json()["request_id"], "sent")
    assert len(recorded_sends(record, "acc-1")) == 1
    assert recorded_sends(record, "acc-2") == []


@pytest.mark.timeout(90)
def test_a_reply_waits_while_its_worker_is_down_and_goes_after(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    record = tmp_path / "sends"
    master = start(start_master, record, sender("acc-1", record))
    with master.http() as http:
        assert http.post("/workers/worker1/stop").json()["worker"]["state"] == "stopped"
        assert reply(http, "acc-1", "late").status_code == 202
        assert reply(http, "acc-1", "never").status_code == 202
        assert entry(http, "acc-1", "late")["state"] == "queued"
        # Cancel one while it waits; the other goes once the worker runs.
        cancelled = http.delete("/accounts/acc-1/outbox/never")
        assert cancelled.json()["state"] == "cancelled"
        assert http.post("/workers/worker1/start").is_success
        wait_state(http, "acc-1", "late", "sent")
        assert http.delete("/accounts/acc-1/outbox/late").status_code == 409
        assert entry(http, "acc-1", "never")["state"] == "cancelled"
    assert [s["request_id"] for s in recorded_sends(record, "acc-1")] == ["late"]


@pytest.mark.timeout(90)
def test_a_worker_killed_mid_send_leaves_the_reply_unknown_never_sent_twice(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    record = tmp_path / "sends"
    master = start(start_master, record, sender("acc-1", record, send_delay_s=30))
    with master.http() as http:
        assert reply(http, "acc-1", "r-1").status_code == 202
        wait_until(lambda: len(recorded_sends(record, "acc-1")) == 1, 10, "send called")
        pid = recorded_sends(record, "acc-1")[0]["pid"]
        mark = master.mark()
        os.kill(pid, signal.SIGKILL)
        master.wait_running("worker1", after=mark)
        unknown = wait_state(http, "acc-1", "r-1", "unknown")
        assert "died" in unknown["error"]
        # Nothing sends it again by itself; an operator may.
        wait_until(lambda: http.get("/accounts/acc-1").json()["state"] == "running", 10, "runs")
        assert len(recorded_sends(record, "acc-1")) == 1
        retried = http.post("/accounts/acc-1/outbox/r-1/retry")
        assert retried.json()["state"] in ("queued", "sending")
        wait_until(lambda: len(recorded_sends(record, "acc-1")) == 2, 10, "sent again on retry")


@pytest.mark.timeout(90)
def test_a_reply_follows_its_account_when_it_moves_and_one_cut_by_the_move_is_unknown(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """A rolling reload moves the account to a new process while its platform is sending:
    that reply is ``unknown`` (the move cut it), never sent again by itself; the next
    reply goes to the process that runs the account now."""
    record = tmp_path / "sends"
    master = start(start_master, record, sender("acc-1", record, send_delay_s=3))
    with master.http() as http:
        assert reply(http, "acc-1", "cut").status_code == 202
        wait_until(lambda: len(recorded_sends(record, "acc-1")) == 1, 10, "send called")
        old_pid = recorded_sends(record, "acc-1")[0]["pid"]
        reload = http.post("/reload").json()
        assert reload["error"] is None, reload
        cut = wait_state(http, "acc-1", "cut", "unknown")
        assert cut["error"]
        assert reply(http, "acc-1", "after").status_code == 202
        wait_state(http, "acc-1", "after", "sent")
        sends = recorded_sends(record, "acc-1")
        assert [s["request_id"] for s in sends] == ["cut", "after"]  # "cut" went once
        assert sends[1]["pid"] != old_pid
        assert entry(http, "acc-1", "cut")["state"] == "unknown"
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_a_reply_cut_by_a_reload_process_that_dies_holding_its_account_is_unknown(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """The reload's old process is killed while it still holds the account (its task is
    slow to stop) and its platform is sending: the reply is ``unknown`` at once, not
    ``sending`` for as long as the master runs, and the account runs on in the
    replacement."""
    record = tmp_path / "sends"
    account = sender("acc-1", record, send_delay_s=30, stop_delay_s=5)
    master = start(start_master, record, account)
    with master.http() as http:
        assert reply(http, "acc-1", "cut").status_code == 202
        wait_until(lambda: len(recorded_sends(record, "acc-1")) == 1, 10, "send called")
        old_pid = recorded_sends(record, "acc-1")[0]["pid"]
        mark = master.mark()
        answers: list[dict[str, Any]] = []

        def reload() -> None:
            with master.http() as client:
                answers.append(client.post("/reload").json())

        reloading = threading.Thread(target=reload, daemon=True)
        reloading.start()
        master.log.wait_for(event="handing accounts over", after=mark)
        os.kill(old_pid, signal.SIGKILL)
        reloading.join(30)
        assert not reloading.is_alive(), "the reload did not answer"
        assert len(answers) == 1
        assert answers[0]["error"] is None, answers
        cut = wait_state(http, "acc-1", "cut", "unknown")
        assert "died during a reload" in cut["error"]
        worker = http.get("/workers/worker1").json()
        assert worker["pid"] != old_pid
        wait_until(lambda: http.get("/accounts/acc-1").json()["state"] == "running", 10, "runs")
        assert [s["request_id"] for s in recorded_sends(record, "acc-1")] == ["cut"]
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_failures_are_failed_and_the_account_keeps_running(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    record = tmp_path / "sends"
    master = start(
        start_master,
        record,
        sender("raises", record, send_fail="error"),
        {"id": "mute", "platform": "testplatforms.senders:NoSend", "options": {"rate": 2.0}},
    )
    with master.http() as http:
        wait_until(
            lambda: http.get("/accounts/mute/conversations/conv-1").is_success, 20, "mute's data"
        )
        assert reply(http, "raises", "r-1").status_code == 202
        assert reply(http, "mute", "r-2").status_code == 202
        failed = wait_state(http, "raises", "r-1", "failed")
        assert "RuntimeError" in failed["error"]
        mute = wait_state(http, "mute", "r-2", "failed")
        assert mute["error"].startswith("platform cannot send")
        assert http.get("/accounts/raises").json()["state"] == "running"
        listing = ctl(master, "outbox", "raises")
        assert listing.returncode == 0, listing.stderr
        assert "failed" in listing.stdout
        assert "RuntimeError" in listing.stdout


@pytest.mark.timeout(90)
def test_queued_replies_expire_and_survive_a_master_restart(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    record = tmp_path / "sends"
    master = start(start_master, record, sender("acc-1", record), outbox={"expire_after_s": 3})
    with master.http() as http:
        assert http.post("/workers/worker1/stop").is_success
        assert reply(http, "acc-1", "stale").status_code == 202
        expired = wait_state(http, "acc-1", "stale", "expired", timeout=15)
        assert "still queued" in expired["error"]
        assert reply(http, "acc-1", "kept").status_code == 202
    # A restart with a reply queued: it is sent once by the next master (which keeps
    # replies queued longer, so that a slow restart cannot expire it first).
    assert master.stop() == 0
    config = tomllib.loads(master.config_path.read_text())
    config["outbox"]["expire_after_s"] = 600
    master.config_path.write_text(to_toml(config))
    master.start()
    master.wait_running("worker1")
    with master.http() as http:
        wait_state(http, "acc-1", "kept", "sent")
    assert [s["request_id"] for s in recorded_sends(record, "acc-1")] == ["kept"]
    rows = master.rows("SELECT state FROM outbox WHERE request_id = 'kept'")
    assert rows == [("sent",)]


@pytest.mark.timeout(90)
def test_a_reply_retried_after_it_expired_gets_its_full_time_again(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """Expiry counts from when a reply last became queued, not from when it was made: one
    retried after it expired waits again while its account does not run, and goes once
    it does."""
    record = tmp_path / "sends"
    master = start(start_master, record, sender("acc-1", record), outbox={"expire_after_s": 2})
    with master.http() as http:
        assert http.post("/workers/worker1/stop").is_success
        assert reply(http, "acc-1", "r-1").status_code == 202
        expired = wait_state(http, "acc-1", "r-1", "expired", timeout=15)
        retried = http.post("/accounts/acc-1/outbox/r-1/retry")
        assert retried.status_code == 200, retried.text
        again = retried.json()
        assert again["state"] == "queued"
        assert again["created_at"] == expired["created_at"]
        assert again["queued_at"] >= expired["updated_at"]
        assert entry(http, "acc-1", "r-1")["queued_at"] == again["queued_at"]  # stored
        assert http.post("/workers/worker1/start").is_success
        sent = wait_state(http, "acc-1", "r-1", "sent")
    assert [s["request_id"] for s in recorded_sends(record, "acc-1")] == ["r-1"]
    states = [e["new"] for e in master.log.find(event="reply state", request_id="r-1")]
    assert states == ["expired", "sending", "sent"], states  # never expired again
    assert master.log.find(event="reply queued again by an operator", request_id="r-1")
    assert sent["attempts"] == 1


@pytest.mark.timeout(90)
def test_hiscrmctl_send_and_an_idempotent_platform(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    record = tmp_path / "sends"
    record.mkdir()
    master = start(start_master, record)
    options = {"rate": 2.0, "seed": 1, "record_dir": str(record), "send_delay_s": 30}
    body = {"id": "idem", "platform": "testplatforms.senders:IdempotentSender", "options": options}
    with master.http() as http:
        assert http.post("/accounts", json=body).status_code == 201
        # A worker says which of its platforms send idempotently when it registers: one
        # started after the account was made has it among them.
        assert http.post("/workers/worker1/restart").is_success
        wait_until(lambda: http.get("/accounts/idem/conversations/conv-1").is_success, 20, "data")
        sent = ctl(master, "send", "idem", "conv-1", "hello there", "--request-id", "c-1")
        assert sent.returncode == 0, sent.stderr
        assert "queued" in sent.stdout or "sending" in sent.stdout
        wait_until(lambda: len(recorded_sends(record, "idem")) == 1, 10, "send called")
        # Killed mid-send: this platform's sends are idempotent, so it goes again.
        pid = recorded_sends(record, "idem")[0]["pid"]
        quick = {**options, "send_delay_s": 0}
        mark = master.mark()
        os.kill(pid, signal.SIGKILL)
        master.wait_running("worker1", after=mark)
        assert http.patch("/accounts/idem", json={"options": quick}).is_success
        done = wait_state(http, "idem", "c-1", "sent")
        # Sent again after the kill (and again if the options' change caught it mid-send).
        assert done["attempts"] >= 2
    calls = [s["request_id"] for s in recorded_sends(record, "idem")]
    # Every call to the platform was an attempt; an attempt handed over while the
    # account's task restarted for its new options may never have reached the platform.
    assert set(calls) == {"c-1"}
    assert 2 <= len(calls) <= done["attempts"]
    listing = ctl(master, "outbox", "idem", "--state", "sent")
    assert listing.returncode == 0, listing.stderr
    assert "c-1" in listing.stdout


@pytest.mark.timeout(120)
def test_an_idempotent_send_cut_by_a_master_kill_goes_again_after_the_restart(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """A master SIGKILLed while its worker's platform sends: the next master calls the
    reply ``unknown`` (it may have gone out), then, once the account runs and its worker
    says the platform's sends are idempotent, queues it again and sends it. A platform
    that is not idempotent leaves its reply ``unknown`` for an operator."""
    record = tmp_path / "sends"
    idem = {
        "id": "idem",
        "platform": "testplatforms.senders:IdempotentSender",
        "options": {"rate": 2.0, "seed": 1, "record_dir": str(record), "send_delay_s": 30},
    }
    plain = sender("plain", record, send_delay_s=30)
    master = start(start_master, record, idem, plain)
    with master.http() as http:
        assert reply(http, "idem", "i-1").status_code == 202
        assert reply(http, "plain", "p-1").status_code == 202
        wait_until(
            lambda: all(len(recorded_sends(record, a)) == 1 for a in ("idem", "plain")),
            10,
            "both sends called",
        )
        assert entry(http, "idem", "i-1")["state"] == "sending"
    pids = {s["pid"] for a in ("idem", "plain") for s in recorded_sends(record, a)}
    os.kill(master.pid, signal.SIGKILL)
    assert master.proc is not None
    master.proc.wait(5)
    wait_until(lambda: all(gone(p) for p in pids), 10, "the workers gone with the master")

    config = tomllib.loads(master.config_path.read_text())
    for account in config["accounts"]:
        account["options"]["send_delay_s"] = 0  # the next sends return at once
    master.config_path.write_text(to_toml(config))
    mark = master.mark()
    master.start()
    master.wait_running("worker1", after=mark)
    with master.http() as http:
        done = wait_state(http, "idem", "i-1", "sent")
        assert done["attempts"] == 2
        assert done["error"] is None
        wait_until(lambda: http.get("/accounts/plain").json()["state"] == "running", 20, "runs")
        unknown = entry(http, "plain", "p-1")
        assert unknown["state"] == "unknown", unknown
        assert unknown["error"].endswith("while it was sent")  # its master went
    after = master.log.refresh()[mark:]
    after = [e for e in after if e.get("event") == "reply state" and e.get("request_id") == "i-1"]
    assert [e["new"] for e in after] == ["unknown", "queued", "sending", "sent"]
    assert "sent again (idempotent)" in after[1]["error"]
    assert [s["request_id"] for s in recorded_sends(record, "idem")] == ["i-1", "i-1"]
    assert [s["request_id"] for s in recorded_sends(record, "plain")] == ["p-1"]  # never again
    assert master.stop() == 0
