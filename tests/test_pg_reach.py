"""Which failures to use PostgreSQL are waited out (the master starts and keeps trying)
and which stop it at once: ``pg_reach.classify``, a pure function."""

import psycopg
import pytest
from psycopg import errors

from hiscrm.master.data.pg_reach import Reach, classify, one_line
from hiscrm.master.data.pg_schema import SchemaTooNew

T, P = Reach.TRANSIENT, Reach.PERMANENT
AT = 'connection failed: connection to server at "127.0.0.1", port 5999 failed: '


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (psycopg.OperationalError(AT + "Connection refused\n\tIs the server running?"), T),
        (psycopg.OperationalError(AT + "timeout expired"), T),
        (psycopg.OperationalError(AT + "FATAL:  the database system is starting up"), T),
        (psycopg.OperationalError(AT + "FATAL:  the database system is shutting down"), T),
        (psycopg.OperationalError(AT + "FATAL:  sorry, too many clients already"), T),
        (
            psycopg.OperationalError(
                AT + "FATAL:  remaining connection slots are reserved for roles with SUPERUSER"
            ),
            T,
        ),
        (psycopg.OperationalError(AT + "No route to host"), T),
        (psycopg.OperationalError(AT + "server closed the connection unexpectedly"), T),
        (
            psycopg.OperationalError(
                'connection failed: could not translate host name "db" to address: '
                "Temporary failure in name resolution"
            ),
            T,
        ),
        (
            psycopg.OperationalError(
                AT + 'FATAL:  database "x" is not currently accepting connections'
            ),
            T,
        ),
        (errors.AdminShutdown("terminating connection due to administrator command"), T),
        (errors.CannotConnectNow("the database system is starting up"), T),
        (errors.TooManyConnections("too many"), T),
        (ConnectionResetError(104, "Connection reset by peer"), T),
        (
            psycopg.OperationalError(
                AT + 'FATAL:  password authentication failed for user "hiscrm"'
            ),
            P,
        ),
        (psycopg.OperationalError(AT + 'FATAL:  no pg_hba.conf entry for host "10.0.0.1"'), P),
        (psycopg.OperationalError(AT + 'FATAL:  database "nope" does not exist'), P),
        (errors.InvalidPassword("password authentication failed"), P),
        (errors.InvalidCatalogName('database "nope" does not exist'), P),
        (errors.InsufficientPrivilege("permission denied for schema public"), P),
        (psycopg.ProgrammingError('invalid connection option "colour"'), P),
        (SchemaTooNew("the store has schema version 99, this program knows up to 7"), P),
        (psycopg.OperationalError("something nobody has seen before"), P),
        (ValueError("a bug"), P),
    ],
    ids=lambda v: one_line(v)[:60] if isinstance(v, BaseException) else str(v),
)
def test_classify(error: BaseException, expected: Reach) -> None:
    assert classify(error) is expected


def test_one_line_joins_libpq_lines() -> None:
    error = psycopg.OperationalError(
        AT + "Connection refused\n\tIs the server running on that host?"
    )
    assert one_line(error) == (
        f"OperationalError: {AT}Connection refused Is the server running on that host?"
    )
