"""Importing platform classes by name, inside a worker."""

import importlib
import inspect

from hiscrm.platform_names import resolve_platform_name
from hiscrm.platforms.base import Platform


class PlatformLoadError(Exception):
    """A platform could not be imported or is not a platform class."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"platform {name!r}: {problem}")
        self.problem = problem


def load_platform(name: str) -> type[Platform]:
    """Import ``name`` (a built-in name or ``package.module:ClassName``) and return the class.

    Exceptions raised by the module's own code propagate unchanged, with their traceback;
    a module or class that does not exist, or a class without ``async def run``, raises
    PlatformLoadError.
    """
    spec = resolve_platform_name(name)
    module_name, _, class_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and f"{module_name}.".startswith(f"{exc.name}."):
            raise PlatformLoadError(name, f"no module named {exc.name!r}") from exc
        raise
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise PlatformLoadError(name, f"module {module_name!r} has no class {class_name!r}")
    if not inspect.iscoroutinefunction(getattr(cls, "run", None)):
        raise PlatformLoadError(name, f"{class_name} has no 'async def run(self, ctx)'")
    return cls
