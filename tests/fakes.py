"""Fakes for driving the supervisor, the account manager and the rolling reload through
their events in milliseconds: a launcher whose processes are objects that answer like
workers do (or stay silent where a test needs them to), and a store in memory.

Only the processes and the store are fake; the supervisor loop, its slots, the account
manager and the reload are the real ones.
"""

import asyncio
import itertools
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from hiscrm.channel import MAX_FRAME_BYTES, FrameError
from hiscrm.config import Config
from hiscrm.master.data.accounts import AccountManager
from hiscrm.master.data.store import (
    AccountDigest,
    AccountRecord,
    CollectionQuery,
    OutcomeCallback,
    Row,
    StoreStats,
    SyncBatch,
    SyncOutcome,
)
from hiscrm.master.supervision.events import Event, FrameReceived, ProcessExited
from hiscrm.master.supervision.supervisor import Supervisor
from hiscrm.protocol import (
    PROTOCOL_VERSION,
    AnyMessage,
    Encoder,
    MasterAccountAssign,
    MasterAccountRevoke,
    MasterShutdown,
    WorkerAccountReleased,
    WorkerAccountState,
    WorkerRegister,
    decode,
    schema_hash,
)

FAST = {
    "heartbeat_interval_s": 0.05,
    "heartbeat_timeout_s": 5.0,
    "start_timeout_s": 5.0,
    "stop_timeout_s": 0.5,
    "kill_timeout_s": 0.5,
    "backoff_initial_s": 0.05,
    "backoff_max_s": 0.2,
    "backoff_reset_after_s": 30.0,
    "reassign_after_s": 30.0,
}
# Above the kernel's largest pid (2**22): a memory pass never measures a real process.
_pids = itertools.count(1 << 23)


class FakeWorker:
    """A worker process as the master sees it (the WorkerProcess interface), acting like
    a worker: it registers, takes and releases accounts, exits when told or signalled.
    ``register_on_start=False`` keeps it starting until the test calls ``register``."""

    def __init__(
        self, worker_id: str, post: Callable[[Event], None], register_on_start: bool
    ) -> None:
        self.worker_id = worker_id
        self.pid = next(_pids)
        self._post = post
        self._encoder = Encoder()
        self.exit_noticed_at: float | None = None
        self.exitcode: int | None = None
        self.received: list[AnyMessage] = []
        self.signals: list[signal.Signals] = []
        self.accounts: set[str] = set()
        self.alive = True
        if register_on_start:
            asyncio.get_running_loop().call_soon(self.register)

    # --- the worker's side ---------------------------------------------------------------

    def say(self, message: AnyMessage) -> None:
        if self.alive:
            self._post(FrameReceived(self.worker_id, self.pid, self._encoder.encode(message)))

    def register(self) -> None:
        self.say(
            WorkerRegister(
                worker_id=self.worker_id,
                pid=self.pid,
                protocol=PROTOCOL_VERSION,
                schema_hash=schema_hash(),
                platforms=[],
                boot_ms=1.0,
                code_version="fake",
                code_files=[],
            )
        )

    def exit(self, code: int) -> None:
        if self.alive:
            self.alive = False
            self.exitcode = code
            self._post(ProcessExited(self.worker_id, self.pid))

    def _answer(self, message: AnyMessage) -> None:
        match message:
            case MasterShutdown():
                self.exit(0)
            case MasterAccountAssign(account=account):
                self.accounts.add(account.id)
                self.say(
                    WorkerAccountState(
                        account_id=account.id, state="running", restarts=0, reason="assigned"
                    )
                )
            case MasterAccountRevoke(account_id=account_id):
                self.accounts.discard(account_id)
                self.say(WorkerAccountReleased(account_id=account_id, unacked=0))

    # --- WorkerProcess -------------------------------------------------------------------

    def send(self, payload: bytes) -> bool:
        if len(payload) > MAX_FRAME_BYTES:  # as the real channel refuses it
            raise FrameError(f"refusing to send a {len(payload)}-byte frame")
        if not self.alive:
            return False
        message = decode(payload).body
        self.received.append(message)
        asyncio.get_running_loop().call_soon(self._answer, message)
        return True

    def send_signal(self, sig: signal.Signals) -> None:
        self.signals.append(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGABRT):
            asyncio.get_running_loop().call_soon(self.exit, -int(sig))

    signal_group = send_signal

    def reap(self) -> int | None:
        return self.exitcode

    def kill_leftovers(self) -> bool:
        return False

    def close(self) -> None:
        self.alive = False


class FakeLauncher:
    def __init__(self) -> None:
        self.started: list[FakeWorker] = []
        self.register_on_start = True
        self.starts = {"fake": 0}
        self.boots: list[Any] = []

    async def prepare(self, sample: Any, count_error: Callable[[], object]) -> None:
        return None

    async def start(self, boot: Any, post: Callable[[Event], None]) -> FakeWorker:
        worker = FakeWorker(boot.worker_id, post, self.register_on_start)
        self.boots.append(boot)
        self.started.append(worker)
        self.starts["fake"] += 1
        return worker

    def known_pids(self) -> set[int]:
        return set()

    def stop(self) -> None:
        return None

    def of(self, worker_id: str) -> list[FakeWorker]:
        return [w for w in self.started if w.worker_id == worker_id]


class MemoryStore:
    """Commits every sync at once; holds no items."""

    def __init__(self) -> None:
        self._on_outcomes: OutcomeCallback = lambda outcomes: None
        self.committed: dict[str, int] = {}

    def start(self, on_outcomes: OutcomeCallback) -> None:
        self._on_outcomes = on_outcomes

    def stop(self) -> None:
        return None

    def stats(self) -> StoreStats:
        return StoreStats("memory", True, 0, 0, 0)

    def set_retention(self, days: dict[str, float]) -> None:
        return None

    def submit(self, batch: SyncBatch) -> None:
        self.committed[batch.account_id] = batch.last_seq
        self._on_outcomes([SyncOutcome(batch, batch.last_seq)])

    async def digest(self, account_id: str) -> AccountDigest:
        return AccountDigest(self.committed.get(account_id, 0), [])

    async def mark_read(self, collection: str, account_id: str, item_id: str, at_ms: int) -> None:
        return None

    async def page(self, collection: str, query: CollectionQuery) -> tuple[list[Row], int]:
        return [], 0

    async def get_item(self, collection: str, account_id: str, item_id: str) -> None:
        return None

    async def totals(self) -> tuple[dict[str, int], int]:
        return {}, 0

    async def count_items(self, account_id: str) -> dict[str, int]:
        return {}

    async def accounts(self) -> list[AccountRecord]:
        return []

    async def put_account(self, record: AccountRecord) -> None:
        return None

    async def delete_account(self, account_id: str, purge: bool) -> dict[str, int]:
        return {}


class FakeMaster:
    """A real Supervisor and AccountManager over fake workers and a memory store, running
    in the test's event loop."""

    def __init__(
        self,
        tmp_path: Path,
        workers: int = 2,
        accounts: int = 4,
        heartbeat_timeout_ms: int | None = None,
        max_memory_mb: int | None = None,
        account_memory_mb: dict[str, int] | None = None,
    ) -> None:
        supervision: dict[str, Any] = dict(FAST)
        if heartbeat_timeout_ms is not None:
            supervision["heartbeat_timeout_s"] = heartbeat_timeout_ms / 1000
        if max_memory_mb is not None:
            supervision["max_memory_mb"] = max_memory_mb
        own = account_memory_mb or {}
        self.config = Config.model_validate(
            {
                "state_dir": str(tmp_path),
                "workers": workers,
                "supervision": supervision,
                "accounts": [
                    {"id": f"acc-{n}", "max_memory_mb": own.get(f"acc-{n}")}
                    for n in range(1, accounts + 1)
                ],
            }
        )
        self.launcher = FakeLauncher()
        self.store = MemoryStore()
        self.log = structlog.get_logger()
        self.accounts: AccountManager | None = None
        self.supervisor: Supervisor | None = None
        self._task: asyncio.Task[int] | None = None

    async def __aenter__(self) -> "FakeMaster":
        loop = asyncio.get_running_loop()
        self.accounts = AccountManager(
            self.config, self._registry(), self.store, self.log, loop.time()
        )
        accounts = self.accounts
        self.store.start(lambda outcomes: loop.call_soon(accounts.on_outcomes, outcomes))
        self.supervisor = Supervisor(self.config, self.launcher, accounts, self.log)
        self._task = asyncio.create_task(self.supervisor.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        if not self._task.done():
            self.sup.post(_sigterm())
        await asyncio.wait_for(self._task, 5)

    def _registry(self) -> list[AccountRecord]:
        return [
            AccountRecord(a.id, a.platform, a.options, a.enabled, "config", n, n, a.max_memory_mb)
            for n, a in enumerate(self.config.accounts)
        ]

    @property
    def sup(self) -> Supervisor:
        assert self.supervisor is not None
        return self.supervisor

    @property
    def manager(self) -> AccountManager:
        assert self.accounts is not None
        return self.accounts

    async def until(self, predicate: Callable[[], Any], timeout: float = 2.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.001)


def _sigterm() -> Event:
    from hiscrm.master.supervision.events import SignalReceived

    return SignalReceived(signal.SIGTERM)
