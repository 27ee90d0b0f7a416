"""Whatever a platform hands to ``ctx.upsert_*`` that cannot be stored is refused at the
upsert as ``InvalidItem`` naming the field, reported once, and changes nothing; errors
whose text cannot be sent are still reported."""

import json
from pathlib import Path
from typing import Any

import pytest
import structlog
from conftest import MasterFactory, make_config
from harness import count, query, wait_until

from hiscrm.items import Comment, Conversation, Message
from hiscrm.models import AccountSpec
from hiscrm.protocol import Encoder, WorkerError, decode
from hiscrm.worker.account_data import AccountData, InvalidItem
from hiscrm.worker.context import AccountContext
from hiscrm.worker.error_reporter import ErrorReporter
from hiscrm.worker.spool import Spool

SENT_AT = 1_763_848_020_000


def message(**fields: Any) -> dict[str, Any]:
    base = {
        "id": "m1",
        "conversation_id": "c1",
        "direction": "inbound",
        "sender_id": "u1",
        "text": "hello",
        "sent_at": SENT_AT,
    }
    return {**base, **fields}


class Sent:
    """The worker's pipe, as ErrorReporter sees it: every message must encode."""

    def __init__(self) -> None:
        self.errors: list[WorkerError] = []
        self._encoder = Encoder()

    def __call__(self, error: WorkerError) -> bool:
        body = decode(self._encoder.encode(error)).body  # raises if it cannot go over the pipe
        assert isinstance(body, WorkerError)
        self.errors.append(body)
        return True


@pytest.fixture
def ctx(tmp_path: Path) -> tuple[AccountContext, AccountData, Sent]:
    data = AccountData("acc", Spool(tmp_path / "acc"))
    data.load(0, [])
    sent = Sent()
    errors = ErrorReporter(sent, structlog.get_logger())
    context = AccountContext(
        AccountSpec(id="acc", platform="demo"),
        structlog.get_logger(),
        data,
        lambda account, urgent: None,
        errors,
    )
    return context, data, sent


def refused(ctx: tuple[AccountContext, AccountData, Sent], upsert: Any) -> str:
    """Run ``upsert``: it must raise InvalidItem, reported once, nothing recorded."""
    context, data, sent = ctx
    with pytest.raises(InvalidItem) as info:
        upsert(context)
    assert info.value.reported
    assert len(sent.errors) == 1
    assert sent.errors[0].error_type == "InvalidItem"
    assert sent.errors[0].source == "platform data"
    assert data.seq == 0
    assert not data.unsent
    return str(info.value)


LONE = "\ud800"


def mutated(item: Message, field: str, value: object) -> Message:
    object.__setattr__(item, field, value)  # past frozen=True, as a careless platform might
    return item


@pytest.mark.parametrize(
    ("upsert", "where"),
    [
        (lambda c: c.upsert_message(message(text=f"a{LONE}b")), "text"),
        (lambda c: c.upsert_message(message(sender_name=LONE)), "sender_name"),
        (lambda c: c.upsert_message(Message(**message(text=LONE))), "text"),
        (
            lambda c: c.upsert_conversation({"id": "c1", "participants": ["ok", LONE]}),
            "participants.1",
        ),
        (lambda c: c.upsert_item("message", message(text=LONE)), "text"),
        (lambda c: c.upsert(Message(**message(text=LONE))), "text"),
    ],
)
def test_a_lone_surrogate_is_an_invalid_item_naming_the_field(
    ctx: tuple[AccountContext, AccountData, Sent], upsert: Any, where: str
) -> None:
    problem = refused(ctx, upsert)
    assert f": {where}: not valid Unicode text" in problem
    assert "lone surrogate" in problem


def test_a_lone_surrogate_in_an_id_is_an_invalid_item(
    ctx: tuple[AccountContext, AccountData, Sent],
) -> None:
    problem = refused(ctx, lambda c: c.upsert_message(message(id=f"m{LONE}")))
    assert "id: " in problem


@pytest.mark.parametrize(
    ("item", "field", "says"),
    [
        (Message.model_construct(**message(text=5)), "text", "valid string"),
        (Message.model_construct(**message(sent_at=1_763_848_020)), "sent_at", "seconds"),
        (Message.model_construct(**message(id="a/b")), "id", "'/'"),
        (mutated(Message(**message()), "direction", "sideways"), "direction", "'inbound'"),
    ],
    ids=["wrong type", "seconds", "slash in id", "changed after validation"],
)
def test_an_item_that_skipped_validation_is_checked_at_the_upsert(
    ctx: tuple[AccountContext, AccountData, Sent], item: Message, field: str, says: str
) -> None:
    problem = refused(ctx, lambda c: c.upsert_message(item))
    assert f"{field}: " in problem
    assert says in problem
    ctx[2].errors.clear()
    problem = refused(ctx, lambda c: c.upsert(item))
    assert f"{field}: " in problem
    assert says in problem


def test_only_items_can_be_upserted(ctx: tuple[AccountContext, AccountData, Sent]) -> None:
    problem = refused(ctx, lambda c: c.upsert(AccountSpec(id="x")))
    assert "not an item: AccountSpec" in problem


@pytest.mark.parametrize(
    "bad_id",
    ["a/b", "trailing/", "/", ".", "..", "tab\there", "new\nline", "nul\x00", "del\x7f", "c1\x85"],
)
@pytest.mark.parametrize("field", ["id", "conversation_id"])
def test_ids_that_cannot_be_a_url_path_segment_are_refused(
    ctx: tuple[AccountContext, AccountData, Sent], bad_id: str, field: str
) -> None:
    problem = refused(ctx, lambda c: c.upsert_message(message(**{field: bad_id})))
    assert f"{field}: {bad_id!r} cannot be an item id" in problem


@pytest.mark.parametrize(
    "good_id", ["123", "t_1:2-3=4+5", "a b", "%2F", "...", "x.y", "id?q#f", "ünï\u00a0cödé", "😀"]
)
def test_ids_that_can_be_a_path_segment_are_kept(
    ctx: tuple[AccountContext, AccountData, Sent], good_id: str
) -> None:
    context, data, sent = ctx
    assert context.upsert_message(message(id=good_id))
    assert context.upsert_comment(
        Comment(id=good_id, content_id=good_id, author_id="u", text="t", created_at=SENT_AT)
    )
    assert not sent.errors
    assert data.seq == 2


def test_the_account_goes_on_after_a_refused_item(
    ctx: tuple[AccountContext, AccountData, Sent],
) -> None:
    context, data, sent = ctx
    with pytest.raises(InvalidItem):
        context.upsert_message(message(text=LONE))
    assert context.upsert_conversation(Conversation(id="c1"))
    assert context.upsert_message(message(text="fine"))
    assert data.seq == 2
    assert len(sent.errors) == 1


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


@pytest.mark.parametrize(
    ("exc", "says"),
    [
        (ValueError(f"bad {LONE} text"), "bad \\ud800 text"),
        (Unprintable(), "<str() of this Unprintable raised RuntimeError>"),
    ],
)
def test_an_error_whose_text_cannot_be_sent_is_still_reported(exc: Exception, says: str) -> None:
    sent = Sent()
    reporter = ErrorReporter(sent, structlog.get_logger())
    try:
        raise exc
    except Exception as caught:
        reporter.report("account", caught, account_id="acc")
    assert reporter.total == 1
    assert sent.errors[0].message == says
    assert json.dumps(sent.errors[0].traceback)  # valid text throughout


@pytest.mark.timeout(60)
def test_bad_text_from_a_platform_is_refused_or_escaped_and_the_accounts_go_on(
    start_master: MasterFactory,
) -> None:
    config = make_config(
        workers=1,
        accounts=[
            {"id": "refused", "platform": "testplatforms.behaviours:BadText"},
            {
                "id": "failing",
                "platform": "testplatforms.behaviours:BadText",
                "options": {"fail": True},
            },
        ],
        supervision={"backoff_initial_s": 0.1, "backoff_max_s": 0.2},
    )
    master = start_master(config)
    master.wait_running("worker1")
    error = master.log.wait_for(event="worker error", source="platform data", account_id="refused")
    assert "InvalidItem: invalid message 'bad': text: not valid Unicode text" in error["error"]
    wait_until(lambda: count(master.db, "messages", "refused") == 1, 10, "the good item stored")
    assert query(master.db, "SELECT id FROM messages WHERE account_id='refused'") == [("good",)]

    # The failing account's error is reported with its text escaped, and it restarts.
    failed = master.log.wait_for(event="worker error", source="account", account_id="failing")
    assert "ValueError: an error about \\udcff" in failed["error"]
    log = master.worker_log("worker1")
    wait_until(lambda: log.read_text().count("account_id=failing new=backoff") >= 3, 10, "restarts")
    text = log.read_text()
    assert "account_id=refused new=backoff" not in text  # it never stopped
    assert not master.log.find(event="protocol error")
    assert not [e for e in master.log.find(event="worker error") if "encoding" in e["source"]]
    refused_errors = master.log.find(event="worker error", account_id="refused")
    assert len(refused_errors) == 1  # once, not again by run() or the task
    assert master.stop() == 0
