"""Replies going out: what a worker does with ``master:send``.

Each ``master:send`` gets one ``worker:send:result``, or none at all:

* ``not_sent``: the account does not run here now: not assigned to this worker, still
  loading, being released or stopped, its platform failed to load, or no instance of it
  runs (``backoff``, or not started yet). Nothing reached the platform; the master may
  send it again when the account runs.
* ``failed``: the platform cannot send (its class has no ``async def send``), the target
  is not this account's (below; the platform is not called), ``send`` raised (anything
  but the worker's own cancellation: the error as ``Type: message``, logged with its
  traceback, counted and reported as ``worker:error`` from ``send``; the account runs
  on), or ``send`` returned something other than a str or None.
* ``sent``: ``send`` returned; ``item_id`` is what it returned.
* no answer: the account stopped (revoked, or the worker stopping) while ``send`` was
  under way. The send is cancelled with the account's task (``AccountRunner.stop``, no
  longer than the stop's timeout) and not reported: the platform may have sent it, so
  only the master can say what it becomes (``unknown``). A send that ignores the
  cancellation is abandoned after the timeout (reported as an error); if it ends later,
  its result is reported as it comes.

The target check keeps the wrong-recipient failure out: a reply goes only where this
account holds the target, as an item of its own (``AccountData``: what the store holds
for it, plus what its platform upserted since):

* a message: the conversation must be one of the account's conversations (an item of
  kind ``conversation``; a conversation that only messages name is not enough: a
  platform that sends upserts its conversations);
* a comment: the content must be one of the account's contents and ``parent_id``, if
  given, one of its comments, on that content. (Which content a comment is on is known
  for the comments this worker has seen, upserted or replayed from its spool; a comment
  known only from the store's digest passes on the account alone.)

The platform sees the request id as ``ctx.request_id`` (set in the send's own task).
"""

import asyncio
import inspect
from collections.abc import Callable
from typing import Literal

from structlog.typing import FilteringBoundLogger

from hiscrm.platforms.base import Sender
from hiscrm.protocol import MasterSend, WorkerSendResult
from hiscrm.replies import CommentReply, MessageReply, ReplyAction
from hiscrm.worker.account_data import AccountData, InvalidItem
from hiscrm.worker.context import AccountContext, set_request_id
from hiscrm.worker.error_reporter import ErrorReporter
from hiscrm.worker.exception_text import describe_exception

CANNOT_SEND = "platform cannot send"


def result(
    message: MasterSend,
    outcome: Literal["sent", "failed", "not_sent"],
    *,
    item_id: str | None = None,
    error: str | None = None,
) -> WorkerSendResult:
    return WorkerSendResult(
        account_id=message.account_id,
        request_id=message.request_id,
        outcome=outcome,
        item_id=item_id,
        error=error,
    )


def cannot_send(platform: type) -> str | None:
    """Why instances of ``platform`` cannot send, or None if they can."""
    send = getattr(platform, "send", None)
    if send is None:
        return f"{CANNOT_SEND} ({platform.__qualname__} has no send method)"
    if not inspect.iscoroutinefunction(send):
        return (
            f"{CANNOT_SEND} ({platform.__qualname__}.send is not "
            "'async def send(self, ctx, action)')"
        )
    return None


def target_problem(data: AccountData, action: ReplyAction) -> str | None:
    """Why ``action`` is not for this account, or None if its target is the account's."""
    account = data.account_id
    match action:
        case MessageReply(conversation_id=conversation):
            if not data.holds("conversation", conversation):
                return (
                    f"conversation {conversation!r} is not one of account {account!r}'s "
                    "conversations"
                )
        case CommentReply(content_id=content, parent_id=parent):
            if not data.holds("content", content):
                return f"content {content!r} is not one of account {account!r}'s contents"
            if parent is not None:
                if not data.holds("comment", parent):
                    return f"comment {parent!r} is not one of account {account!r}'s comments"
                on = data.comment_content.get(parent)
                if on is not None and on != content:
                    return f"comment {parent!r} is on content {on!r}, not on {content!r}"
    return None


async def send_reply(
    instance: Sender,
    context: AccountContext,
    message: MasterSend,
    errors: ErrorReporter,
    report: Callable[[WorkerSendResult], object],
    log: FilteringBoundLogger,
) -> None:
    """Call the platform's ``send`` (in the task this runs in) and report the outcome."""
    set_request_id(message.request_id)
    fields = {"account_id": message.account_id, "request_id": message.request_id}
    try:
        returned: object = await instance.send(context, message.action)
    except asyncio.CancelledError as exc:
        this_task = asyncio.current_task()
        if this_task is not None and this_task.cancelling():  # the account is stopping
            log.warning("send cancelled with its account; not reported", **fields)
            raise
        # One leaking out of platform code (an awaited helper that was cancelled).
        errors.report("send", exc, account_id=message.account_id)
        error = "CancelledError escaped from send()"
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, GeneratorExit too
        if not (isinstance(exc, InvalidItem) and exc.reported):  # at the upsert
            errors.report("send", exc, account_id=message.account_id)
        error = describe_exception(exc)
    else:
        if returned is None or isinstance(returned, str):
            item_id = None if returned is None else str(returned)
            log.info("reply sent", item_id=item_id, **fields)
            report(result(message, "sent", item_id=item_id))
            return
        wrong = TypeError(
            f"send() returned {type(returned).__qualname__}; it returns the sent item's id (a str) "
            "or None"
        )
        errors.report("send", wrong, account_id=message.account_id)
        error = describe_exception(wrong)
    log.warning("reply failed", error=error, **fields)
    report(result(message, "failed", error=error))
