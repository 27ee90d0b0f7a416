"""The master's first steps, before it imports the rest of itself: the fork template
starts here, so it loads the worker code on one core while the master loads itself
(pydantic, its configuration, the store, the API) on the other. Standard library only,
and nothing that can fail loudly: a template that cannot start here starts later, and
one the configuration turns out not to want is let go (``cli``).

Not for ``--help`` or ``--version``: nothing is started for those.
"""

import gc
import os
import sys

from hiscrm import lean_imports, prctl, safe_path
from hiscrm.master.supervision.template_spawn import StartedTemplate, spawn_template

NOTHING_TO_RUN = frozenset({"-h", "--help", "--version"})


def start_template_early(args: list[str]) -> StartedTemplate | None:
    """A template loading the worker runtime, waiting for its boot data; None when
    nothing will run or it cannot start now (the launcher says why, later)."""
    if NOTHING_TO_RUN.intersection(args):
        return None
    try:
        prctl.set_child_subreaper()  # before it can fork: its workers are the master's
        return spawn_template()
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    # The collector stays off while the master loads: what it makes then (modules,
    # classes, models) lives as long as the master, and collections of that growing heap
    # would only walk it. It comes on, with that heap frozen out of its way, once the API
    # is built (``app.open_front``).
    gc.disable()
    # The service manager's socket is the master's alone: it leaves the environment
    # before the template (and so every worker forked from it) starts.
    notify_socket = os.environ.pop("NOTIFY_SOCKET", None)
    safe_path.keep_off_started_interpreters()
    early = start_template_early(args)
    lean_imports.import_structlog()
    from hiscrm.master.cli import main as run

    return run(args, early, notify_socket)
