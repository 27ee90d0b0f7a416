"""Replies in a real worker process, with the test as its master (``worker_pipe``): what
``master:send`` becomes. Sent by the platform, the sent item syncs back; refused before the
platform when the target is not the account's or the platform cannot send; failed when
``send`` raises, the account running on; not sent when the account does not run here; and
a slow send holds up neither the worker nor its other accounts, and is cancelled, not
answered, when its account stops."""

import itertools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from testplatforms.senders import recorded_sends
from worker_pipe import PipeMaster, pipe_master

from hiscrm.models import AccountSpec
from hiscrm.protocol import (
    MasterAccountAssign,
    MasterAccountRevoke,
    MasterSend,
    WorkerAccountReleased,
    WorkerAccountState,
    WorkerDataSync,
    WorkerError,
    WorkerHeartbeat,
    WorkerSendResult,
)
from hiscrm.replies import CommentReply, MessageReply, ReplyAction

SENDER = "testplatforms.senders:Sender"
PLATFORMS = [
    "demo",
    SENDER,
    "testplatforms.senders:IdempotentSender",
    "testplatforms.senders:NoSend",
    "testplatforms.senders:SyncSend",
    "testplatforms.bad_import:Broken",
]
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records")


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory, records: Path) -> Iterator[PipeMaster]:
    with pipe_master(tmp_path_factory.mktemp("worker"), PLATFORMS) as master:
        rec = {"record_dir": str(records), "rate": 2.0}
        master.assign(
            "a-demo", "demo", {"rate": 2.0}, digest=[("conversation", "conv-store", 1, "h")]
        )
        master.assign("a-rec", SENDER, rec)
        master.assign("a-fail", SENDER, {**rec, "send_fail": "error"})
        master.assign("a-exit", SENDER, {**rec, "send_fail": "system_exit"})
        master.assign("a-int", SENDER, {**rec, "send_fail": "returns_int"})
        master.assign("a-nosend", "testplatforms.senders:NoSend")
        master.assign("a-syncsend", "testplatforms.senders:SyncSend")
        master.assign("a-broken", "testplatforms.bad_import:Broken", wait_state="failed")
        master.assign("a-backoff", SENDER, {**rec, "run_fails": True}, wait_state="backoff")
        yield master


def send(master: PipeMaster, account_id: str, action: ReplyAction) -> WorkerSendResult:
    """Send ``action`` and wait for its result."""
    request_id = f"r{next(_ids)}"
    master.say(MasterSend(account_id=account_id, request_id=request_id, action=action))
    return master.wait_for(
        WorkerSendResult, lambda m: m.request_id == request_id, what=f"for {request_id}"
    )


def message(conversation_id: str, text: str = "thank you, it ships today") -> MessageReply:
    return MessageReply(conversation_id=conversation_id, text=text)


def test_the_worker_says_which_platforms_send_idempotently(worker: PipeMaster) -> None:
    assert worker.register is not None
    assert worker.register.idempotent_platforms == ["testplatforms.senders:IdempotentSender"]


def test_a_sent_message_syncs_back_as_outbound(worker: PipeMaster) -> None:
    result = send(worker, "a-demo", message("conv-1", "on its way"))
    assert (result.outcome, result.error) == ("sent", None)
    assert result.item_id == f"out-{result.request_id}"
    key = ("a-demo", "message", result.item_id)
    worker.until(lambda: key in worker.items, 5, "the sent message synced")
    sent = worker.items[key]
    assert (sent["direction"], sent["sender_id"], sent["text"]) == ("outbound", "me", "on its way")
    assert sent["conversation_id"] == "conv-1"
    conversation = ("a-demo", "conversation", "conv-1")
    worker.until(
        lambda: worker.items.get(conversation, {}).get("last_message_at") == sent["sent_at"],
        5,
        "the conversation's last_message_at updated",
    )


def test_a_conversation_known_from_the_store_takes_replies(worker: PipeMaster) -> None:
    result = send(worker, "a-demo", message("conv-store"))
    assert result.outcome == "sent", result.error


def test_comments_are_sent_and_answer_comments_of_their_content(worker: PipeMaster) -> None:
    first = send(worker, "a-demo", CommentReply(content_id="content-0", text="welcome"))
    assert first.outcome == "sent", first.error
    assert first.item_id is not None
    answer = send(
        worker,
        "a-demo",
        CommentReply(content_id="content-0", parent_id=first.item_id, text="and thanks"),
    )
    assert answer.outcome == "sent", answer.error
    key = ("a-demo", "comment", answer.item_id or "")
    worker.until(lambda: key in worker.items, 5, "the answer synced")
    assert worker.items[key]["parent_id"] == first.item_id
    assert worker.items[key]["direction"] == "outbound"
    elsewhere = send(
        worker,
        "a-demo",
        CommentReply(content_id="content-1", parent_id=first.item_id, text="wrong post"),
    )
    assert elsewhere.outcome == "failed"
    assert (
        elsewhere.error
        == f"comment {first.item_id!r} is on content 'content-0', not on 'content-1'"
    )


@pytest.mark.parametrize(
    ("action", "error"),
    [
        (
            message("conv-store"),  # a-demo's, not a-rec's
            "conversation 'conv-store' is not one of account 'a-rec''s conversations",
        ),
        (
            message("content-0"),  # an item of the account, but not a conversation
            "conversation 'content-0' is not one of account 'a-rec''s conversations",
        ),
        (
            CommentReply(content_id="content-99", text="hi"),
            "content 'content-99' is not one of account 'a-rec''s contents",
        ),
        (
            CommentReply(content_id="content-0", parent_id="conv-0", text="hi"),
            "comment 'conv-0' is not one of account 'a-rec''s comments",
        ),
    ],
)
def test_a_reply_to_what_is_not_the_accounts_fails_before_the_platform(
    worker: PipeMaster, records: Path, action: ReplyAction, error: str
) -> None:
    result = send(worker, "a-rec", action)
    assert (result.outcome, result.error) == ("failed", error)
    assert result.request_id not in {s["request_id"] for s in recorded_sends(records, "a-rec")}
    # The same account's own conversation goes through, and reaches the platform.
    control = send(worker, "a-rec", message("conv-0"))
    assert control.outcome == "sent", control.error
    assert control.request_id in {s["request_id"] for s in recorded_sends(records, "a-rec")}


def test_a_platform_without_async_send_cannot_send(worker: PipeMaster) -> None:
    none = send(worker, "a-nosend", message("conv-0"))
    assert none.outcome == "failed"
    assert none.error == "platform cannot send (NoSend has no send method)"
    sync = send(worker, "a-syncsend", message("conv-0"))
    assert sync.outcome == "failed"
    assert sync.error == (
        "platform cannot send (SyncSend.send is not 'async def send(self, ctx, action)')"
    )


@pytest.mark.parametrize(
    ("account_id", "error"),
    [
        ("a-fail", r"RuntimeError: send of r\d+ failed on purpose"),
        ("a-exit", r"SystemExit: 3"),
        ("a-int", r"TypeError: send\(\) returned int; it returns the sent item's id .*"),
    ],
)
def test_a_send_that_raises_fails_and_the_account_runs_on(
    worker: PipeMaster, records: Path, account_id: str, error: str
) -> None:
    states_before = len(
        [s for s in worker.of_type(WorkerAccountState) if s.account_id == account_id]
    )
    result = send(worker, account_id, message("conv-0"))
    assert result.outcome == "failed"
    assert re.fullmatch(error, result.error or ""), result.error
    assert result.request_id in {s["request_id"] for s in recorded_sends(records, account_id)}
    reported = worker.seen_or_wait(
        WorkerError, lambda e: e.account_id == account_id and e.source == "send"
    )
    assert re.fullmatch(error, reported.summary), reported.summary
    # The account runs on: it keeps syncing new items, without a change of state.
    syncs_after = len(worker.received)
    worker.wait_for(
        WorkerDataSync,
        lambda m: m.account_id == account_id and bool(m.changes),
        what=f"from {account_id} after its failed send",
    )
    worker.wait_for(WorkerHeartbeat)
    assert len(worker.received) > syncs_after
    states = [s for s in worker.of_type(WorkerAccountState) if s.account_id == account_id]
    assert len(states) == states_before, states


def test_an_account_that_does_not_run_here_sends_nothing(worker: PipeMaster, records: Path) -> None:
    unknown = send(worker, "a-nowhere", message("conv-0"))
    assert (unknown.outcome, unknown.error) == (
        "not_sent",
        "account 'a-nowhere' is not assigned to this worker",
    )
    broken = send(worker, "a-broken", message("conv-0"))
    assert broken.outcome == "not_sent"
    assert (broken.error or "").startswith(
        "account 'a-broken' cannot run here: platform 'testplatforms.bad_import:Broken' cannot be loaded"
    )
    # Its run fails at once each time: no instance of it is running between the restarts.
    backoff = send(worker, "a-backoff", message("conv-0"))
    assert (backoff.outcome, backoff.error) == (
        "not_sent",
        "account 'a-backoff' is in backoff in this worker",
    )
    assert recorded_sends(records, "a-backoff") == []


def test_replies_to_an_account_still_loading_or_being_released_are_not_sent(
    worker: PipeMaster, records: Path
) -> None:
    account = AccountSpec(id="a-load", platform=SENDER, options={"record_dir": str(records)})
    worker.say(MasterAccountAssign(account=account, acked_seq=0, digest_total=1))
    loading = send(worker, "a-load", message("conv-0"))
    assert (loading.outcome, loading.error) == (
        "not_sent",
        "account 'a-load' is still loading in this worker",
    )
    worker.say(MasterAccountRevoke(account_id="a-load"))
    worker.wait_for(WorkerAccountReleased, lambda m: m.account_id == "a-load")

    worker.assign("a-going", SENDER, {"record_dir": str(records)})
    # The revoke and the send go together: the send finds the account on its way out.
    worker.say(MasterAccountRevoke(account_id="a-going"))
    going = send(worker, "a-going", message("conv-0"))
    assert going.outcome == "not_sent"
    assert going.error in (
        "account 'a-going' is being released by this worker",
        "account 'a-going' is not assigned to this worker",
    )
    worker.wait_for(WorkerAccountReleased, lambda m: m.account_id == "a-going")
    assert recorded_sends(records, "a-load") == recorded_sends(records, "a-going") == []


@pytest.mark.timeout(60)
def test_a_slow_send_holds_up_nothing_and_is_cancelled_unanswered_at_stop(
    tmp_path: Path,
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    with pipe_master(tmp_path / "w", [SENDER, "testplatforms.recording:Stream"]) as master:
        slow = {"record_dir": str(records), "send_delay_s": 300, "rate": 2.0}
        master.assign("a-slow", SENDER, slow)
        master.assign("a-revoked", SENDER, slow)
        master.assign("a-busy", "testplatforms.recording:Stream", {"record_dir": str(records)})
        for account_id, request_id in [("a-slow", "s1"), ("a-slow", "s2"), ("a-revoked", "s3")]:
            action = message(f"conv-{request_id[-1]}")
            master.say(MasterSend(account_id=account_id, request_id=request_id, action=action))
        master.until(
            lambda: (
                len(recorded_sends(records, "a-slow")) == 2
                and len(recorded_sends(records, "a-revoked")) == 1
            ),
            10,
            "three sends under way, two of them on one account",
        )
        # Each send sees its own request id in ctx, though two run together on one account.
        assert sorted(s["request_id"] for s in recorded_sends(records, "a-slow")) == ["s1", "s2"]
        # While they wait: heartbeats every 50 ms, and the other account's items go on.
        start = len(master.received)
        master.until(
            lambda: (
                sum(isinstance(m, WorkerHeartbeat) for m in master.received[start:]) >= 10
                and sum(
                    isinstance(m, WorkerDataSync) and m.account_id == "a-busy" and bool(m.changes)
                    for m in master.received[start:]
                )
                >= 5
            ),
            10,
            "heartbeats and a-busy's syncs during the slow sends",
        )
        lags = [m.loop_lag_ms for m in master.of_type(WorkerHeartbeat)[-10:]]
        assert max(lags) < 1000, lags
        # A revoke does not wait for the send, and leaves it unanswered.
        master.say(MasterAccountRevoke(account_id="a-revoked"))
        master.wait_for(WorkerAccountReleased, lambda m: m.account_id == "a-revoked", timeout=5)
        master.stop(timeout=5)  # and neither does a stop
        assert master.of_type(WorkerSendResult) == []
        assert len(re.findall(r"send cancelled with its account", master.log_tail(10**7))) == 3
