"""The running master, put together: the store, accounts, event hub, hooks, the read model
with health, and the supervisor first; its front (``front``: metrics, control, account
admin, replies, the configuration update, the HTTP API) is built in a thread while the
first workers start.

``cli`` checks everything that can be checked before any process starts (configuration,
state directory, the API's port) and hands over here. The API's socket listens from the
start, so a client that connects before the front is up waits (well under a second)
rather than being refused; the web framework's import and the app's construction (a few
hundred milliseconds of CPU) are thus off the path of a cold start.
"""

import asyncio
import gc
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from structlog.typing import FilteringBoundLogger

from hiscrm import prctl
from hiscrm.config import Config
from hiscrm.error_counter import ErrorCounter
from hiscrm.exit_codes import ExitCode
from hiscrm.items import epoch_ms
from hiscrm.log_config import flush_suppressed_counts
from hiscrm.master.api.health import HealthMonitor
from hiscrm.master.api.read_model import ReadModel
from hiscrm.master.data import account_registry
from hiscrm.master.data.accounts import AccountManager
from hiscrm.master.data.open_store import open_command_router, open_lease_keeper, open_store
from hiscrm.master.data.store import AccountRecord, Store, StoreUnavailable, SyncOutcome
from hiscrm.master.events.hooks import Hooks
from hiscrm.master.events.hub import EventHub
from hiscrm.master.ports import EventSink
from hiscrm.master.service_notify import SdNotify, ServiceStatus
from hiscrm.master.supervision.commands import ShutDown
from hiscrm.master.supervision.launcher import Launcher, SpawnLauncher
from hiscrm.master.supervision.platform_check import missing_platforms, use_plugin_paths
from hiscrm.master.supervision.process_stats import ProcessStats
from hiscrm.master.supervision.supervisor import Supervisor
from hiscrm.master.supervision.template_launcher import TemplateLauncher
from hiscrm.master.supervision.template_spawn import StartedTemplate
from hiscrm.master.supervision.worker_slot import WorkerState

if TYPE_CHECKING:
    from pathlib import Path

    from hiscrm.master.api.metrics import MasterMetrics
    from hiscrm.master.front import Front

WATCH_STOP_S = 2.0
FRONT_SWITCH_S = 0.0005  # the GIL's switch interval while the front is built in a thread


def _task_ended(
    task: "asyncio.Task[None]", what: str, log: FilteringBoundLogger, count_error: Callable[[], int]
) -> None:
    """A task of the master that should run until it stops has ended: say so."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        count_error()
        log.error(f"{what} failed and stopped", exc_info=exc)


def workers_summary(supervisor: Supervisor) -> str:
    """``2/2 workers running``, for the service manager's status line."""
    slots = supervisor.slots.values()
    running = sum(slot.state is WorkerState.RUNNING for slot in slots)
    return f"{running}/{len(slots)} workers running"


def make_launcher(
    config: Config, log: FilteringBoundLogger, early: StartedTemplate | None = None
) -> Launcher:
    """Forking from a warm template needs the master to adopt orphans (Linux); without
    that, or when turned off, every worker is a fresh spawn. ``early``: a template
    started before the master had loaded the rest of itself."""
    spawn = SpawnLauncher()
    if not config.supervision.fork_template:
        return spawn
    try:
        prctl.set_child_subreaper()
    except OSError as exc:
        log.warning("workers start by spawn: cannot become a child subreaper", error=str(exc))
        return spawn
    return TemplateLauncher(config, spawn, log, early)


async def reconcile_registry(
    store: Store, config: Config, log: FilteringBoundLogger
) -> list[AccountRecord]:
    """The registry of accounts, made to follow what the config file declares."""
    registry = await store.accounts()
    changes = account_registry.plan(config.accounts, registry, epoch_ms())
    for record in changes.create:
        await store.put_account(record)
        log.info("account declared in the config file added", account_id=record.id)
    for record in changes.change:
        await store.put_account(record)
        log.info("account declared in the config file changed", account_id=record.id)
    for account_id in changes.remove:
        await store.delete_account(account_id, purge=False)
        log.warning(
            "account no longer declared in the config file removed; its data is kept",
            account_id=account_id,
        )
    for account_id in changes.conflicts:
        log.error(
            "account declared in the config file was made through the API; the API's is "
            "kept and the declaration left out (delete it through the API to declare it)",
            account_id=account_id,
        )
    return account_registry.apply(changes, registry)


async def run_master(
    config: Config,
    api_socket: socket.socket,
    token: str | None,
    log: FilteringBoundLogger,
    watch: bool = False,
    config_path: "Path | None" = None,
    overrides: dict[str, object] | None = None,
    early_template: StartedTemplate | None = None,
    notify_socket: str | None = None,
) -> int:
    loop = asyncio.get_running_loop()
    errors = ErrorCounter()
    # Commit latencies observed before the front (and the metrics) are built: kept for it.
    early_latencies: list[float] = []
    observe_latency: list[Callable[[float], None]] = [early_latencies.append]
    store = open_store(config, log)
    # What the wings tell of what happens, fanned out to whoever listens (health).
    listeners: list[EventSink] = []

    node = None if config.store.url is None else config.cluster.node_id  # a cluster

    def publish(event: str, data: dict[str, Any]) -> None:
        if node is not None:  # which master of the cluster it happened on
            data = {**data, "node": node}
        for listener in listeners:
            listener(event, data)

    manager: list[AccountManager] = []  # made once the registry is read

    # Opens and migrates the store: a store that cannot be used stops the master here,
    # before any worker starts. Outcomes of syncs come back on the loop.
    def on_outcomes(outcomes: list[SyncOutcome]) -> None:  # in the store's writer thread
        loop.call_soon_threadsafe(manager[0].on_outcomes, outcomes)

    # Each commit that gives out event ids wakes the hub (made just below) on the loop.
    hubs: list[EventHub] = []

    def on_head(head: int) -> None:  # in the store's writer thread
        if hubs:
            loop.call_soon_threadsafe(hubs[0].committed, head)

    store.watch_events(on_head)
    store.set_event_window(config.events.keep, config.events.keep_s)
    store.start(on_outcomes)
    hub = EventHub(store, log, errors)
    hubs.append(hub)
    listeners.append(hub.publish)
    try:
        try:
            registry = await reconcile_registry(store, config, log)
            late: list[AccountRecord] | None = None
        except StoreUnavailable as exc:  # PostgreSQL out of reach: once the keeper reaches it
            if config.store.url is None:
                raise
            log.warning("the accounts are declared once the store is reached", reason=str(exc))
            registry = late = []
        accounts = AccountManager(
            config,
            registry,
            store,
            log,
            loop.time(),
            lambda seconds: observe_latency[0](seconds),
            errors,
            publish,
            held=None if config.store.url is None else set(),  # a cluster: leased accounts
        )
        manager.append(accounts)
        if late is None:
            await accounts.outbox.load()
        launcher = make_launcher(config, log, early_template)
        plugin_paths = use_plugin_paths(config.plugin_paths)  # before anything looks for code
        supervisor = Supervisor(config, launcher, accounts, log, errors, publish)
        keeper = open_lease_keeper(
            config, store, accounts, log, errors, lambda: supervisor.shutting_down
        )
        if keeper is not None and late is not None:

            async def when_reached() -> None:
                await reconcile_registry(store, config, log)  # the keeper follows it
                await accounts.outbox.load()

            keeper.when_reached = when_reached
        router = None
        if keeper is not None:  # actions on other masters' accounts go to them
            router = open_command_router(config, store, accounts, keeper, log, errors)
        leasing: asyncio.Task[None] | None = None
        # systemd (Type=notify) hears of readiness, reloads and the shutdown.
        notify = SdNotify(notify_socket, log, errors)
        service = ServiceStatus(notify, lambda: workers_summary(supervisor), os.getpid())
        listeners.append(service)
        missing = missing_platforms(list(accounts.specs.values()), plugin_paths)
        for spec, ids in missing.items():
            log.error(
                "platform module not found; its accounts cannot run", platform=spec, accounts=ids
            )
        hooks = Hooks(hub, config.state_dir / "logs", log)
        # Health from the start: what happens before the front is up is judged too.
        read = ReadModel(supervisor, accounts, store, ProcessStats(), missing)
        read.cluster_stats = keeper.stats if keeper is not None else None
        health = HealthMonitor(
            read.health_inputs,
            log,
            lambda h: hub.publish("health", h.model_dump()),
            probe=read.health_probe,
        )
        listeners.append(lambda event, data: health.poke())
        # SIGHUP before the front is up waits for it (it reads the config file again).
        front_ready: asyncio.Future[Front] = loop.create_future()

        async def on_hangup() -> None:
            front = await front_ready
            await front.on_hangup()

        supervisor.on_hangup = on_hangup
        host, port = api_socket.getsockname()[:2]
        api_url = f"http://{host}:{port}/api/v1"

        front_failed: list[BaseException] = []

        async def open_front() -> None:
            # Built in a thread while the first workers start; the loop gets the GIL back
            # within FRONT_SWITCH_S whenever a worker has something to say.
            interval = sys.getswitchinterval()
            sys.setswitchinterval(FRONT_SWITCH_S)
            try:
                front, metrics = await asyncio.to_thread(build_front)
            except Exception as exc:  # a master without its API is no master: it stops
                front_failed.append(exc)
                front_ready.cancel()  # a SIGHUP waiting for it: the master is stopping
                log.critical(
                    "the API cannot be built; stopping",
                    internal_errors_total=errors(),
                    exc_info=exc,
                )
                await supervisor.command(ShutDown("the API cannot be built"))
                return
            finally:
                sys.setswitchinterval(interval)
                gc.freeze()  # what the start made lives on: no collection walks it again
                gc.enable()  # (off since ``launch``)
            for seconds in early_latencies:
                metrics.commit_latency.observe(seconds)
            observe_latency[0] = metrics.commit_latency.observe
            front.attach(router)
            front.start(api_url)
            front_ready.set_result(front)
            service.started(list(supervisor.slots))

        def build_front() -> "tuple[Front, MasterMetrics]":  # in a thread
            from hiscrm.master.api.metrics import MasterMetrics
            from hiscrm.master.front import Front

            metrics = MasterMetrics(node)
            if keeper is not None:
                metrics.attach_cluster(keeper.stats)
            front = Front(
                config, api_socket, token, log, errors, metrics, read, store, accounts, supervisor
            )
            front.build(hub, hooks, router, plugin_paths, config_path, overrides)
            return front, metrics

        stop_watching = asyncio.Event()
        watching: asyncio.Task[None] | None = None
        opening: asyncio.Task[None] | None = None
        monitoring: asyncio.Task[None] | None = None

        async def on_prepared() -> None:  # the template is ready: the workers start now
            nonlocal opening
            opening = asyncio.create_task(open_front(), name="front")
            opening.add_done_callback(lambda task: _task_ended(task, "the API", log, errors))

        async def on_ready() -> None:  # before the workers start
            nonlocal watching, leasing
            if keeper is not None:
                keeper.api_url = api_url
                leasing = asyncio.create_task(keeper.run(), name="leases")
                leasing.add_done_callback(lambda task: _task_ended(task, "leases", log, errors))
            if watch:
                from hiscrm.master.supervision.code_watch import CodeWatcher  # watchfiles

                watching = asyncio.create_task(CodeWatcher(supervisor, log).run(stop_watching))
                watching.add_done_callback(
                    lambda task: _task_ended(
                        task, "--watch (code changes reload workers)", log, errors
                    )
                )

        fanning = asyncio.create_task(hub.run(), name="events")
        fanning.add_done_callback(lambda task: _task_ended(task, "events", log, errors))
        await hooks.apply(config.hooks)

        async def on_started() -> None:  # the workers are starting: health is judged now
            nonlocal monitoring
            monitoring = asyncio.create_task(health.run(), name="health")
            monitoring.add_done_callback(lambda task: _task_ended(task, "health", log, errors))

        async def on_stopped() -> None:
            if opening is not None and not opening.done():
                opening.cancel()
                await asyncio.wait({opening})
            front = (
                None if front_ready.cancelled() or not front_ready.done() else front_ready.result()
            )
            front_ready.cancel()  # nothing waits for it any more (done: no effect)
            if monitoring is not None:
                monitoring.cancel()
            stop_watching.set()
            if leasing is not None and keeper is not None:  # every worker has stopped
                leasing.cancel()
                await asyncio.wait({leasing})
                await keeper.stop()
            if watching is not None:
                await asyncio.wait({watching}, timeout=WATCH_STOP_S)
            if front is not None:
                await front.stop()
            await hooks.stop()
            await accounts.stop()
            fanning.cancel()
            notify.close()
            flush_suppressed_counts()

        code = await supervisor.run(
            on_ready=on_ready, on_prepared=on_prepared, on_started=on_started, on_stopped=on_stopped
        )
        return ExitCode.CRASHED if front_failed else code
    finally:
        store.stop()
