"""The master's front: the read model, health, control, account administration, replies,
the configuration update and the HTTP API with its server, built on the running core
(``app``) while its first workers start. Importing this module imports the web
framework: ``app`` imports it and runs ``build`` in a thread, off the loop, then
``attach`` and ``start`` on the loop.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from structlog.typing import FilteringBoundLogger

from hiscrm.config import Config
from hiscrm.error_counter import ErrorCounter
from hiscrm.master.api.account_admin import AccountAdmin
from hiscrm.master.api.app import create_app
from hiscrm.master.api.config_update import ConfigUpdater
from hiscrm.master.api.control import Control
from hiscrm.master.api.errors import ApiError
from hiscrm.master.api.health import HealthMonitor
from hiscrm.master.api.log_follow import LogFollowers
from hiscrm.master.api.metrics import MasterMetrics
from hiscrm.master.api.read_model import ReadModel
from hiscrm.master.api.replies import Replies
from hiscrm.master.api.routed_commands import executors
from hiscrm.master.api.server import ApiServer
from hiscrm.master.data.accounts import AccountManager
from hiscrm.master.data.store import Store
from hiscrm.master.events.hooks import Hooks
from hiscrm.master.events.hub import EventHub
from hiscrm.master.ports import EventSink
from hiscrm.master.supervision.commands import CommandRefused, ReloadWorkers
from hiscrm.master.supervision.process_stats import ProcessStats
from hiscrm.master.supervision.supervisor import Supervisor

if TYPE_CHECKING:  # a cluster's (PostgreSQL): not imported on one host
    from hiscrm.master.data.command_router import CommandRouter
    from hiscrm.master.data.lease_keeper import LeaseKeeper


async def apply_events_config(config: Config, store: Store, hooks: Hooks) -> None:
    """What ``update`` changes of the events: the window kept, and the hooks."""
    store.set_event_window(config.events.keep, config.events.keep_s)
    await hooks.apply(config.hooks)


class Front:
    def __init__(
        self,
        config: Config,
        api_socket: socket.socket,
        token: str | None,
        log: FilteringBoundLogger,
        errors: ErrorCounter,
        metrics: MasterMetrics,
        store: Store,
        accounts: AccountManager,
        supervisor: Supervisor,
    ) -> None:
        self._config = config
        self._socket = api_socket
        self._token = token
        self._log = log
        self._errors = errors
        self._metrics = metrics
        self._store = store
        self._accounts = accounts
        self._supervisor = supervisor
        self._api: ApiServer | None = None
        self._health: HealthMonitor | None = None
        self._monitoring: asyncio.Task[None] | None = None

    def build(
        self,
        hub: EventHub,
        hooks: Hooks,
        keeper: LeaseKeeper | None,
        router: CommandRouter | None,
        missing: dict[str, list[str]],
        plugin_paths: list[str],
        config_path: Path | None,
        overrides: dict[str, object] | None,
    ) -> None:
        """Make the front's objects; touches nothing the loop owns (safe in a thread)."""
        config, log, errors, metrics = self._config, self._log, self._errors, self._metrics
        store, accounts, supervisor = self._store, self._accounts, self._supervisor
        read = self.read = ReadModel(supervisor, accounts, store, ProcessStats(), missing)
        read.cluster_stats = keeper.stats if keeper is not None else None
        self._health = HealthMonitor(
            read.health_inputs,
            log,
            lambda h: hub.publish("health", h.model_dump()),
            probe=read.health_probe,
        )
        metrics.attach(read, supervisor)
        control = Control(supervisor, read, store)
        followers = LogFollowers(config.api.max_log_followers, log, errors)
        admin = AccountAdmin(supervisor, read, store, config.state_dir / "spool", plugin_paths, log)
        replies = Replies(read, store, accounts.outbox)
        self._executors = executors(control, replies)
        if router is not None:  # actions on other masters' accounts go to them
            control.router = replies.router = router
        updater = ConfigUpdater(
            config_path,
            overrides or {},
            supervisor,
            store,
            log,
            lambda new: apply_events_config(new, store, hooks),
        )

        async def on_hangup() -> None:
            """SIGHUP: the config file read again and applied, then a rolling reload."""
            try:
                await updater.update()
            except ApiError as exc:  # logged by the updater; the reload still runs
                log.error("SIGHUP: update refused; reloading the workers anyway", error=exc.error)
            try:
                await supervisor.command(ReloadWorkers("SIGHUP"))
            except CommandRefused as exc:
                log.warning("SIGHUP: reload refused", reason=str(exc))

        self._on_hangup = on_hangup
        app = create_app(
            read,
            control,
            admin,
            updater,
            metrics,
            self._token,
            config.api.metrics_public,
            config.api.max_page_bytes,
            log,
            errors,
            followers,
            hub,
            lambda: supervisor.config.events,
            replies,
            config.api.session_ttl_s,
        )
        api = self._api = ApiServer(app, self._socket, config, log)
        metrics.attach_front_door(api.limits, followers)
        metrics.attach_events(hub, hooks, store, accounts.outbox)

    def attach(self, listeners: list[EventSink], router: CommandRouter | None) -> None:
        """On the loop: the front hears what happens, takes SIGHUP and routed commands."""
        health = self._health
        assert health is not None
        listeners.append(lambda event, data: health.poke())
        self._supervisor.on_hangup = self._on_hangup
        if router is not None:
            router.executors.update(self._executors)

    def start(self, api_url: str) -> None:
        """The server accepts what waited on the socket; health is assessed from now on."""
        assert self._api is not None
        assert self._health is not None
        self._api.start()
        self._log.info("API listening", url=api_url, auth=self._token is not None)
        self.read.api_url = api_url
        self._monitoring = asyncio.create_task(self._health.run(), name="health")
        self._monitoring.add_done_callback(self._health_ended)

    def _health_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._errors()
            self._log.error("health failed and stopped", exc_info=exc)

    async def stop(self) -> None:
        if self._monitoring is not None:
            self._monitoring.cancel()
        if self._api is not None:
            await self._api.stop()
