"""Whether each platform module can be found, without importing it (the master never runs
platform code): at start, a platform that cannot be found is reported on the console and
in ``/healthz``, instead of being discovered by workers failing one after another."""

import sys
from importlib.machinery import ModuleSpec, PathFinder

from hiscrm.models import AccountSpec
from hiscrm.platform_names import resolve_platform_name


def find_module(name: str, search: list[str]) -> ModuleSpec | None:
    """The spec of module ``name`` on ``search`` (then ``sys.path``), walking its
    packages' paths; nothing is imported."""
    parts = name.split(".")
    spec = PathFinder.find_spec(parts[0], [*search, *sys.path])
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
