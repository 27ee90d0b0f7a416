"""The platforms a worker process can run, and those it cannot.

Each platform is imported on its own. One that raises at import (whatever it raises, even
``SystemExit``), is not found, or is not a class with ``async def run`` is recorded as a
:class:`PlatformFailure` with its traceback; the process goes on with the others, and
each account of a failed platform is ``failed`` in it (see ``account_host``).

A failure holds for the life of the process: a later assignment does not import again.
(A platform the process was not told about at its start, as for an account added through
the API since, is imported at its first assignment; that import blocks the event loop
while it runs, and its files are not in the fingerprint the process registered.)
The process's code fingerprint describes what it loaded at its start; an import on the
event loop would block the heartbeat; and a module that raised half-way may have left
half its state behind. A fix is loaded as any code change is, by new processes
(``hiscrmctl reload``, ``--watch``, a restart): the files a failed import went through
count in the fingerprint, so a change to them makes the process stale. A worker forked
from the template imports again what the template could not load (that is its own
start; a module that has appeared since is found).

Plugin paths (``plugin_paths`` in the config, the config file's directory first) are
appended to ``sys.path`` before anything is imported: they add places to look, and never
hide the standard library, installed packages or hiscrm.
"""

import importlib
import sys
import traceback
from collections.abc import Iterable

import msgspec

from hiscrm.platform_names import resolve_platform_name
from hiscrm.platforms.base import Platform
from hiscrm.platforms.loader import PlatformLoadError, load_platform
from hiscrm.worker.exception_text import cut, describe_exception, format_traceback

MAX_REASON_CHARS = 4_000  # the traceback's end and the error line, as an account shows it
SUMMARY_CHARS = 500


class PlatformFailure(msgspec.Struct, frozen=True):
    """Why a platform cannot run in this process."""

    spec: str
    error: BaseException
    summary: str  # one line: which platform, what went wrong
    reason: str  # the end of the traceback, then the summary (bounded)
    files: tuple[str, ...]  # source files the failed import went through


def failure(spec: str, error: BaseException, what: str) -> PlatformFailure:
    """A failure of ``spec`` to ``what`` ("be loaded", "be constructed")."""
    if isinstance(error, PlatformLoadError):
        summary = f"platform {spec!r} cannot {what}: {error.problem}"
    else:
        summary = f"platform {spec!r} cannot {what}: {describe_exception(error)}"
    summary = cut(summary, SUMMARY_CHARS)
    tail = format_traceback(error)[-(MAX_REASON_CHARS - len(summary) - 1) :]
    return PlatformFailure(spec, error, summary, f"{tail}{summary}", _files_of(error))


def _files_of(error: BaseException) -> tuple[str, ...]:
    """Every file in the tracebacks of ``error``, its causes and contexts and, for a
    group, its members; and the file a SyntaxError is about."""
    files: dict[str, None] = {}
    seen: set[int] = set()
    pending = [error]
    while pending:
        exc = pending.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        for frame in traceback.extract_tb(exc.__traceback__):
            files[frame.filename] = None
        if isinstance(exc, SyntaxError) and isinstance(exc.filename, str):
            files[exc.filename] = None
        pending += [e for e in (exc.__cause__, exc.__context__) if e is not None]
        if isinstance(exc, BaseExceptionGroup):
            pending += list(exc.exceptions)
    return tuple(files)


class PlatformSet(msgspec.Struct):
    classes: dict[str, type[Platform]] = msgspec.field(default_factory=dict)
    failures: dict[str, PlatformFailure] = msgspec.field(default_factory=dict)
    imported_here: bool = False  # imported anything itself (not only taken from a template)

    def find(self, name: str) -> type[Platform] | PlatformFailure | None:
        """The class for a platform name (as an account gives it), why there is none, or
        None if this process has not tried to load it."""
        spec = resolve_platform_name(name)
        cls = self.classes.get(spec)
        return cls if cls is not None else self.failures.get(spec)

    def load(self, spec: str) -> type[Platform] | PlatformFailure:
        """Import ``spec`` now, recording the class or the failure."""
        self.imported_here = True
        try:
            cls = self.classes[spec] = load_platform(spec)
        except BaseException as exc:  # whatever a module's code raises, even SystemExit
            failed = self.failures[spec] = failure(spec, exc, "be loaded")
            return failed
        return cls

    def errors(self) -> dict[str, str]:
        """Spec -> reason, for the registration."""
        return {spec: f.reason for spec, f in sorted(self.failures.items())}

    def idempotent(self) -> list[str]:
        """Specs whose class says its sends are idempotent (``sends_idempotent = True``)."""
        return sorted(
            s for s, c in self.classes.items() if getattr(c, "sends_idempotent", False) is True
        )

    def failure_files(self) -> list[str]:
        return [path for f in self.failures.values() for path in f.files]


def add_plugin_paths(paths: Iterable[str]) -> None:
    """Append ``paths`` to ``sys.path`` (each once)."""
    for path in paths:
        if path not in sys.path:
            sys.path.append(path)


def load_platforms(specs: Iterable[str], preloaded: PlatformSet | None = None) -> PlatformSet:
    """Import each platform of ``specs`` on its own; what ``preloaded`` (the template's)
    holds is taken as is, what it could not load is tried again."""
    loaded = PlatformSet()
    for spec in specs:
        if preloaded is not None and spec in preloaded.classes:
            loaded.classes[spec] = preloaded.classes[spec]
            continue
        if not loaded.imported_here and preloaded is not None:
            importlib.invalidate_caches()  # a module that appeared since the template looked
        loaded.load(spec)
    return loaded
