"""Process titles, as ``ps``, ``top`` and ``systemctl status`` show them: ``hiscrm:
master``, ``hiscrm: template``, ``hiscrm: spare`` and ``hiscrm: worker1 [acc-1 acc-2]``
(a worker's title follows the accounts it is given).

``setproctitle`` writes the title over the process's command line. ``SPT_NOENV`` keeps
it from spilling over the environment block as well, so ``/proc/PID/environ`` stays
readable (operators and tools look there); a title is then at most as long as the
command line the process was started with, and a worker's accounts are shortened to fit
(``[acc-1 acc-2 +8]``).
"""

import os
import sys
from collections.abc import Iterable

import setproctitle

PREFIX = "hiscrm: "
MASTER = f"{PREFIX}master"
TEMPLATE = f"{PREFIX}template"
SPARE = f"{PREFIX}spare"


def set_title(title: str) -> None:
    os.environ.setdefault("SPT_NOENV", "1")  # read at the first call, not at import
    setproctitle.setproctitle(title)


def room() -> int:
    """The characters a title can have: the length of the original command line (a
    process forked from another has that one's)."""
    return len(" ".join(sys.orig_argv))


def worker_title(worker_id: str, accounts: Iterable[str], room: int) -> str:
    """``hiscrm: worker1 [acc-1 acc-2]``, with as many accounts as fit in ``room`` and
    the number of the others (``[acc-1 +9]``)."""
    names = sorted(accounts)
    head = f"{PREFIX}{worker_id} ["
    shown: list[str] = []
    length = len(head) + 1  # and "]"
    for index, name in enumerate(names):
        others = len(names) - index - 1
        extra = len(name) + (1 if shown else 0)
        more = len(f" +{others}") if others else 0
        if length + extra + more > room:
            hidden = len(names) - len(shown)
            shown.append(f"+{hidden}")
            break
        shown.append(name)
        length += extra
    return f"{head}{' '.join(shown)}]"


class WorkerTitle:
    """A worker's title, kept in step with the accounts the master gives it."""

    def __init__(self, worker_id: str) -> None:
        self._worker_id = worker_id
        self._accounts: set[str] = set()
        self._room = room()

    @property
    def title(self) -> str:
        return worker_title(self._worker_id, self._accounts, self._room)

    def show(self) -> None:
        set_title(self.title)

    def add(self, account_id: str) -> None:
        if account_id not in self._accounts:
            self._accounts.add(account_id)
            self.show()

    def remove(self, account_id: str) -> None:
        if account_id in self._accounts:
            self._accounts.discard(account_id)
            self.show()
