"""The working directory kept off the path of every interpreter hiscrm starts.

``python -m hiscrm.master`` puts the working directory first on the master's path: a
directory there holding a checkout as ``hiscrm/``, or a module named like one the master
or a worker imports (``socket.py``, ``types.py``, ``pydantic/``), would be imported
instead of the real one. The master takes it off its own path (``hiscrm/master/__main__``)
and, once at its start (before it has any thread), sets ``PYTHONSAFEPATH`` in its
environment: every interpreter it starts then keeps the working directory off its path
from its first import (a worker spawned by ``multiprocessing``, whose command line the
master does not choose, as well as the template). A worker takes the variable out of its
environment again, and a hook's command never gets it, so what they run in turn sees the
environment the master was given. Standard library only.
"""

import os

VARIABLE = "PYTHONSAFEPATH"
OURS = "hiscrm"  # any non-empty value turns it on; this one says the master set it


def keep_off_started_interpreters() -> None:
    """In the master, before it starts any process or thread. A value the user set is
    theirs, and left as it is."""
    if not os.environ.get(VARIABLE):
        os.environ[VARIABLE] = OURS


def forget() -> None:
    """In a worker: the variable out of its environment, if the master set it (its own
    path is fixed already)."""
    if os.environ.get(VARIABLE) == OURS:
        del os.environ[VARIABLE]


def plain_environment() -> dict[str, str]:
    """The master's environment as it was given, for what it runs on the user's behalf."""
    env = dict(os.environ)
    if env.get(VARIABLE) == OURS:
        del env[VARIABLE]
    return env
