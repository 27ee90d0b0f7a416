"""A picklable reference to a function by name, imported only where it is called.

The master hands ``Entrypoint("hiscrm.worker.bootstrap:main")`` to multiprocessing as the
worker's target, so the master never imports worker code and the worker imports it fresh
from disk. Standard library only.
"""

import importlib
from typing import Any


class Entrypoint:
    def __init__(self, spec: str) -> None:
        self.spec = spec  # "package.module:function"

    def __call__(self, *args: Any) -> Any:
        module_name, _, function_name = self.spec.partition(":")
        function = getattr(importlib.import_module(module_name), function_name)
        return function(*args)

    def __repr__(self) -> str:
        return f"Entrypoint({self.spec!r})"
