"""A master's end of the commands routed through the store (``pg_commands``): it sends an
action on an account another master holds and waits for the answer, and it carries out
those sent to the accounts it holds, once each.

On the master's loop, with a connection of its own. The store's listener thread hands
every notification of ``hiscrm_commands`` over (``heard``), and says when it listens
again after a break (``connected``: pending commands of the accounts held here, missed
meanwhile, are looked up and carried out).

What a command does is given by whoever wires the master (``executors``: kind → an async
function of the account and the command's arguments, returning its result); an executor
that refuses (the account has no worker right now) raises ``Refused``, which becomes the
command's error, told to the requester as a 409.
"""

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
from structlog.typing import FilteringBoundLogger

from hiscrm.master.data import pg_commands
from hiscrm.master.data.pg_commands import AConn, Command
from hiscrm.master.data.pg_writer import APPLICATION_NAME, CONNECT_TIMEOUT_S
from hiscrm.master.data.routed import Executor, Refused, RoutingFailed

ANSWER_TIMEOUT_S = 10.0  # a command nobody takes in this time is expired (504)
RUN_TIMEOUT_S = 30.0  # one taken waits this much longer for its outcome
POLL_S = 1.0  # the outcome is read again this often (a notification may be missed)


class CommandRouter:
    def __init__(
        self,
        url: str,
        node_id: str,
        holds: Callable[[str], bool],
        owner_of: Callable[[str], str | None],
        log: FilteringBoundLogger,
        count_error: Callable[[], int],
    ) -> None:
        self.node_id = node_id
        self.holds = holds  # this master holds the account's lease now
        self._owner_of = owner_of  # the account's lease holder as last seen
        self._url = url
        self._log = log.bind(node=node_id)
        self._count_error = count_error
        self.executors: dict[str, Executor] = {}
        self.on_outbox: Callable[[str], None] = lambda account_id: None  # a reply was stored
        self.on_accounts: Callable[[], None] = lambda: None  # the registry changed
        self._conn: AConn | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the connection
        self._waiting: dict[int, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = self.carried_out = self.failed = 0

    # --- from the store's listener thread ---------------------------------------------

    def listen_with(
        self, loop: asyncio.AbstractEventLoop
    ) -> tuple[Callable[[str], None], Callable[[], None]]:
        """The callbacks for the listener's thread: each hands over to the loop."""

        def heard(payload: str) -> None:
            loop.call_soon_threadsafe(self.heard, payload)

        def connected() -> None:
            loop.call_soon_threadsafe(self.connected)

        return heard, connected

    def heard(self, payload: str) -> None:
        what, _, rest = payload.partition(":")
        if what == "cmd" and rest.isdigit():
            self._spawn(self._carry_out(int(rest)))
        elif what == "done" and rest.isdigit():
            event = self._waiting.get(int(rest))
            if event is not None:
                event.set()
        elif what == "outbox" and "/" in rest:
            by, _, account_id = rest.partition("/")
            # Stored through this master: its API gave it to the outbox already (taking
            # it in again could read a state older than the outbox's own, and act on it).
            if by != self.node_id and self.holds(account_id):
                self.on_outbox(account_id)
        elif what == "accounts":
            self.on_accounts()
        else:
            self._count_error()
            self._log.error("a routed command's notification not understood", payload=payload)

    def connected(self) -> None:
        self._spawn(self._sweep())

    # --- sending -------------------------------------------------------------------------

    def owner_of(self, account_id: str) -> str | None:
        """The account's lease holder as last seen (None: nobody holds it)."""
        return self._owner_of(account_id)

    async def request(self, account_id: str, kind: str, args: dict[str, Any]) -> tuple[str, Any]:
        """Have the account's lease holder carry the command out: (its node, the result).
        RoutingFailed says why not."""
        owner = self._owner_of(account_id)
        if owner is None:
            raise RoutingFailed(409, f"account {account_id!r} is held by no master right now")
        try:
            command_id = await self._run(
                lambda conn: pg_commands.submit(conn, account_id, kind, args, self.node_id)
            )
        except (psycopg.Error, OSError) as exc:
            raise RoutingFailed(503, f"cannot route the command through the store: {exc}") from exc
        self.sent += 1
        self._log.info(
            "command routed to the account's master",
            account_id=account_id,
            kind=kind,
            command_id=command_id,
            owner=owner,
        )
        event = self._waiting[command_id] = asyncio.Event()
        try:
            return await self._answer(command_id, account_id, event)
        finally:
            del self._waiting[command_id]

    async def _answer(
        self, command_id: int, account_id: str, event: asyncio.Event
    ) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        expire_at = loop.time() + ANSWER_TIMEOUT_S
        give_up_at = expire_at + RUN_TIMEOUT_S
        while True:
            try:
                async with asyncio.timeout(POLL_S):
                    await event.wait()
            except TimeoutError:
                pass
            event.clear()
            try:
                found = await self._run(lambda conn: pg_commands.outcome(conn, command_id))
                if found.state == "pending" and loop.time() >= expire_at:
                    if await self._run(lambda conn: pg_commands.expire(conn, command_id)):
                        raise RoutingFailed(
                            504,
                            f"no master took the command on {account_id!r} within "
                            f"{ANSWER_TIMEOUT_S:.0f} s (its owner may have just changed)",
                        )
                    continue  # taken meanwhile
            except (psycopg.Error, OSError) as exc:
                self._count_error()
                self._log.error("cannot read a routed command's outcome", exc_info=exc)
                found = pg_commands.Outcome("pending", None, None, None)
            if found.state == "done":
                return found.node or "?", found.result
            if found.state in ("failed", "expired"):
                raise RoutingFailed(409, f"{found.node or 'no master'}: {found.error}")
            if loop.time() >= give_up_at:
                raise RoutingFailed(
                    504, f"{found.node} took the command on {account_id!r} but did not answer"
                )

    # --- carrying out --------------------------------------------------------------------

    async def _sweep(self) -> None:
        try:
            ids = await self._run(lambda conn: pg_commands.pending_here(conn, self.node_id))
        except (psycopg.Error, OSError) as exc:
            self._count_error()
            self._log.error("cannot look for routed commands missed", exc_info=exc)
            return
        for command_id in ids:
            await self._carry_out(command_id)

    async def _carry_out(self, command_id: int) -> None:
        try:
            command = await self._run(lambda conn: pg_commands.take(conn, command_id, self.node_id))
        except (psycopg.Error, OSError) as exc:
            self._count_error()
            self._log.error("cannot take a routed command", command_id=command_id, exc_info=exc)
            return
        if command is None:
            return  # not for this master, or taken already
        result, error = await self._execute(command)
        try:
            await self._run(lambda conn: pg_commands.finish(conn, command.id, result, error))
        except (psycopg.Error, OSError) as exc:
            self._count_error()
            self._log.error(
                "a routed command was carried out but its outcome not stored",
                command_id=command.id,
                exc_info=exc,
            )

    async def _execute(self, command: Command) -> tuple[dict[str, Any] | None, str | None]:
        executor = self.executors.get(command.kind)
        log = self._log.bind(
            account_id=command.account_id, kind=command.kind, command_id=command.id
        )
        if executor is None:
            self._count_error()
            log.error("a routed command of an unknown kind")
            return None, f"unknown command {command.kind!r}"
        try:
            result = await executor(command.account_id, command.args)
        except Refused as exc:
            self.failed += 1
            log.warning("routed command refused", why=str(exc))
            return None, str(exc)
        except Exception as exc:  # a bug, or the store: told to the requester as well
            self.failed += 1
            self._count_error()
            log.error("routed command failed", exc_info=exc)
            return None, f"{type(exc).__name__}: {exc}"
        self.carried_out += 1
        log.info("routed command carried out")
        return result, None

    # --- the connection ------------------------------------------------------------------

    async def _run(self, step: Callable[[AConn], Coroutine[Any, Any, Any]]) -> Any:
        async with self._lock:
            conn = await self._connection()
            try:
                return await step(conn)
            except (psycopg.OperationalError, OSError):
                await conn.close()
                self._conn = None
                raise

    async def _connection(self) -> AConn:
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        given = psycopg.conninfo.conninfo_to_dict(self._url)
        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": f"{APPLICATION_NAME}-commands",
        }
        self._conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, **{k: v for k, v in options.items() if k not in given}
        )
        return self._conn

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.close()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: "asyncio.Task[None]") -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._count_error()
            self._log.error("routed commands: a task failed", exc_info=exc)
