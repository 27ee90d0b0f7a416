"""Prometheus metrics of the master, read from the read model at every scrape.

Counters and gauges are not kept twice: a collector builds them from the same views that
status and the API serve, so they can never drift from what status reports. Only the
commit-latency histogram records observations as they happen.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hiscrm.event_names import EVENT_NAMES, ITEM_PREFIX
from hiscrm.log_config import log_lines_suppressed_total
from hiscrm.master.api.cluster_info import node_state
from hiscrm.master.api.sessions import CookieRefusal, Sessions
from hiscrm.master.data.account_status import AccountState
from hiscrm.master.data.lease_view import LeaseStats
from hiscrm.master.data.outbox import Outbox
from hiscrm.master.data.store import Store, SyncFailure
from hiscrm.master.events.hooks import Hooks
from hiscrm.master.events.hub import CutOff, EventHub
from hiscrm.master.supervision.exit_record import EXIT_REASONS

if TYPE_CHECKING:  # the API's server, log followers and views: imported once workers run
    from hiscrm.master.api.connections import ConnectionLimits
    from hiscrm.master.api.log_follow import LogFollowers
    from hiscrm.master.api.read_model import ReadModel
    from hiscrm.master.api.schemas import Health, WorkerInfo
from hiscrm.protocol import ProtocolErrorKind

ACCOUNT_STATES = tuple(s.value for s in AccountState)
HEALTH_STATUSES = ("ok", "degraded", "failing")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MasterMetrics:
    def __init__(self, node: str | None = None) -> None:
        """``node``: in a cluster, every sample carries ``node="<node_id>"``."""
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self.commit_latency = Histogram(
            "hiscrm_sync_commit_latency_seconds",
            "From a worker:data:sync reaching the master to its commit in the store",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def attach(self, read: ReadModel) -> None:
        self.registry.register(_LiveState(read))

    def attach_front_door(self, limits: ConnectionLimits, followers: LogFollowers) -> None:
        self.registry.register(_FrontDoor(limits, followers))

    def attach_events(self, hub: EventHub, hooks: Hooks, store: Store, outbox: Outbox) -> None:
        self.registry.register(_Events(hub, hooks, store, outbox))

    def attach_sessions(self, sessions: Sessions) -> None:
        self.registry.register(_Sessions(sessions))

    def attach_cluster(self, stats: LeaseStats) -> None:
        self.registry.register(_Cluster(stats))

    def exposition(self) -> bytes:
        if self.node is None:
            return generate_latest(self.registry)
        return generate_latest(_NodeLabelled(self.registry, self.node))


class _NodeLabelled:
    """The registry's metrics, each sample labelled with this master's node."""

    def __init__(self, registry: CollectorRegistry, node: str) -> None:
        self._registry = registry
        self._node = node

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            metric.samples = [
                s._replace(labels={**s.labels, "node": self._node}) for s in metric.samples
            ]
            yield metric


class _Cluster(Collector):
    """This master's leases in the cluster (PostgreSQL store)."""

    def __init__(self, stats: LeaseStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        yield GaugeMetricFamily(
            "hiscrm_cluster_leases_held", "Account leases this master holds", value=stats.held
        )
        yield GaugeMetricFamily(
            "hiscrm_cluster_capacity", "Accounts this master leases at most", value=stats.capacity
        )
        for name, help_text, value in (
            ("renewals", "Lease renewals done", stats.renewals),
            (
                "renewal_failures",
                "Lease rounds that failed (store unreachable)",
                stats.renewal_failures,
            ),
            ("leases_claimed", "Leases claimed", stats.claimed),
            ("leases_handed_back", "Leases let go to even out the cluster", stats.handed_back),
            (
                "leases_lost",
                "Leases lost (taken, refused by the fence, not renewed in time)",
                stats.lost,
            ),
        ):
            yield CounterMetricFamily(f"hiscrm_cluster_{name}_total", help_text, value=value)
        nodes = GaugeMetricFamily(
            "hiscrm_cluster_nodes", "Masters of the cluster by state", labels=["state"]
        )
        view = stats.view
        counts = Counter(node_state(n) for n in (view.nodes if view is not None else []))
        for state in ("ok", "lagging", "lost", "leaving"):
            nodes.add_metric([state], counts[state])
        yield nodes


class _LiveState(Collector):
    def __init__(self, read: ReadModel) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from self._workers()
        yield from self._accounts()
        yield from _health(self._read.health())
        master = self._read.master_figures()
        yield CounterMetricFamily(
            "hiscrm_master_internal_errors_total",
            "Errors inside the master itself (bugs), logged with their traceback",
            value=master.internal_errors,
        )
        store = self._read.store_stats()
        for name, value, text in (
            ("hiscrm_store_commits_total", store.commits, "Transactions committed to the store"),
            ("hiscrm_store_items_written_total", store.items_written, "Changed items written"),
            ("hiscrm_store_errors_total", store.errors, "Failed commits and store thread errors"),
        ):
            yield CounterMetricFamily(name, text, value=value)
        yield GaugeMetricFamily(
            "hiscrm_store_up", "1 while the store's writer runs", value=1.0 if store.alive else 0.0
        )
        starts = CounterMetricFamily(
            "hiscrm_worker_starts_total",
            "Worker processes started: from the template's spare, forked on request, "
            "or spawned (no template ready, or none configured)",
            labels=["how"],
        )
        for how, n in master.starts.items():
            starts.add_metric([how], n)
        yield starts
        template = master.template
        if template is not None:
            yield CounterMetricFamily(
                "hiscrm_fork_templates_started_total",
                "Fork templates started (at start-up, after a code change, after a death)",
                value=template.started,
            )
            yield GaugeMetricFamily(
                "hiscrm_fork_template_spare_ready",
                "1 while the template has a worker forked ahead, waiting to be started",
                value=1.0 if template.spare_ready else 0.0,
            )
            yield CounterMetricFamily(
                "hiscrm_fork_template_failures_total",
                "Fork template failures: code it could not import (a platform raising at "
                "import), deaths, spares or forks lost",
                value=template.failures,
            )
        yield CounterMetricFamily(
            "hiscrm_memory_watch_passes_total",
            "Passes that measured every running worker's process tree (memory limit)",
            value=master.memory_watch_passes,
        )
        yield CounterMetricFamily(
            "hiscrm_memory_watch_cpu_seconds_total",
            "CPU time the master spent measuring workers' process trees (in its thread)",
            value=master.memory_watch_cpu_s,
        )
        yield GaugeMetricFamily(
            "hiscrm_master_stale_code",
            "1 if the master's own code changed on disk (only a master restart loads it)",
            value=1.0 if master.stale_code else 0.0,
        )

    def _workers(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "hiscrm_worker_up", "1 if the worker is registered and running", labels=["worker"]
        )
        state = GaugeMetricFamily(
            "hiscrm_worker_state", "1 for the state the worker is in", labels=["worker", "state"]
        )
        restarts = CounterMetricFamily(
            "hiscrm_worker_restarts_total",
            "Restarts of a worker slot, by the reason of the exit before",
            labels=["worker", "reason"],
        )
        errors = CounterMetricFamily(
            "hiscrm_worker_errors_total", "worker:error reports received", labels=["worker"]
        )
        protocol = CounterMetricFamily(
            "hiscrm_protocol_errors_total",
            "Frames from a worker that could not be used, by kind",
            labels=["worker", "kind"],
        )
        sync_bytes = CounterMetricFamily(
            "hiscrm_worker_sync_bytes_total",
            "Bytes of syncs the worker's process sent",
            labels=["worker"],
        )
        resends = CounterMetricFamily(
            "hiscrm_worker_sync_resends_total",
            "Times the worker's process sent unacknowledged changes again",
            labels=["worker"],
        )
        stale = GaugeMetricFamily(
            "hiscrm_worker_stale_code",
            "1 if files the worker imported changed on disk since (reload to run them)",
            labels=["worker"],
        )
        code = GaugeMetricFamily(
            "hiscrm_worker_code_info",
            "The code version a worker runs",
            labels=["worker", "version"],
        )
        heartbeat = GaugeMetricFamily(
            "hiscrm_worker_heartbeat_age_seconds",
            "Time since the last heartbeat",
            labels=["worker"],
        )
        rss = GaugeMetricFamily(
            "hiscrm_worker_rss_bytes", "Resident memory of the worker process", labels=["worker"]
        )
        cpu = CounterMetricFamily(
            "hiscrm_worker_cpu_seconds_total",
            "CPU time of the current worker process",
            labels=["worker"],
        )
        memory = _TreeMemoryMetrics()
        for worker in self._read.workers():
            wid = worker.id
            up.add_metric([wid], 1.0 if worker.state == "running" else 0.0)
            state.add_metric([wid, worker.state], 1.0)
            for reason in (*EXIT_REASONS, *(set(worker.restarts_by_reason) - set(EXIT_REASONS))):
                restarts.add_metric([wid, reason], worker.restarts_by_reason.get(reason, 0))
            errors.add_metric([wid], worker.errors_total)
            for kind in ProtocolErrorKind:
                protocol.add_metric([wid, kind.value], worker.protocol_errors_by_kind.get(kind, 0))
            if worker.heartbeat_age_s is not None:
                heartbeat.add_metric([wid], worker.heartbeat_age_s)
            if worker.rss_bytes is not None:
                rss.add_metric([wid], worker.rss_bytes)
            if worker.cpu_seconds is not None:
                cpu.add_metric([wid], worker.cpu_seconds)
            memory.add(worker)
            if worker.sync:
                sync_bytes.add_metric([wid], worker.sync.get("bytes", 0))
                resends.add_metric([wid], worker.sync.get("resends", 0))
            if worker.code_version is not None:
                stale.add_metric([wid], 1.0 if worker.stale_code else 0.0)
                code.add_metric([wid, worker.code_version], 1.0)
        yield from (up, state, restarts, errors, protocol, heartbeat, rss, cpu, stale, code)
        yield from (sync_bytes, resends)
        yield from memory.families()

    def _accounts(self) -> Iterator[Metric]:
        syncs = CounterMetricFamily(
            "hiscrm_worker_data_sync_total",
            "Syncs committed to the store",
            labels=["worker", "account"],
        )
        items = CounterMetricFamily(
            "hiscrm_sync_items_total", "Changed items committed to the store", labels=["account"]
        )
        errors = CounterMetricFamily(
            "hiscrm_worker_data_sync_errors_total",
            "Syncs not committed, by reason",
            labels=["account", "reason"],
        )
        last = GaugeMetricFamily(
            "hiscrm_worker_data_sync_last_success_timestamp_seconds",
            "When the account's last sync was committed",
            labels=["account"],
        )
        stale = GaugeMetricFamily(
            "hiscrm_account_stale", "1 while the account's sync is stale", labels=["account"]
        )
        assigned = GaugeMetricFamily(
            "hiscrm_account_assigned", "1 if the account has a worker", labels=["account", "worker"]
        )
        state = GaugeMetricFamily(
            "hiscrm_account_state", "1 for the state the account is in", labels=["account", "state"]
        )
        errors_total = CounterMetricFamily(
            "hiscrm_account_errors_total", "Errors the account's task reported", labels=["account"]
        )
        restarts = CounterMetricFamily(
            "hiscrm_account_task_restarts_total",
            "Restarts of the account's task inside its worker (as the worker last reported)",
            labels=["account"],
        )
        quarantined = GaugeMetricFamily(
            "hiscrm_account_quarantined", "1 while the account runs alone", labels=["account"]
        )
        for account in self._read.accounts():
            aid, worker = account.id, account.worker or ""
            assigned.add_metric([aid, worker], 1.0 if account.worker else 0.0)
            for value in ACCOUNT_STATES:
                state.add_metric([aid, value], 1.0 if account.state == value else 0.0)
            errors_total.add_metric([aid], account.errors_total)
            restarts.add_metric([aid], account.task_restarts)
            quarantined.add_metric([aid], 1.0 if account.quarantined else 0.0)
            syncs.add_metric([worker, aid], account.syncs)
            items.add_metric([aid], account.items_synced)
            for failure in SyncFailure:
                errors.add_metric([aid, failure.value], account.sync_errors.get(failure, 0))
            if account.last_sync_at is not None:
                last.add_metric([aid], account.last_sync_at / 1000)
            stale.add_metric([aid], 1.0 if account.stale else 0.0)
        yield from (syncs, items, errors, last, stale, assigned, state, errors_total, restarts)
        yield quarantined


def _health(now: Health) -> Iterator[Metric]:
    """The whole, and each check (which one is not ok, for an alert to name)."""
    health = GaugeMetricFamily(
        "hiscrm_health", "1 for the master's health now (see /healthz)", labels=["status"]
    )
    checks = GaugeMetricFamily(
        "hiscrm_health_check",
        "1 for the status of each check of /healthz now",
        labels=["check", "status"],
    )
    for status in HEALTH_STATUSES:
        health.add_metric([status], 1.0 if status == now.status else 0.0)
        for name, check in now.checks.items():
            checks.add_metric([name, status], 1.0 if status == check.status else 0.0)
    yield from (health, checks)


class _TreeMemoryMetrics:
    """The memory watch's figures per worker (see ``WorkerInfo``)."""

    def __init__(self) -> None:
        labels = ["worker"]
        self.memory = GaugeMetricFamily(
            "hiscrm_worker_tree_memory_bytes",
            "Memory of the worker and its descendants as the memory limit judges it: PSS "
            "(RSS for processes whose PSS cannot be read)",
            labels=labels,
        )
        self.rss = GaugeMetricFamily(
            "hiscrm_worker_tree_rss_bytes",
            "Resident memory of the worker and its descendants, summed",
            labels=labels,
        )
        self.processes = GaugeMetricFamily(
            "hiscrm_worker_tree_processes", "Processes in the worker's tree", labels=labels
        )
        self.limit = GaugeMetricFamily(
            "hiscrm_worker_max_memory_bytes",
            "The worker's memory limit ([supervision] max_memory_mb, or a solo worker's "
            "account's own); absent: none",
            labels=labels,
        )

    def add(self, worker: WorkerInfo) -> None:
        wid = worker.id
        if worker.tree_memory_bytes is not None:
            self.memory.add_metric([wid], worker.tree_memory_bytes)
        if worker.tree_rss_bytes is not None:
            self.rss.add_metric([wid], worker.tree_rss_bytes)
        if worker.tree_processes is not None:
            self.processes.add_metric([wid], worker.tree_processes)
        if worker.max_memory_bytes is not None:
            self.limit.add_metric([wid], worker.max_memory_bytes)

    def families(self) -> Iterator[Metric]:
        yield from (self.memory, self.rss, self.processes, self.limit)


class _FrontDoor(Collector):
    """What the API's connection limits and the log limiter cut, and what is open."""

    def __init__(self, limits: ConnectionLimits, followers: LogFollowers) -> None:
        self._limits = limits
        self._followers = followers

    def collect(self) -> Iterator[Metric]:
        limits, followers = self._limits, self._followers
        yield GaugeMetricFamily(
            "hiscrm_api_connections_open", "HTTP connections open now", value=limits.open
        )
        yield GaugeMetricFamily(
            "hiscrm_api_connections_max",
            "At most this many HTTP connections at once ([api] max_connections, or less "
            "to keep file descriptors for workers, logs and the store)",
            value=limits.max_connections,
        )
        for name, value, text in (
            (
                "hiscrm_api_connections_refused_total",
                limits.refused_total,
                "Connections refused with 503: every open one was busy with a request",
            ),
            (
                "hiscrm_api_connections_evicted_total",
                limits.evicted_total,
                "Idle or half-open connections closed to make room for a new one",
            ),
            (
                "hiscrm_api_read_timeouts_total",
                limits.read_timeouts_total,
                "Connections closed (408) for not sending a whole request in time",
            ),
            (
                "hiscrm_log_followers_refused_total",
                followers.refused_total,
                "Log followers refused: [api] max_log_followers were following",
            ),
            (
                "hiscrm_log_lines_suppressed_total",
                log_lines_suppressed_total(),
                "Repeated warning and error lines counted instead of written to master.log",
            ),
        ):
            yield CounterMetricFamily(name, text, value=value)
        yield GaugeMetricFamily(
            "hiscrm_log_followers_active", "Log followers now", value=followers.active
        )


class _Events(Collector):
    """Events by type, the stream's clients, hooks, replies."""

    def __init__(self, hub: EventHub, hooks: Hooks, store: Store, outbox: Outbox) -> None:
        self._hub, self._hooks, self._store, self._outbox = hub, hooks, store, outbox

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        items = self._store.stats().item_events
        events = CounterMetricFamily(
            "hiscrm_events_total",
            "Events emitted, by type: items committed (new or changed) and supervisor events",
            labels=["type"],
        )
        for name in EVENT_NAMES:
            if name.startswith(ITEM_PREFIX):
                value = items.get(name.removeprefix(ITEM_PREFIX), 0)
            else:
                value = hub.published.get(name, 0)
            events.add_metric([name], value)
        yield events
        clients = [s for s in hub.subscribers if s.client]
        yield GaugeMetricFamily(
            "hiscrm_event_clients", "Clients following GET /events now", value=len(clients)
        )
        cut_off = CounterMetricFamily(
            "hiscrm_event_clients_cut_off_total",
            "Event stream clients cut off (they resume): too_slow (their buffer in the "
            "master filled up), stopped_reading (a write to them waited too long)",
            labels=["reason"],
        )
        for reason in CutOff:
            cut_off.add_metric([reason.value], hub.cut_off[reason])
        yield cut_off
        deliveries = CounterMetricFamily(
            "hiscrm_hook_deliveries_total", "Events delivered by each hook", labels=["hook"]
        )
        failures = CounterMetricFamily(
            "hiscrm_hook_failures_total",
            "Failed hook deliveries: attempts that failed, and events dropped (queue full)",
            labels=["hook"],
        )
        for name, stats in sorted(self._hooks.stats().items()):
            deliveries.add_metric([name], stats.deliveries)
            failures.add_metric([name], stats.failures)
        yield deliveries
        yield failures
        replies = CounterMetricFamily(
            "hiscrm_replies_total",
            "Replies reaching each state (queued: made or queued again)",
            labels=["state"],
        )
        for state, value in self._outbox.counts.items():
            replies.add_metric([state], value)
        yield replies
        yield GaugeMetricFamily(
            "hiscrm_replies_open",
            "Replies queued or being sent now",
            value=len(self._outbox.open),
        )
        yield CounterMetricFamily(
            "hiscrm_replies_refused_total",
            "Reply states the store refused: made under an account lease this master lost",
            value=self._outbox.refused,
        )


class _Sessions(Collector):
    """The dashboard's sign-ins, and requests refused for their session."""

    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        sign_ins = CounterMetricFamily(
            "hiscrm_ui_sign_ins_total",
            "Dashboard sign-ins with a one-time code: ok, or refused (unknown, used, expired)",
            labels=["result"],
        )
        for result in ("ok", "refused"):
            sign_ins.add_metric([result], self._sessions.sign_ins[result])
        yield sign_ins
        refused = CounterMetricFamily(
            "hiscrm_ui_session_refusals_total",
            "Requests refused for their session cookie (malformed, bad_signature, expired) "
            "or for a missing or wrong CSRF token (csrf)",
            labels=["reason"],
        )
        for reason in [*(r.value for r in CookieRefusal), "csrf"]:
            refused.add_metric([reason], self._sessions.refusals[reason])
        yield refused
