"""The lease keeper: a master's part in a cluster of masters sharing one PostgreSQL
store. A task on the master's loop, with a connection of its own, that every
``lease_renew_s``:

1. renews this node's leases (an account whose lease is gone, taken by another node,
   is stopped at once), and lets go of those whose workers have let them go;
2. follows the registry of accounts (added, changed or removed through any master);
3. decides with ``lease_plan.plan`` how many free accounts to claim and how many to
   hand back (a few at a time), claims them (``FOR UPDATE SKIP LOCKED``) and places
   them on its workers, or stops those it hands back (released once stopped: an account
   never runs on two masters);
4. reports the state of each account it holds, for the other masters to show.

Spools left with changes never acknowledged (``spool_head``: this master was killed or
cut off while its workers held them, and another master took the accounts on) are
looked for when it joins (at its start, and again after it was cut off). Until it holds
those accounts again it wants them (``pg_leases.want``): it claims them first, beyond
its fair share if need be (up to its capacity, ``rebalance_step`` a round), and the
master holding one hands it over at its next round; its workers then replay what the
store lacks. It does this once per join; an account taken back for its spool is not
handed back to even out before its spool's head says the store has everything
(afterwards the fair shares even out as usual).

If the store cannot be reached, every account is stopped before any lease can expire:
a lease is acted on only until ``valid_until`` (its last renewal *sent* + ttl - margin),
by this process's clock; expiry itself is the database's clock. The writer's fence
(``lease_fence``) refuses any write of an account whose lease this node no longer
holds, in the write's own transaction; the refusal stops the account here too.

A graceful stop (after every worker stopped) lets every lease go at once.
"""

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from structlog.typing import FilteringBoundLogger

from hiscrm import spool_head
from hiscrm.config import Config
from hiscrm.master.data import lease_plan, pg_leases, pg_schema
from hiscrm.master.data.account_registry import usable_specs
from hiscrm.master.data.accounts import AccountManager
from hiscrm.master.data.lease_fence import Fence
from hiscrm.master.data.lease_plan import NodeView
from hiscrm.master.data.lease_view import ClusterView, LeaseStats
from hiscrm.master.data.pg_leases import AConn
from hiscrm.master.data.pg_writer import APPLICATION_NAME, CONNECT_TIMEOUT_S
from hiscrm.master.data.store import AccountRecord, StoreError

LEAVE_TIMEOUT_S = 10.0


class LeaseKeeper:
    def __init__(
        self,
        config: Config,
        url: str,
        manager: AccountManager,
        fence: Fence,
        log: FilteringBoundLogger,
        count_error: Callable[[], int],
        shutting_down: Callable[[], bool],
    ) -> None:
        cluster = config.cluster
        self.node_id = cluster.node_id
        self.capacity = config.node_capacity
        self.ttl_s = cluster.lease_ttl_s
        self.renew_s = cluster.lease_renew_s
        self.step = cluster.rebalance_step
        self.margin_s = cluster.lease_renew_s  # time to stop the accounts before expiry
        self.api_url: str | None = None  # set once the API listens
        self._url = url
        self._manager = manager
        self._fence = fence
        self._log = log.bind(node=self.node_id)
        self._count_error = count_error
        self._told_invalid: set[tuple[str, int]] = set()  # registry rows logged as invalid
        self._shutting_down = shutting_down
        self._conn: AConn | None = None
        self.held: dict[str, int] = {}  # account id -> epoch of the lease this node holds
        self._giving_up: set[str] = set()  # being stopped here, to be let go
        self._stopped: set[str] = set()  # stopped here, to be let go in the store
        self._valid_until: float | None = None
        self._joined = False
        self._spool_root = config.state_dir / "spool"
        self._spooled: set[str] = set()  # accounts whose spools here hold unacked changes
        self._from_spool: set[str] = set()  # held: taken back for their spools
        self._wake = asyncio.Event()
        self._failures_before = 0  # renewal failures before this episode of them
        # Awaited before a round until it succeeds once: what the master could not do at
        # its start because the store was out of reach (declare its accounts, …).
        self.when_reached: Callable[[], Awaitable[None]] | None = None
        self.stats = LeaseStats(self.node_id, self.capacity, self.ttl_s, self.renew_s)

    # --- running -------------------------------------------------------------------------

    async def run(self) -> None:
        """Rounds until cancelled; a failed round is logged and counted, never fatal."""
        loop = asyncio.get_running_loop()

        def refused(account_id: str, why: str) -> None:  # in the writer's thread
            loop.call_soon_threadsafe(self._refused, account_id, why)

        self._fence.on_refused = refused
        while True:
            try:
                async with asyncio.timeout(self.renew_s * 2):
                    await self._round()
            except (psycopg.Error, StoreError, TimeoutError, OSError) as exc:
                await self._round_failed(exc)
            self._check_validity()
            wake_at = loop.time() + self.renew_s
            if self._valid_until is not None and self.held:
                wake_at = min(wake_at, self._valid_until)
            try:
                async with asyncio.timeout_at(wake_at):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    def poke(self) -> None:
        """Do a round now (an account was let go, the registry changed)."""
        self._wake.set()

    async def stop(self) -> None:
        """After every worker stopped: let every lease go and leave the cluster."""
        self._fence.set({})
        held, self.held = self.held, {}
        try:
            async with asyncio.timeout(LEAVE_TIMEOUT_S):
                await self._disconnect()  # the last round may have been cut short
                conn = await self._connection()
                released = await pg_leases.leave(conn, self.node_id)
            self._log.info("left the cluster; leases let go", leases=released, held=len(held))
        except (psycopg.Error, TimeoutError, OSError) as exc:
            self._count_error()
            self._log.error(
                "cannot let the leases go; the other masters take them when they expire",
                leases=len(held),
                lease_ttl_s=self.ttl_s,
                exc_info=exc,
            )
        finally:
            await self._disconnect()

    # --- one round -----------------------------------------------------------------------

    async def _connection(self) -> AConn:
        if self._conn is not None and not (self._conn.closed or self._conn.broken):
            return self._conn
        if self._conn is not None:
            await self._conn.close()
        self._conn = None
        given = psycopg.conninfo.conninfo_to_dict(self._url)
        options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT_S,
            "application_name": APPLICATION_NAME,
        }
        self._conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, **{k: v for k, v in options.items() if k not in given}
        )
        self._joined = False
        return self._conn

    async def _round(self) -> None:
        loop = asyncio.get_running_loop()
        conn = await self._connection()
        if self.when_reached is not None:
            await self.when_reached()
            self.when_reached = None
            self._log.info("the store was reached: the start is completed")
        if not self._joined:
            await pg_leases.join(
                conn, self.node_id, self.capacity, self.ttl_s, self.api_url, os.getpid()
            )
            self._joined = True
            self._log.info("joined the cluster", capacity=self.capacity, lease_ttl_s=self.ttl_s)
            self._look_for_spools()
        leaving = self._shutting_down()
        if self._stopped:
            let_go = {a: self.held[a] for a in self._stopped if a in self.held}
            released = await pg_leases.release(conn, self.node_id, let_go)
            for account_id in let_go:
                self.held.pop(account_id, None)
                self._from_spool.discard(account_id)
            self._stopped -= set(let_go)
            self.stats.handed_back += len(released)
            self._log.info("leases handed back", accounts=sorted(let_go))
        sent_at = loop.time()
        kept = await pg_leases.renew(conn, self.node_id, dict(self.held), self.ttl_s, leaving)
        self._valid_until = lease_plan.valid_until(sent_at, self.ttl_s, self.margin_s)
        self.stats.renewals += 1
        self.stats.last_renewal_at = int(time.time() * 1000)
        failed = self.stats.renewal_failures - self._failures_before
        if failed:
            self._log.warning("leases renewed again", failed_rounds=failed)
            self._failures_before = self.stats.renewal_failures
        self.stats.last_error = None
        self.stats.failing_since = None
        self.stats.stopped_cut_off = 0
        gone = [a for a in self.held if a not in kept]
        if gone:
            self._drop(gone, "its lease is gone: another master took it")
        await self._follow_registry(conn)
        view = await self._read_view(conn)
        claimed = self.stats.claimed
        if not leaving:
            await self._take_back_spooled(conn)
            await self._hand_over_wanted(conn)
            await self._rebalance(conn, view)
        if self.stats.claimed != claimed:  # what GET /cluster shows has this round's claims
            await self._read_view(conn)
        await pg_leases.report_states(conn, self.node_id, self._states())
        self.stats.held = len(self.held)

    async def _read_view(self, conn: AConn) -> ClusterView:
        """The nodes, the leases and their owners, as the store has them now."""
        view = await pg_leases.view(conn)
        self.stats.view = view
        self.stats.leases = {row.account_id: row for row in await pg_leases.leases(conn)}
        self._manager.owners = {a: (row.node_id, row.state) for a, row in self.stats.leases.items()}
        return view

    async def _follow_registry(self, conn: AConn) -> None:
        """Accounts added, changed or removed (through any master) since the last round."""
        cursor = await conn.execute(
            f"SELECT {pg_schema.ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, id"
        )
        rows = [AccountRecord(*row) for row in await cursor.fetchall()]
        specs = usable_specs(rows, self._log, self._count_error, self._told_invalid)
        records = [r for r in rows if r.id in specs]  # bad rows: logged once, left out
        manager, now = self._manager, asyncio.get_running_loop().time()
        known = dict(manager.specs)
        for record in records:
            spec = specs[record.id]
            if record.id not in known:
                manager.add(spec, record.source, now)
            elif known[record.id] != spec:
                manager.change(spec, now)
        present = {r.id for r in records}
        for account_id in known:
            if account_id not in present:
                manager.remove(account_id, now)
        disabled = [r.id for r in records if not r.enabled and r.id in self.held]
        removed = [a for a in self.held if a not in present]
        if disabled or removed:  # let go in the store; the manager stopped them
            self._stopped.update(disabled + removed)

    async def _rebalance(self, conn: AConn, view: ClusterView) -> None:
        nodes = [
            NodeView(n.node_id, n.capacity, n.held, alive=n.alive, leaving=n.leaving)
            for n in view.nodes
            if n.node_id != self.node_id
        ]
        nodes.append(NodeView(self.node_id, self.capacity, len(self.held)))
        moves = lease_plan.plan(self.node_id, view.enabled, view.free, nodes, self.step)
        if moves.claim:
            gained = await pg_leases.claim(conn, self.node_id, moves.claim, self.ttl_s)
            if gained:
                self.held.update(gained)
                self._fence.set(self.held)
                self.stats.claimed += len(gained)
                self._log.info("leases claimed", accounts=sorted(gained), held=len(self.held))
                self._manager.lease_gained(sorted(gained), asyncio.get_running_loop().time())
        replaying = self._replaying()
        releasable = [
            a for a in sorted(self.held, reverse=True) if a not in self._giving_up | replaying
        ]
        hand_back = releasable[: moves.release - len(self._giving_up)]
        if hand_back:
            self._log.info("handing leases back to even out the cluster", accounts=hand_back)
            self._give_up(hand_back, "handed back to even out the cluster")

    # --- spools holding what the store may lack ------------------------------------------

    def _look_for_spools(self) -> None:
        found = set(spool_head.pending_accounts(self._spool_root)) - set(self.held)
        self._spooled = found
        if found:
            self._log.info(
                "spools here hold changes never acknowledged; claiming their accounts first",
                accounts=sorted(found),
            )

    async def _take_back_spooled(self, conn: AConn) -> None:
        """Claim the free accounts this node's spools hold changes of; mark the others
        wanted, for their holders to hand them over."""
        self._spooled &= set(self._manager.specs)  # an account removed meanwhile: never
        self._spooled -= set(self.held)
        if not self._spooled:
            return
        room = min(self.step, self.capacity - len(self.held))
        gained = await pg_leases.claim(
            conn, self.node_id, room, self.ttl_s, only=sorted(self._spooled)
        )
        if gained:
            self.held.update(gained)
            self._fence.set(self.held)
            self.stats.claimed += len(gained)
            self._spooled -= set(gained)
            self._from_spool |= set(gained)
            self._log.info(
                "leases claimed for changes only this host's spools have",
                accounts=sorted(gained),
                held=len(self.held),
            )
            self._manager.lease_gained(sorted(gained), asyncio.get_running_loop().time())
        await pg_leases.want(conn, self.node_id, sorted(self._spooled))

    def _replaying(self) -> set[str]:
        """The accounts taken back for their spools whose spools still hold changes never
        acknowledged: not handed back to even out before the store has them."""
        for account_id in list(self._from_spool):
            head = spool_head.read(self._spool_root / account_id)
            if head is None or not head.pending:
                self._from_spool.discard(account_id)
        return set(self._from_spool)

    async def _hand_over_wanted(self, conn: AConn) -> None:
        """Hand over the accounts another live node wants for its spools (a few a round)."""
        wanted = await pg_leases.wanted_from(conn, self.node_id)
        hand_over = [a for a in wanted if a in self.held and a not in self._giving_up]
        hand_over = hand_over[: self.step]
        if hand_over:
            self._log.info(
                "handing leases over to masters whose spools hold their changes",
                accounts={a: wanted[a] for a in hand_over},
            )
            self._give_up(hand_over, "handed over: another master's spool holds its changes")

    def _states(self) -> dict[str, tuple[str, int]]:
        status = self._manager.status
        return {
            a: (str(status[a].state), status[a].state_since_at) for a in self.held if a in status
        }

    # --- losing leases -------------------------------------------------------------------

    def _give_up(self, account_ids: list[str], why: str) -> None:
        """Stop these accounts here, then let their leases go (still renewed meanwhile)."""
        self._giving_up.update(account_ids)
        stopped = self._manager.lease_lost(account_ids, asyncio.get_running_loop().time(), why)

        def done(_: "asyncio.Future[None]") -> None:
            self._giving_up.difference_update(account_ids)
            self._stopped.update(a for a in account_ids if a in self.held)
            self.poke()

        stopped.add_done_callback(done)

    def _drop(self, account_ids: list[str], why: str) -> None:
        """This node may no longer act on these leases: stop the accounts at once."""
        for account_id in account_ids:
            self.held.pop(account_id, None)
            self._from_spool.discard(account_id)
        self._giving_up.difference_update(account_ids)
        self._stopped.difference_update(account_ids)
        self._fence.set(self.held)
        self.stats.lost += len(account_ids)
        self.stats.held = len(self.held)
        self._count_error()
        self._log.error("leases lost; stopping the accounts", accounts=sorted(account_ids), why=why)
        self._manager.lease_lost(account_ids, asyncio.get_running_loop().time(), why)

    def _refused(self, account_id: str, why: str) -> None:
        """The writer refused a write of the account (stale epoch): on the loop."""
        if account_id in self.held:
            self._drop([account_id], f"a write was refused: {why}")
            self.poke()

    async def _round_failed(self, exc: BaseException) -> None:
        self.stats.renewal_failures += 1
        if self.stats.failing_since is None:
            self.stats.failing_since = int(time.time() * 1000)
        self.stats.last_error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]
        self._count_error()
        left = None
        if self._valid_until is not None:
            left = round(self._valid_until - asyncio.get_running_loop().time(), 3)
        if self.stats.renewal_failures - self._failures_before == 1:  # once per episode
            self._log.error(
                "cannot renew the leases", held=len(self.held), valid_for_s=left, exc_info=exc
            )
        await self._disconnect()  # in an unknown state (a statement timed out): not reused

    async def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            await conn.close()

    def _check_validity(self) -> None:
        now = asyncio.get_running_loop().time()
        if self.held and self._valid_until is not None and now >= self._valid_until:
            self.stats.stopped_cut_off += len(self.held)
            self._drop(
                list(self.held),
                f"leases not renewed for {self.ttl_s - self.margin_s:.1f} s: "
                "stopping before they can expire",
            )
