"""The master's front: the read model, health, control, account administration, replies,
the configuration update and the HTTP API with its server, built on the running core
(``app``) while its first workers start. Importing this module imports the web
framework: ``app`` imports it and runs ``build`` in a thread, off the loop, then
``attach`` and ``start`` on the loop.
"""

from __future__ import annotations

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
from hiscrm.master.supervision.commands import CommandRefused, ReloadWorkers
from hiscrm.master.supervision.supervisor import Supervisor

if TYPE_CHECKING:  # a cluster's (PostgreSQL): not imported on one host
    from hiscrm.master.data.command_router import CommandRouter


async def apply_events_config(config: Config, store: Store, hooks: Hooks) -> None:
    """What ``update`` changes of the events: the window kept, and the hooks."""
    store.set_event_window(config.events.keep, config.events.keep_s)
    await hooks.apply(config.hooks)


class Front:
    """What the API serves, on the core's read model (health runs in the core already,
    so what happens before the front is up is judged all the same)."""

    def __init__(
        self,
        config: Config,
        api_socket: socket.socket,
        token: str | None,
        log: FilteringBoundLogger,
        errors: ErrorCounter,
        metrics: MasterMetrics,
        read: ReadModel,
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
        self.read = read
        self._store = store
        self._accounts = accounts
        self._supervisor = supervisor
        self._api: ApiServer | None = None

    def build(
        self,
        hub: EventHub,
        hooks: Hooks,
        router: CommandRouter | None,
        plugin_paths: list[str],
        config_path: Path | None,
        overrides: dict[str, object] | None,
    ) -> None:
        """Make the front's objects; touches nothing the loop owns (safe in a thread)."""
        config, log, errors, metrics = self._config, self._log, self._errors, self._metrics
        store, accounts, supervisor, read = self._store, self._accounts, self._supervisor, self.read
        metrics.attach(read)
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

        self.on_hangup = on_hangup
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

    def attach(self, router: CommandRouter | None) -> None:
        """On the loop: routed commands reach the front's actions."""
        if router is not None:
            router.executors.update(self._executors)

    def start(self, api_url: str) -> None:
        """The server accepts what waited on the socket."""
        assert self._api is not None
        self._api.start()
        self._log.info("API listening", url=api_url, auth=self._token is not None)
        self.read.api_url = api_url

    async def stop(self) -> None:
        if self._api is not None:
            await self._api.stop()
