"""Which store the configuration names: SQLite in the state directory (the default), or
PostgreSQL at ``[store] url``."""

from structlog.typing import FilteringBoundLogger

from hiscrm.config import Config
from hiscrm.master.data.sqlite_store import SqliteStore
from hiscrm.master.data.store import Store, StoreError

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
