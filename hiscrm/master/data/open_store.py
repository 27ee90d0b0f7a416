"""Which store the configuration names: SQLite in the state directory (the default), or
PostgreSQL at ``[store] url``."""

from collections.abc import Callable
from typing import TYPE_CHECKING

from structlog.typing import FilteringBoundLogger

from hiscrm.config import Config
from hiscrm.master.data.accounts import AccountManager
from hiscrm.master.data.sqlite_store import SqliteStore
from hiscrm.master.data.store import Store, StoreError

if TYPE_CHECKING:
    from hiscrm.master.data.command_router import CommandRouter
    from hiscrm.master.data.lease_keeper import LeaseKeeper

SQLITE_FILE = "hiscrm.db"


def open_store(config: Config, log: FilteringBoundLogger) -> Store:
    """The configured store, not started yet (``start`` opens and migrates it)."""
    retention = config.retention.days()
    if config.store.url is None:
        return SqliteStore(config.state_dir / SQLITE_FILE, retention, log)
    try:  # psycopg is an optional dependency: only PostgreSQL users install it
        from hiscrm.master.data.postgres_store import PostgresStore
    except ImportError as exc:
        raise StoreError(
            f"[store] url names PostgreSQL, but its driver is not installed ({exc}); "
            "install hiscrm with the postgres extra: pip install 'hiscrm[postgres]'"
        ) from exc
    return PostgresStore(config.store.url, retention, log)


def open_lease_keeper(
    config: Config,
    store: Store,
    manager: AccountManager,
    log: FilteringBoundLogger,
    count_error: Callable[[], int],
    shutting_down: Callable[[], bool],
) -> "LeaseKeeper | None":
    """On PostgreSQL, this master's part in the cluster: the lease keeper, whose fence
    every write of the store checks. On SQLite (one host): None, the master owns every
    account."""
    if config.store.url is None:
        return None
    from hiscrm.master.data.lease_fence import Fence
    from hiscrm.master.data.lease_keeper import LeaseKeeper
    from hiscrm.master.data.postgres_store import PostgresStore

    if not isinstance(store, PostgresStore):
        raise StoreError(f"a cluster needs the PostgreSQL store, not {type(store).__name__}")
    fence = Fence(config.cluster.node_id)
    store.writer.fence = fence
    manager.outbox.lease_of = fence.epoch  # each reply's write names the lease it was made under
    return LeaseKeeper(config, config.store.url, manager, fence, log, count_error, shutting_down)


def open_command_router(
    config: Config,
    store: Store,
    manager: AccountManager,
    keeper: "LeaseKeeper",
    log: FilteringBoundLogger,
    count_error: Callable[[], int],
) -> "CommandRouter":
    """In a cluster, on the loop: this master's end of the commands routed through the
    store, heard by the store's listener; a reply stored through any master reaches the
    account's holder, and a change of the registry is followed at once."""
    import asyncio

    from hiscrm.master.data.command_router import CommandRouter
    from hiscrm.master.data.postgres_store import PostgresStore

    assert isinstance(store, PostgresStore)
    assert config.store.url is not None
    held = manager.held
    assert held is not None, "a cluster's manager holds leases"
    router = CommandRouter(
        config.store.url,
        config.cluster.node_id,
        lambda account_id: account_id in held,
        lambda account_id: manager.owners.get(account_id, (None, None))[0],
        log,
        count_error,
    )
    router.on_outbox = lambda account_id: manager.outbox.take_in(
        [account_id], "stored through another master", new_only=True
    )
    router.on_accounts = keeper.poke
    store.commands_heard, store.commands_connected = router.listen_with(asyncio.get_running_loop())
    if store.writer.opened:  # else the listener tells it once the store is reached
        router.connected()  # what was sent before it listened
    return router
