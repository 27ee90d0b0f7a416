"""``python -m hiscrm.master``: the same as the ``hiscrm-master`` script.

``-m`` puts the working directory first on ``sys.path``, and workers are given the
master's path: a directory holding the repository checked out as ``hiscrm/``, or a module
named like one the master or a worker imports, would be imported instead of the
installed code (see ``hiscrm.safe_path``). So the working directory comes off the path
here, before anything else is imported. If something already imported came from there
(``hiscrm`` itself, from a checkout in the working directory), the master starts itself
again as ``python -P`` (in the same process: ``exec`` keeps the pid) so that it is
imported from where it is installed.
"""

import os
import sys


def _loaded_from(directory: str) -> bool:
    """Whether a module or package imported so far came from ``directory``, even in
    part (a namespace package, a directory without ``__init__.py``, has no file: its
    path says where it was found)."""
    prefix = os.path.join(os.path.abspath(directory), "")
    for module in list(sys.modules.values()):
        places = [getattr(module, "__file__", None), *getattr(module, "__path__", ())]
        for place in places:
            if isinstance(place, str) and os.path.abspath(place).startswith(prefix):
                return True
    return False


if not sys.flags.safe_path and sys.path:
    if sys.executable and _loaded_from(sys.path[0] or os.curdir):
        os.execv(sys.executable, [sys.executable, "-P", *sys.orig_argv[1:]])
    del sys.path[0]

from hiscrm.master.launch import main  # noqa: E402  (the path is right only now)

raise SystemExit(main())
