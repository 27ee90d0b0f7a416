"""The working directory kept off the path of every interpreter hiscrm starts.

``python -m hiscrm.master`` puts the working directory first on the master's path: a
directory there holding a checkout as ``hiscrm/``, or a module named like one the master
or a worker imports (``socket.py``, ``types.py``, ``pydantic/``), would be imported
instead of the real one. The master takes it off its own path (``hiscrm/master/__main__``),
starts the template with ``-P``, and starts a spawned worker (``multiprocessing`` spawn,
whose command line it does not choose) with ``PYTHONSAFEPATH`` set for that start only;
the worker takes it out of its environment again, so what its platform starts in turn
sees the environment the master had. Standard library only.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

VARIABLE = "PYTHONSAFEPATH"
OURS = "hiscrm"  # any non-empty value turns it on; this one says the master set it


@contextmanager
def for_spawned_interpreter() -> Iterator[None]:
    """Around starting an interpreter: the working directory stays off its path."""
    if os.environ.get(VARIABLE):
        yield  # set already (by the user): it is theirs, and on
        return
    os.environ[VARIABLE] = OURS
    try:
        yield
    finally:
        del os.environ[VARIABLE]


def forget() -> None:
    """In the started interpreter: the variable out of the environment, if the master
    set it (its own path is fixed already)."""
    if os.environ.get(VARIABLE) == OURS:
        del os.environ[VARIABLE]
