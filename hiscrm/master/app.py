"""The running master, put together: supervisor, store reader, metrics, HTTP API.

``cli`` checks everything that can be checked before any process starts (configuration,
state directory, the API's port) and hands over here.
"""

import asyncio
import socket
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from hiscrm import prctl
from hiscrm.config import Config
from hiscrm.log_config import flush_suppressed_counts
from hiscrm.master.api.app import create_app
from hiscrm.master.api.control import Control
from hiscrm.master.api.log_follow import LogFollowers
from hiscrm.master.api.metrics import MasterMetrics
from hiscrm.master.api.server import ApiServer
from hiscrm.master.data.queries import StoreReader
from hiscrm.master.supervision.code_watch import CodeWatcher
from hiscrm.master.supervision.launcher import Launcher, SpawnLauncher
from hiscrm.master.supervision.process_stats import ProcessStats
from hiscrm.master.supervision.supervisor import Supervisor
from hiscrm.master.supervision.template_launcher import TemplateLauncher

WATCH_STOP_S = 2.0


def _watch_ended(
    task: "asyncio.Task[None]", log: FilteringBoundLogger, count_error: Callable[[], int]
) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        count_error()
        log.error("--watch failed; code changes no longer reload the workers", exc_info=exc)


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
    metrics = MasterMetrics()
    launcher = make_launcher(config, log)
    supervisor = Supervisor(config, launcher, log, metrics)
    processes = ProcessStats()
    metrics.attach(supervisor, processes)
    control = Control(supervisor, StoreReader(supervisor.store.path), processes)
    followers = LogFollowers(config.api.max_log_followers, log, supervisor.count_internal_error)
    app = create_app(
        control,
        metrics,
        token,
        config.api.metrics_public,
        log,
        supervisor.count_internal_error,
        followers,
    )
    api = ApiServer(app, api_socket, config, log)

    stop_watching = asyncio.Event()
    watching: asyncio.Task[None] | None = None

    async def on_ready() -> None:
        nonlocal watching
        api.start()
        host, port = api.address
        log.info("API listening", url=f"http://{host}:{port}/api/v1", auth=token is not None)
        if watch:
            watching = asyncio.create_task(CodeWatcher(supervisor, log).run(stop_watching))
            watching.add_done_callback(
                lambda task: _watch_ended(task, log, supervisor.count_internal_error)
            )

    async def on_stopped() -> None:
        stop_watching.set()
        if watching is not None:
            await asyncio.wait({watching}, timeout=WATCH_STOP_S)
        await api.stop()
        flush_suppressed_counts()

    return await supervisor.run(on_ready=on_ready, on_stopped=on_stopped)
