"""The running master, put together: supervisor, store reader, metrics, HTTP API.

``cli`` checks everything that can be checked before any process starts (configuration,
state directory, the API's port) and hands over here.
"""

import socket

from structlog.typing import FilteringBoundLogger

from hiscrm.config import Config
from hiscrm.master.api.app import create_app
from hiscrm.master.api.control import Control
from hiscrm.master.api.queries import StoreReader
from hiscrm.master.api.server import ApiServer
from hiscrm.master.launcher import SpawnLauncher
from hiscrm.master.metrics import MasterMetrics
from hiscrm.master.process_stats import ProcessStats
from hiscrm.master.supervisor import Supervisor


async def run_master(
    config: Config, api_socket: socket.socket, token: str | None, log: FilteringBoundLogger
) -> int:
    metrics = MasterMetrics()
    supervisor = Supervisor(config, SpawnLauncher(), log, metrics)
    processes = ProcessStats()
    metrics.attach(supervisor, processes)
    control = Control(supervisor, StoreReader(supervisor.store.path), processes)
    app = create_app(
        control, metrics, token, config.api.metrics_public, log, supervisor.count_internal_error
    )
    api = ApiServer(app, api_socket)

    async def start_api() -> None:
        api.start()
        host, port = api.address
        log.info("API listening", url=f"http://{host}:{port}/api/v1", auth=token is not None)

    return await supervisor.run(on_ready=start_api, on_stopped=api.stop)
