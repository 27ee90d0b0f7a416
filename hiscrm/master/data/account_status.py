"""Each account's state as the master sees it, and the figures shown beside it.

The state is derived, by ``derive``, from what the master knows (enabled or not,
quarantined, assigned to which worker, whether that worker runs) and what the worker
reports of the account's task (``worker:account:state``). ``AccountStatus.move`` is the
one place it changes, logged once per change.
"""

from enum import StrEnum

import msgspec
from structlog.typing import FilteringBoundLogger

from hiscrm.items import epoch_ms

TRACEBACK_TAIL_CHARS = 4000
EVENT_TRACEBACK_LINES = 8  # of a failed or backoff account's traceback, in account.state
EVENT_TRACEBACK_CHARS = 2000


class AccountState(StrEnum):
    DISABLED = "disabled"  # the operator turned it off
    UNASSIGNED = "unassigned"  # enabled, no capacity for it
    STARTING = "starting"  # assigned, its task not running yet
    RUNNING = "running"  # its task runs
    BACKOFF = "backoff"  # its task failed and waits to be restarted inside the worker
    DOWN = "down"  # its worker is not running
    FAILED = "failed"  # its platform does not import or does not construct
    QUARANTINED = "quarantined"  # suspected of killing its workers: it runs alone
    ELSEWHERE = "elsewhere"  # a cluster: enabled, not leased to this master


class TaskState(StrEnum):
    """The account's task in its worker, as last reported."""

    RUNNING = "running"
    BACKOFF = "backoff"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


def derive(
    *,
    enabled: bool,
    failed: bool,
    quarantined: bool,
    owner: str | None,
    owner_running: bool,
    home: str | None,
    home_down: bool,
    task: TaskState | None,
) -> AccountState:
    """``home_down``: the worker the account waits for has died (not merely not started
    yet)."""
    if not enabled:
        return AccountState.DISABLED
    if failed:
        return AccountState.FAILED
    if quarantined:
        return AccountState.QUARANTINED
    if owner is None:
        if home is None:
            return AccountState.UNASSIGNED
        return AccountState.DOWN if home_down else AccountState.STARTING
    if not owner_running:
        return AccountState.DOWN
    if task is TaskState.RUNNING:
        return AccountState.RUNNING
    if task is TaskState.BACKOFF:
        return AccountState.BACKOFF
    return AccountState.STARTING


class LastError(msgspec.Struct, frozen=True):
    at: int  # ms
    message: str  # "Type: message"
    traceback: str  # its end


class AccountStatus(msgspec.Struct):
    account_id: str
    source: str = "config"  # config: declared in the config file; api: made through the API
    state: AccountState = AccountState.UNASSIGNED
    state_since_at: int = msgspec.field(default_factory=epoch_ms)
    reason: str = ""  # why it is in this state, in a few words
    task: TaskState | None = None
    task_restarts: int = 0
    errors_total: int = 0
    last_error: LastError | None = None
    failed: str | None = None  # why its platform cannot run (the traceback's end)
    progress_at: int | None = None  # ms: the last ctx.progress() or upsert
    last_item_at: int | None = None  # ms: the last committed sync with changes
    last_sync_at: int | None = None  # ms: the last committed sync
    announced: bool = False  # its first state has been logged (an initial one is news too)

    def move(
        self,
        new: AccountState,
        reason: str,
        log: FilteringBoundLogger,
        expected: bool = False,
        **fields: object,
    ) -> bool:
        """Change state (logged once; a state of trouble as a warning unless ``expected``,
        e.g. down while the master shuts down); False if it already was in that state."""
        if new is self.state and self.announced:
            self.reason = reason
            return False
        old = self.state if self.announced else None
        self.state, self.reason, self.announced = new, reason, True
        self.state_since_at = epoch_ms()
        level = log.warning if new in TROUBLE and not expected else log.info
        level(
            "account state",
            account_id=self.account_id,
            old=str(old) if old is not None else None,
            new=str(new),
            reason=reason,
            **fields,
        )
        return True

    def traceback_tail(self) -> str | None:
        """The last lines of the traceback behind the state, bounded: why its platform
        cannot run (``failed``), or the error that sent its task to ``backoff``."""
        if self.state is AccountState.FAILED and self.failed:
            text = self.failed
        elif self.state is AccountState.BACKOFF and self.last_error is not None:
            text = self.last_error.traceback
        else:
            return None
        tail = "\n".join(text.strip().splitlines()[-EVENT_TRACEBACK_LINES:])
        return tail[-EVENT_TRACEBACK_CHARS:] or None

    def error(self, message: str, traceback: str, at_ms: int) -> None:
        self.errors_total += 1
        self.last_error = LastError(at_ms, message, traceback[-TRACEBACK_TAIL_CHARS:])


# States that mean the account is not doing its job (health says which).
TROUBLE = frozenset(
    {
        AccountState.UNASSIGNED,
        AccountState.BACKOFF,
        AccountState.DOWN,
        AccountState.FAILED,
        AccountState.QUARANTINED,
    }
)
