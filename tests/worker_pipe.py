"""A real worker process with the test as its master: the worker is spawned as the master
spawns it (``hiscrm.worker.bootstrap:main`` over a ``multiprocessing`` pipe), and the test
speaks the protocol to it directly, so worker behaviour is tested without a master in
between. Syncs are acknowledged at once and their items kept; every message is kept.

The worker carries a marker in its environment, as a master's workers do: whatever is left
of it afterwards is killed and counted as a failure.
"""

import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any, TypeVar

from harness import MARKER, TESTS_DIR, kill_leftovers, marked_processes

from hiscrm.entrypoint import Entrypoint
from hiscrm.models import AccountSpec
from hiscrm.protocol import (
    PROTOCOL_VERSION,
    AnyMessage,
    Encoder,
    MasterAccountAssign,
    MasterAccountDigest,
    MasterDataAck,
    MasterShutdown,
    MasterWelcome,
    WorkerAccountState,
    WorkerBoot,
    WorkerDataSync,
    WorkerGoodbye,
    WorkerRegister,
    decode,
    schema_hash,
)

M = TypeVar("M", bound=AnyMessage)
DEFAULT_WAIT_S = 10.0


class PipeMaster:
    def __init__(self, directory: Path, platforms: list[str], stop_timeout_s: float = 2.0) -> None:
        self.directory = directory
        self.marker = uuid.uuid4().hex
        self.boot = WorkerBoot(
            worker_id="w1",
            master_pid=os.getpid(),
            log_path=str(directory / "w1.log"),
            log_max_bytes=50 * 1024 * 1024,
            log_backups=1,
            heartbeat_interval_s=0.05,
            stop_timeout_s=stop_timeout_s,
            backoff_initial_s=0.05,
            backoff_max_s=0.2,
            backoff_reset_after_s=30.0,
            platforms=platforms,
            plugin_paths=[str(TESTS_DIR)],
            spool_dir=str(directory / "spool"),
            idle_sync_s=0.2,
            ack_timeout_s=5.0,
        )
        self._encoder = Encoder()
        self.received: list[AnyMessage] = []
        self.items: dict[tuple[str, str, str], dict[str, Any]] = {}  # (account, kind, id)
        self.register: WorkerRegister | None = None
        context = multiprocessing.get_context("spawn")
        self._conn, child_end = context.Pipe(duplex=True)
        self.process = context.Process(
            target=Entrypoint("hiscrm.worker.bootstrap:main"),
            args=(self.boot.model_dump_json(), child_end),
            name="hiscrm-w1",
        )
        resource_tracker.ensure_running()  # this process's own helper: without the marker
        os.environ[MARKER] = self.marker  # inherited by the spawned worker only
        try:
            self.process.start()
        finally:
            del os.environ[MARKER]
            child_end.close()

    # --- talking -------------------------------------------------------------------------

    def say(self, message: AnyMessage) -> None:
        self._conn.send_bytes(self._encoder.encode(message))

    def _take(self, timeout: float) -> AnyMessage | None:
        if not self._conn.poll(timeout):
            return None
        message = decode(self._conn.recv_bytes()).body
        self.received.append(message)
        if isinstance(message, WorkerDataSync):
            for change in message.changes:
                item = change.item.model_dump()
                self.items[(message.account_id, item["kind"], item["id"])] = item
            self.say(MasterDataAck(account_id=message.account_id, seq=message.last_seq))
        return message

    def wait_for(
        self,
        kind: type[M],
        predicate: Callable[[M], bool] = lambda m: True,
        timeout: float = DEFAULT_WAIT_S,
        what: str = "",
    ) -> M:
        """The next message of ``kind`` that satisfies ``predicate`` (those before it are
        kept in ``received``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self._take(left)
            except EOFError:
                break
            if isinstance(message, kind) and predicate(message):
                return message
        raise AssertionError(
            f"no {kind.__name__} {what} within {timeout}s; worker log ends:\n{self.log_tail()}"
        )

    def seen_or_wait(
        self,
        kind: type[M],
        predicate: Callable[[M], bool] = lambda m: True,
        timeout: float = DEFAULT_WAIT_S,
        what: str = "",
    ) -> M:
        """The first message of ``kind`` satisfying ``predicate``, received already or next."""
        for message in self.received:
            if isinstance(message, kind) and predicate(message):
                return message
        return self.wait_for(kind, predicate, timeout, what)

    def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Read messages until ``condition()`` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout}s: {what}; log:\n{self.log_tail()}")
            self._take(0.02)

    def log_tail(self, chars: int = 3000) -> str:
        path = Path(self.boot.log_path)
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    # --- what a master does --------------------------------------------------------------

    def welcome(self) -> None:
        self.register = self.wait_for(WorkerRegister, what="registration")
        self.say(MasterWelcome(protocol=PROTOCOL_VERSION, schema_hash=schema_hash(), master_pid=0))

    def assign(
        self,
        account_id: str,
        platform: str,
        options: dict[str, Any] | None = None,
        digest: list[tuple[str, str, int, str]] | None = None,
        wait_state: str | None = "running",
    ) -> None:
        account = AccountSpec(id=account_id, platform=platform, options=options or {})
        entries = digest or []
        self.say(MasterAccountAssign(account=account, acked_seq=0, digest_total=len(entries)))
        if entries:
            self.say(MasterAccountDigest(account_id=account_id, entries=entries))
        if wait_state is not None:
            self.wait_for(
                WorkerAccountState,
                lambda m: m.account_id == account_id and m.state == wait_state,
                what=f"{account_id} {wait_state}",
            )

    def of_type(self, kind: type[M]) -> list[M]:
        return [m for m in self.received if isinstance(m, kind)]

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the worker down as the master does, and wait for it to exit."""
        if self.process.is_alive():
            self.say(MasterShutdown(reason="test over", timeout_s=self.boot.stop_timeout_s))
            try:
                self.wait_for(WorkerGoodbye, timeout=timeout, what="goodbye")
            finally:
                self.process.join(timeout)

    def close(self) -> list[str]:
        """Make sure the worker and everything it started are gone; what had to be killed."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self._conn.close()
        deadline = time.monotonic() + 5
        while any(True for _ in marked_processes(self.marker)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return kill_leftovers(self.marker)


@contextmanager
def pipe_master(directory: Path, platforms: list[str], **kwargs: Any) -> Iterator[PipeMaster]:
    """A welcomed worker; afterwards it is stopped, and nothing of it may be left."""
    master = PipeMaster(directory, platforms, **kwargs)
    try:
        master.welcome()
        yield master
        master.stop()
    finally:
        leftovers = master.close()
    assert not leftovers, f"processes left behind: {leftovers}"
