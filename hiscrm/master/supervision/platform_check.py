"""Where platform modules are looked for, and whether each can be found, without importing
it (the master never runs platform code): at start, a platform that cannot be found is
reported on the console and in ``/healthz``, instead of being discovered by workers
failing one after another.

Platforms are looked for on the master's ``sys.path`` and then on ``plugin_paths`` (the
config file's directory first). The master appends those to its own ``sys.path`` too, so
that everything that finds code by name (the code version, ``--watch``, this check)
finds what the workers find."""

import importlib.util
import sys
from collections.abc import Iterable
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

from hiscrm.models import AccountSpec
from hiscrm.platform_names import resolve_platform_name
from hiscrm.protocol import WorkerRegister


def use_plugin_paths(paths: Iterable[Path]) -> list[str]:
    """Append ``paths`` to this process's ``sys.path`` (each once); them, as strings, for
    the workers' boot and ``missing_platforms``."""
    found = [str(path) for path in paths]
    for path in found:
        if path not in sys.path:
            sys.path.append(path)
    return found


def find_module(name: str, search: list[str]) -> ModuleSpec | None:
    """The spec of module ``name`` as an import would find it, then on ``search``,
    walking its packages' paths; nothing is imported."""
    parts = name.split(".")
    try:  # a top-level name imports nothing; this also asks import hooks (editable installs)
        spec = importlib.util.find_spec(parts[0])
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        spec = PathFinder.find_spec(parts[0], list(dict.fromkeys([*sys.path, *search])))
    for depth in range(1, len(parts)):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = PathFinder.find_spec(
            ".".join(parts[: depth + 1]), list(spec.submodule_search_locations)
        )
    return spec


def missing_platforms(accounts: list[AccountSpec], search: list[str]) -> dict[str, list[str]]:
    """Platform spec -> the accounts using it, for every platform whose module is not
    there."""
    by_spec: dict[str, list[str]] = {}
    for account in accounts:
        by_spec.setdefault(resolve_platform_name(account.platform), []).append(account.id)
    return {
        spec: ids
        for spec, ids in by_spec.items()
        if find_module(spec.partition(":")[0], search) is None
    }


def lost_platforms(old: WorkerRegister | None, new: WorkerRegister) -> dict[str, str]:
    """Platforms a reload's replacement could not load although the process it replaces
    runs them (spec -> why, as the new process said): taking over would turn running
    accounts into failed ones. Nothing is lost against a process that never registered,
    or for a platform the old process could not load either."""
    if old is None:
        return {}
    return {
        spec: why
        for spec, why in sorted(new.platform_errors.items())
        if spec not in old.platform_errors
    }
