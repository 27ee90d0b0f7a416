"""``python -m hiscrm.master``: the same as the ``hiscrm-master`` script.

``-m`` puts the working directory first on ``sys.path``, and workers are given the
master's path: a directory holding the repository checked out as ``hiscrm/``, or a module
named like one the master or a worker imports, would be imported instead of the
installed code. So the master first starts itself again as ``python -P`` (in the same
process: ``exec`` keeps the pid), without the working directory on its path.
"""

import os
import sys

if not sys.flags.safe_path and sys.executable:
    os.execv(sys.executable, [sys.executable, "-P", *sys.orig_argv[1:]])

from hiscrm.master.launch import main

raise SystemExit(main())
