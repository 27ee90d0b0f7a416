"""What only the PostgreSQL store has to show: its column types, a database shared with
another writer, a lost connection, a server out of reach at the start (waited for) or
that can never be used (fatal at once), and a URL whose password never shows."""

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest
import structlog
from pg_server import PASSWORD, PostgresServer, free_port
from tcp_proxy import TcpProxy
from test_datastore import LINK, Store, change, postgres_backend

from hiscrm.master.data import pg_schema
from hiscrm.master.data.postgres_store import PostgresStore
from hiscrm.master.data.store import (
    CollectionQuery,
    StoreError,
    StoreUnavailable,
    SyncBatch,
    SyncFailure,
    SyncOutcome,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(pg_url: str) -> Iterator[Store]:
    s = Store(postgres_backend(pg_url))
    yield s
    s.close()


def test_columns_have_types_that_hold_the_values(store: Store) -> None:
    types = dict(
        store.rows(
            "SELECT table_name || '.' || column_name, data_type || coalesce(' ' || "
            "collation_name, '') FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
    )
    assert types["messages.sent_at"] == "bigint"  # ms since the epoch need 64 bits
    assert types["messages.read_at"] == "bigint"
    assert types["messages.is_read"] == "boolean"
    assert types["messages.text"] == "text C"  # sorted by code point, as in SQLite
    assert types["conversations.participants"] == "jsonb"
    assert types["contents.views"] == "bigint"
    indexes = dict(store.rows("SELECT indexname, indexdef FROM pg_indexes"))
    assert indexes["messages_by_conversation_id_sent_at"].endswith(
        "(account_id, conversation_id NULLS FIRST, sent_at NULLS FIRST)"
    )


def test_the_gap_check_reads_the_database_not_a_copy(pg_url: str) -> None:
    # Two writers on one database, as two masters will be: each must see what the other
    # committed for the account before it accepts a sync.
    first = Store(postgres_backend(pg_url))
    second = Store(postgres_backend(pg_url))
    try:
        assert first.sync(0, 2, change(1, 1), change(2, 1, item_id="m2")).ok
        assert second.sync(2, 3, change(3, 1, item_id="m3")).ok
        resend = first.sync(2, 3, change(3, 2, "newer", item_id="m3"))
        assert resend.ok  # not a gap: the store has 3
        assert resend.committed_seq == 3
        gap = first.sync(4, 5, change(5, 1, item_id="m5"))
        assert gap.error is not None
        assert gap.error.startswith("gap: the store has up to 3")
    finally:
        first.close()
        second.close()
    assert first.rows("SELECT acked_seq FROM account_sync") == [(3,)]
    assert first.rows("SELECT text, version FROM messages WHERE id = 'm3'") == [("newer", 2)]


def test_a_lost_connection_is_opened_again(store: Store, pg_url: str) -> None:
    assert store.sync(0, 1, change(1, 1)).ok
    with psycopg.connect(pg_url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'hiscrm-master' AND datname = current_database()"
        ).fetchall()
    assert killed == [(True,)]
    deadline = time.monotonic() + 10
    seq = 1
    while True:  # the first try may meet the dead connection and be refused, not lost
        outcome = store.sync(seq, seq + 1, change(seq + 1, 1, item_id=f"m{seq + 1}"))
        if outcome.ok:
            break
        assert outcome.error is not None
        assert outcome.error.startswith("store error:")
        assert time.monotonic() < deadline, outcome.error
    assert store.thread.alive
    assert store.thread.errors >= 1  # the dead connection was met, counted, and replaced
    assert store.rows("SELECT acked_seq FROM account_sync") == [(2,)]


def test_a_wrong_password_fails_at_start_without_showing_it(pg_server: PostgresServer) -> None:
    url = pg_server.url().replace(PASSWORD, "not-the-password")
    store = PostgresStore(url, {}, structlog.get_logger())
    with pytest.raises(StoreError) as raised:
        store.start(lambda outcomes: None)
    message = str(raised.value)
    assert "password authentication failed" in message
    assert "not-the-password" not in message
    assert "hiscrm:***@127.0.0.1" in message
    assert not store.writer.alive


def test_a_server_out_of_reach_at_the_start_is_waited_for(
    pg_url: str, pg_server: PostgresServer
) -> None:
    port = free_port()  # nothing listens there yet: connections are refused
    url = pg_url.replace(f":{pg_server.port}/", f":{port}/")
    store = PostgresStore(url, {}, structlog.get_logger())
    outcomes: list[SyncOutcome] = []
    store.start(outcomes.extend)  # returns: the writer keeps trying
    proxy: TcpProxy | None = None
    try:
        cannot = store.stats().cannot_commit
        assert cannot is not None
        assert cannot.startswith(f"cannot reach postgresql://hiscrm:***@127.0.0.1:{port}/")
        assert "Connection refused" in cannot
        assert "; retrying every 2 s" in cannot
        assert PASSWORD not in cannot
        store.submit(SyncBatch(LINK, "acc", 0, 1, [change(1, 1)]))
        deadline = time.monotonic() + 10
        while not outcomes:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert outcomes[0].failure == SyncFailure.STORE_ERROR  # the worker keeps it
        assert outcomes[0].error is not None
        assert "cannot reach" in outcomes[0].error
        with pytest.raises(StoreUnavailable, match="cannot reach"):
            asyncio.run(store.page("messages", CollectionQuery("acc")))
        with pytest.raises(StoreUnavailable, match="cannot reach"):
            asyncio.run(store.accounts())
        assert store.writer.alive
        assert not store.writer.opened

        proxy = TcpProxy(pg_server.port, port=port)  # the server is there now
        deadline = time.monotonic() + 10
        while store.stats().cannot_commit is not None:
            assert time.monotonic() < deadline, store.stats().cannot_commit
            time.sleep(0.02)
        store.submit(SyncBatch(LINK, "acc", 0, 1, [change(1, 1)]))  # the worker's resend
        while len(outcomes) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert outcomes[1].ok, outcomes[1].error
        while True:  # the reads' pool opens in the background
            try:
                _rows, total = asyncio.run(store.page("messages", CollectionQuery("acc")))
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert total == 1
        assert store.listener.listening.wait(10)
        assert store.writer.outage.episodes == 1
        assert store.writer.outage.failures >= 1
    finally:
        store.stop()
        if proxy is not None:
            proxy.close()


def test_stopping_while_the_server_is_out_of_reach_is_prompt() -> None:
    url = f"postgresql://hiscrm:{PASSWORD}@127.0.0.1:{free_port()}/postgres"
    store = PostgresStore(url, {}, structlog.get_logger())
    store.start(lambda outcomes: None)
    began = time.monotonic()
    store.stop()
    assert time.monotonic() - began < 5
    assert not store.writer.alive


def test_a_schema_newer_than_the_program_fails_at_start(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (%s)", (pg_schema.SCHEMA_VERSION + 1,))
    store = PostgresStore(pg_url, {}, structlog.get_logger())
    with pytest.raises(StoreError, match="this program knows up to"):
        store.start(lambda outcomes: None)
    assert not store.writer.alive


def test_an_invalid_connection_option_fails_at_start(pg_url: str) -> None:
    store = PostgresStore(pg_url + "?colour=blue", {}, structlog.get_logger())
    with pytest.raises(StoreError, match="invalid URI query parameter"):
        store.start(lambda outcomes: None)
    assert not store.writer.alive


def test_stats_name_the_store_without_the_password(store: Store) -> None:
    where = store.store.stats().where
    assert PASSWORD not in where
    assert where.startswith("postgresql://hiscrm:***@127.0.0.1:")
    store.store.submit(SyncBatch(LINK, "acc", 0, 1, [change(1, 1)]))
    store.wait_outcomes(1)
    assert store.store.stats().commits == 1


def test_a_server_that_refuses_us_is_reported_and_caught_up_with(
    store: Store, pg_url: str, pg_server: PostgresServer
) -> None:
    assert store.sync(0, 1, change(1, 1)).ok
    database = pg_url.rsplit("/", 1)[1]
    with pg_server.connect() as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')  # type: ignore[arg-type]
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
    try:
        refused = store.sync(1, 2, change(2, 1, item_id="m2"))
        assert refused.failure == SyncFailure.STORE_ERROR
        cannot = store.store.stats().cannot_commit
        assert cannot is not None
        # Which error the writer meets first is a race: the server's notice that it
        # terminated the connection, or libpq finding the socket closed before reading it.
        assert cannot.startswith("AdminShutdown: terminating connection") or (
            "connection is lost" in cannot
        ), cannot
        with pytest.raises(StoreUnavailable):
            asyncio.run(store.store.mark_read("messages", "acc", "m1", 1))
        with pytest.raises(StoreUnavailable):
            asyncio.run(store.store.page("messages", CollectionQuery("acc")))
        assert store.thread.alive
    finally:
        with pg_server.connect() as admin:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')  # type: ignore[arg-type]
    again = store.sync(1, 2, change(2, 1, item_id="m2"))  # the worker's resend
    assert again.ok, again.error
    assert store.store.stats().cannot_commit is None
    deadline = time.monotonic() + 10
    while True:  # the pool replaces its broken connection in the background
        try:
            _rows, total = asyncio.run(store.store.page("messages", CollectionQuery("acc")))
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert total == 2
