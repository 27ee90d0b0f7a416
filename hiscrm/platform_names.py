"""Platform names: the built-in ones, and how a name in the configuration becomes a
``module:Class`` spec. Only names: importing happens in ``platforms.loader``, inside
workers.

A platform is named either by a built-in name (``demo``) or by ``package.module:ClassName``.
"""

import re

BUILTIN_PLATFORMS: dict[str, str] = {
    "demo": "hiscrm.platforms.demo:DemoPlatform",
}

_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def resolve_platform_name(name: str) -> str:
    """Return the ``module:Class`` spec for a built-in name or a spec; ValueError otherwise."""
    if name in BUILTIN_PLATFORMS:
        return BUILTIN_PLATFORMS[name]
    if _SPEC.match(name):
        return name
    builtins = ", ".join(sorted(BUILTIN_PLATFORMS))
    raise ValueError(
        f"{name!r} is neither a built-in platform ({builtins}) nor 'package.module:ClassName'"
    )
