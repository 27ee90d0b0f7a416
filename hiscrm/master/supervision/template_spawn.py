"""Starting a fork template (``hiscrm/worker/template.py``): a fresh interpreter that loads
the worker runtime at once and then waits on its control socket for its boot data (the
settings and platforms every worker shares, and its log file), which the master sends
when it has read its configuration.

Standard library only: the master starts its first template before it imports anything
else (``hiscrm.master.launch``), so on a machine with two cores the template loads the
worker code while the master loads itself, and the first workers fork from it as soon
as the master can supervise them. Later templates (after a code change, or when one
died) start the same way and are sent their boot data at once.

The interpreter runs with ``-P``: the working directory is never on the template's path,
so a directory there named like a module it imports cannot stand in for it.
"""

import json
import os
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from hiscrm.protocol import WorkerBoot

# argv[1]: the control socket's fd; argv[2]: the master's pid (the template checks that
# it is still its parent once it has asked for the parent-death signal).
TEMPLATE_CODE = (
    "import sys; from hiscrm.worker.template import main; main(int(sys.argv[1]), int(sys.argv[2]))"
)


class StartedTemplate:
    """A template process just started (it needs no event loop yet): the process, the
    master's end of its control socket, the boot data it was sent (None until then), and
    when it started. (No dataclass: this module is imported before the template starts,
    and ``dataclasses`` would delay that start by its own import.)"""

    def __init__(
        self, process: "subprocess.Popen[bytes]", control: socket.socket, began: float
    ) -> None:
        self.process = process
        self.control = control
        self.began = began
        self.sample: WorkerBoot | None = None
        self.adopted = False  # a launcher made it its own

    def boot(self, sample: "WorkerBoot", log_path: "Path", spares: int = 1) -> None:
        """Send it what to load, where to log, and how many workers to fork ahead once
        ready (the first workers of a master that starts); OSError if it is gone."""
        message = {
            "type": "boot",
            "log_path": str(log_path),
            "sample": sample.model_dump_json(),
            "spares": spares,
        }
        self.control.send(json.dumps(message).encode())
        self.sample = sample

    def abandon(self) -> None:
        """Not used after all: it goes (it holds nothing yet), and is reaped."""
        self.control.close()
        self.process.kill()
        self.process.wait(timeout=1.0)  # a killed process is gone in milliseconds


def template_argv(control_fd: int) -> list[str]:
    """The template's command line: this interpreter, with this process's flags and
    ``-P``."""
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    if "-P" not in flags:
        flags.append("-P")
    return [sys.executable, *flags, "-c", TEMPLATE_CODE, str(control_fd), str(os.getpid())]


def spawn_template() -> StartedTemplate:
    """Start a template process; send it its boot data with ``StartedTemplate.boot``."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        process = subprocess.Popen(
            template_argv(theirs.fileno()), stdin=subprocess.DEVNULL, pass_fds=[theirs.fileno()]
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return StartedTemplate(process, ours, time.monotonic())
