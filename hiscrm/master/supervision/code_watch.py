"""``--watch``: a saved change to a file that a worker runs triggers a rolling reload.

The watched directories are those of the packages the processes load code from: hiscrm,
the packages in ``code.packages`` and each platform's top-level package (found without
importing it). A change counts only if it touches a file in some process's fingerprint
(the master's own, or one a worker reported at registration); changes are grouped until
the files have been quiet for ``QUIET_MS``. A change to the master's own code is logged
as a warning: only a master restart loads that.
"""

import asyncio
import os
from importlib.machinery import PathFinder
from pathlib import Path

from structlog.typing import FilteringBoundLogger
from watchfiles import Change, awatch

from hiscrm.config import Config
from hiscrm.master.supervision.commands import CommandRefused, ReloadWorkers
from hiscrm.master.supervision.supervisor import Supervisor

QUIET_MS = 300  # a burst of saves (an editor, a git checkout) is one reload
RETRY_S = 0.5  # a reload already under way: try again after it


def watch_roots(config: Config) -> list[Path]:
    """Directories (or single module files) to watch, none inside another."""
    names = {"hiscrm", *config.code.packages}
    for spec in config.platform_specs:
        module, sep, _ = spec.partition(":")
        if sep:
            names.add(module.partition(".")[0])
    found: set[Path] = set()
    for name in sorted(names):
        found_spec = PathFinder.find_spec(name)
        if found_spec is None:
            continue
        if found_spec.submodule_search_locations:
            found.update(Path(os.path.realpath(p)) for p in found_spec.submodule_search_locations)
        elif found_spec.origin:
            found.add(Path(os.path.realpath(found_spec.origin)))
    return [p for p in sorted(found) if not any(o != p and o in p.parents for o in found)]


class CodeWatcher:
    def __init__(self, supervisor: Supervisor, log: FilteringBoundLogger) -> None:
        self._supervisor = supervisor
        self._log = log

    async def run(self, stop: asyncio.Event) -> None:
        roots = watch_roots(self._supervisor.config)
        master_files = {f.path for f in self._supervisor.code.master_files}
        self._log.info("watching code for changes", roots=[str(r) for r in roots])
        async for changes in awatch(*roots, step=QUIET_MS, stop_event=stop):
            paths = {os.path.realpath(path) for change, path in changes if change in _CHANGES}
            ours = sorted(paths & master_files)
            theirs = sorted(paths & self._supervisor.worker_code_files())
            if ours:
                self._log.warning(
                    "the master's own code changed; only a master restart loads it",
                    files=ours[:10],
                )
            if theirs:
                self._log.info("worker code changed; reloading", files=theirs[:10])
                await self._reload(stop)

    async def _reload(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self._supervisor.shutting_down:
            try:
                await self._supervisor.command(ReloadWorkers(why="--watch"))
            except CommandRefused as exc:
                if self._supervisor.shutting_down:
                    return
                self._log.info("reload after the one under way", reason=str(exc))
                await asyncio.sleep(RETRY_S)
                continue
            return


_CHANGES = (Change.added, Change.modified)
