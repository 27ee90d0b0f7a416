"""Why PostgreSQL could not be used: for a while (wait and try again) or for good (stop).

A master whose server cannot be reached *for now* starts anyway and keeps trying (the
store's writer, with backoff; ``/healthz`` failing meanwhile); one that can never use it
as configured stops at once with one line, since waiting would not help:

========================================================  ===========
what                                                      ``Reach``
========================================================  ===========
connection refused, timed out, reset, no route, network   TRANSIENT
the server starting up, shutting down, in recovery        TRANSIENT
too many connections, out of resources (class 53)         TRANSIENT
a connection exception (class 08), operator intervention  TRANSIENT
  (class 57: terminated, shutting down, cannot connect
  now)
a host name that does not resolve (yet: a service not    TRANSIENT
  created, DNS not ready)
any other ``OSError``                                     TRANSIENT
wrong password, no ``pg_hba.conf`` entry, any class 28    PERMANENT
no such database or role (3D000, 28000), no privilege     PERMANENT
an invalid URL or connection option                       PERMANENT
a schema newer than this program (``SchemaTooNew``)       PERMANENT
anything else (a migration that fails, a bug)             PERMANENT
========================================================  ===========

libpq reports a failed connection as text only (psycopg's ``OperationalError`` then has
no SQLSTATE), so those are told apart by the phrases libpq uses; errors of statements
carry their SQLSTATE, which decides first. Unknown failures count as permanent: at the
start they stop the master with the reason rather than retrying a mistake forever.
"""

import enum

import psycopg

from hiscrm.master.data.pg_schema import SchemaTooNew


class Reach(enum.Enum):
    TRANSIENT = "transient"  # try again later: the server is down, busy, or not there yet
    PERMANENT = "permanent"  # as configured, this store can never be used: stop


# SQLSTATE classes and codes: connection exception, insufficient resources, operator
# intervention (admin/crash shutdown, cannot connect now).
_TRANSIENT_CLASSES = ("08", "53", "57")
_PERMANENT_CLASSES = ("28", "3D", "42")

# libpq's phrases for a server it cannot reach, or that is not ready for us yet.
_TRANSIENT_PHRASES = (
    "connection refused",
    "timeout expired",
    "timed out",
    "no route to host",
    "network is unreachable",
    "connection reset",
    "server closed the connection unexpectedly",
    "could not receive data from server",
    "could not send data to server",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections",
    "is not currently accepting connections",  # ALLOW_CONNECTIONS false, for a while
    "too many clients already",
    "too many connections",
    "remaining connection slots are reserved",
    "could not translate host name",
    "temporary failure in name resolution",
    "no such file or directory",  # a Unix socket not there (yet): the server is not up
    "connection is lost",
    "consuming input failed",
)


def classify(error: BaseException) -> Reach:
    """Whether waiting could make the store usable (``TRANSIENT``) or not."""
    if isinstance(error, SchemaTooNew):
        return Reach.PERMANENT
    sqlstate = getattr(error, "sqlstate", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        if sqlstate.startswith(_TRANSIENT_CLASSES):
            return Reach.TRANSIENT
        if sqlstate.startswith(_PERMANENT_CLASSES):
            return Reach.PERMANENT
    if isinstance(error, psycopg.OperationalError):
        text = " ".join(str(error).split()).lower()
        if any(phrase in text for phrase in _TRANSIENT_PHRASES):
            return Reach.TRANSIENT
        return Reach.PERMANENT
    if isinstance(error, psycopg.Error):  # ProgrammingError (a bad option), a failed DDL
        return Reach.PERMANENT
    if isinstance(error, OSError):
        return Reach.TRANSIENT
    return Reach.PERMANENT


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line (libpq's messages span several)."""
    return f"{type(error).__name__}: {' '.join(str(error).split())}"
