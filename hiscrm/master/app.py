"""The running master, put together: store, accounts, supervisor, read model, metrics,
HTTP API.

``cli`` checks everything that can be checked before any process starts (configuration,
state directory, the API's port) and hands over here.
"""

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from structlog.typing import FilteringBoundLogger

from hiscrm import prctl
from hiscrm.config import Config
from hiscrm.error_counter import ErrorCounter
from hiscrm.log_config import flush_suppressed_counts
from hiscrm.master.api.app import create_app
from hiscrm.master.api.control import Control
from hiscrm.master.api.health import HealthMonitor
from hiscrm.master.api.log_follow import LogFollowers
from hiscrm.master.api.metrics import MasterMetrics
from hiscrm.master.api.read_model import ReadModel
from hiscrm.master.api.server import ApiServer
from hiscrm.master.data.accounts import AccountManager
from hiscrm.master.data.open_store import open_store
from hiscrm.master.data.store import SyncOutcome
from hiscrm.master.ports import EventSink
from hiscrm.master.supervision.code_watch import CodeWatcher
from hiscrm.master.supervision.launcher import Launcher, SpawnLauncher
from hiscrm.master.supervision.platform_check import missing_platforms, use_plugin_paths
from hiscrm.master.supervision.process_stats import ProcessStats
from hiscrm.master.supervision.supervisor import Supervisor
from hiscrm.master.supervision.template_launcher import TemplateLauncher

WATCH_STOP_S = 2.0


def _task_ended(
    task: "asyncio.Task[None]", what: str, log: FilteringBoundLogger, count_error: Callable[[], int]
) -> None:
    """A task of the master that should run until it stops has ended: say so."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        count_error()
        log.error(f"{what} failed and stopped", exc_info=exc)


def make_launcher(config: Config, log: FilteringBoundLogger) -> Launcher:
    """Forking from a warm template needs the master to adopt orphans (Linux); without
    that, or when turned off, every worker is a fresh spawn."""
    spawn = SpawnLauncher()
    if not config.supervision.fork_template:
        return spawn
    try:
        prctl.set_child_subreaper()
    except OSError as exc:
        log.warning("workers start by spawn: cannot become a child subreaper", error=str(exc))
        return spawn
    return TemplateLauncher(config, spawn, log)


async def run_master(
    config: Config,
    api_socket: socket.socket,
    token: str | None,
    log: FilteringBoundLogger,
    watch: bool = False,
) -> int:
    loop = asyncio.get_running_loop()
    errors = ErrorCounter()
    metrics = MasterMetrics()
    store = open_store(config, log)
    # What the wings tell of what happens, fanned out to whoever listens (health).
    listeners: list[EventSink] = []

    def publish(event: str, data: dict[str, Any]) -> None:
        for listener in listeners:
            listener(event, data)

    accounts = AccountManager(
        config, store, log, loop.time(), metrics.commit_latency.observe, errors, publish
    )

    # Opens and migrates the store: a store that cannot be used stops the master here,
    # before any worker starts. Outcomes of syncs come back on the loop.
    def on_outcomes(outcomes: list[SyncOutcome]) -> None:  # in the store's writer thread
        loop.call_soon_threadsafe(accounts.on_outcomes, outcomes)

    store.start(on_outcomes)
    try:
        launcher = make_launcher(config, log)
        plugin_paths = use_plugin_paths(config.plugin_paths)  # before anything looks for code
        supervisor = Supervisor(config, launcher, accounts, log, errors, publish)
        missing = missing_platforms(config.accounts, plugin_paths)
        for spec, ids in missing.items():
            log.error(
                "platform module not found; its accounts cannot run", platform=spec, accounts=ids
            )
        read = ReadModel(supervisor, accounts, store, ProcessStats(), missing)
        health = HealthMonitor(read.health_inputs, log)
        listeners.append(lambda event, data: health.poke())
        metrics.attach(read, supervisor)
        control = Control(supervisor, read, store)
        followers = LogFollowers(config.api.max_log_followers, log, errors)
        app = create_app(
            read,
            control,
            metrics,
            token,
            config.api.metrics_public,
            config.api.max_page_bytes,
            log,
            errors,
            followers,
        )
        api = ApiServer(app, api_socket, config, log)
        metrics.attach_front_door(api.limits, followers)

        stop_watching = asyncio.Event()
        watching: asyncio.Task[None] | None = None
        monitoring: asyncio.Task[None] | None = None

        async def on_ready() -> None:
            nonlocal watching
            api.start()
            host, port = api.address
            log.info("API listening", url=f"http://{host}:{port}/api/v1", auth=token is not None)
            if watch:
                watching = asyncio.create_task(CodeWatcher(supervisor, log).run(stop_watching))
                watching.add_done_callback(
                    lambda task: _task_ended(
                        task, "--watch (code changes reload workers)", log, errors
                    )
                )

        async def on_started() -> None:
            nonlocal monitoring
            monitoring = asyncio.create_task(health.run(), name="health")
            monitoring.add_done_callback(lambda task: _task_ended(task, "health", log, errors))

        async def on_stopped() -> None:
            if monitoring is not None:
                monitoring.cancel()
            stop_watching.set()
            if watching is not None:
                await asyncio.wait({watching}, timeout=WATCH_STOP_S)
            await api.stop()
            flush_suppressed_counts()

        return await supervisor.run(on_ready=on_ready, on_started=on_started, on_stopped=on_stopped)
    finally:
        store.stop()
