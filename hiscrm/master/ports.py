"""The two narrow interfaces between the supervision wing and the data wing, which never
import each other (``app`` wires them together):

* ``WorkerLink``: a worker process as the data wing sees it (supervision's processes
  implement it). Data never sees slots, states or launchers.
* ``AccountsPort``: what supervision may ask of the data wing (``AccountManager``
  implements it).
"""

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from hiscrm.models import AccountSpec
from hiscrm.protocol import (
    AnyMessage,
    Encoder,
    WorkerAccountReleased,
    WorkerAccountState,
    WorkerError,
    WorkerHeartbeat,
    WorkerSendResult,
)
from hiscrm.sync_wire import SyncView

# Where both wings tell what happened (the event stream, hooks, health): an event's name
# (``worker.state``, ``account.state``, ...) and its data, as JSON-able values.
EventSink = Callable[[str, dict[str, Any]], None]


class WorkerLink(Protocol):
    """One worker process: where its account messages go."""

    @property
    def worker_id(self) -> str: ...

    @property
    def pid(self) -> int: ...

    @property
    def serving(self) -> bool:
        """Registered and not being stopped: it may be given accounts."""

    @property
    def encoder(self) -> Encoder: ...

    def send(self, message: AnyMessage) -> bool:
        """False if the process can no longer be reached."""

    def send_frame(self, frame: bytes) -> bool: ...


class AccountsPort(Protocol):
    """The data wing's side of the master loop; every call runs on the loop."""

    def worker_up(self, link: WorkerLink, now: float) -> None:
        """A slot's process registered: give it its accounts."""

    def wake_with(self, wake: "Callable[[], None]") -> None:
        """How the data wing wakes the supervisor when it has a new deadline that no
        event of the loop brings (a reply queued through the API)."""

    def platforms_reported(self, idempotent: list[str]) -> None:
        """A process registered: these platforms (specs) say their sends are idempotent."""

    def worker_down(self, worker_id: str, now: float, abnormal: bool) -> None:
        """A slot's process is gone (its death releases what it held); ``abnormal``: it
        died in a way that may be an account's doing (killed, crashed, hung)."""

    def relink(self, link: WorkerLink) -> None:
        """A reload's replacement became the slot's process (its accounts come by
        hand-over, not by assignment)."""

    def accounts_of(self, worker_id: str) -> list[str]: ...

    def revoke(self, link: WorkerLink, account_id: str) -> None:
        """Ask this process to let the account go (answered by ``worker:account:released``)."""

    def assign(self, link: WorkerLink, account_id: str) -> None:
        """Hand the account to this process (with the store's digest)."""

    def on_sync(self, link: WorkerLink, message: SyncView) -> None: ...

    def on_released(self, link: WorkerLink, message: WorkerAccountReleased, now: float) -> None: ...

    def master_stopping(self) -> None:
        """The master began to shut down: accounts going down from now on are expected."""

    def handed_over(self, link: WorkerLink, account_id: str, why: str) -> None:
        """A reload's outgoing process let the account go to its replacement, or died
        holding it (the reload places it; what was being sent through it was cut)."""

    def on_send_result(self, link: WorkerLink, message: WorkerSendResult) -> None:
        """What became of a reply handed to the worker."""

    def on_account_state(
        self, link: WorkerLink, message: WorkerAccountState, now: float
    ) -> None: ...

    def on_heartbeat(self, link: WorkerLink, message: WorkerHeartbeat, now: float) -> None:
        """The accounts' progress comes with heartbeats."""

    def on_worker_error(self, link: WorkerLink, message: WorkerError) -> None: ...

    def platform_specs(self) -> list[str]:
        """Every distinct platform of the registered accounts, as ``module:Class``: what a
        starting worker imports before its first assignment."""
        return []

    def solo_workers(self) -> list[str]:
        """The worker slots the data wing wants beside the configured ones: one per
        quarantined account (the supervisor starts them, and stops and removes those no
        longer wanted once they hold no account)."""

    def memory_limit_mb(self, worker_id: str) -> int | None:
        """The own ``max_memory_mb`` of the account this slot runs alone (a quarantined
        account's ``solo-<id>``); None for a shared worker or an account without one."""

    def next_deadline(self) -> float | None: ...

    def on_deadline(self, now: float) -> None: ...

    def add(self, account: AccountSpec, source: str, now: float) -> None:
        """A new account (``source``: config or api)."""

    def change(self, account: AccountSpec, now: float) -> None:
        """New options, platform or enabled: its task restarts with them."""

    def remove(self, account_id: str, now: float) -> "asyncio.Future[None]":
        """Done once its worker has let it go."""

    def set_workers(self, worker_ids: list[str], now: float) -> None:
        """The configured workers are now these (scaling)."""

    def holds(self, worker_id: str) -> bool:
        """Some account is assigned to, or being let go by, this worker."""

    def release(self, account_id: str, now: float) -> bool:
        """Lift an account's quarantine; False if it was not quarantined."""

    def request_sync(self, account_id: str, from_seq: int | None) -> str:
        """Ask the account's worker to sync now; its id. LookupError says why not."""
