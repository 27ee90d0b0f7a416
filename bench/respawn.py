"""Respawn latency: SIGKILL a worker, time until the master noticed and until the
replacement registered.

Runs a real master with 4 idle workers (``python -m hiscrm.master``) and kills one worker
at a time, round robin, ``--kills`` times. Timestamps come from the master's own log
(``worker exited`` with the moment its pidfd fired, and the ``running`` transition) against
the moment of the kill, so the polling of this script does not add to the figures. The
script also waits on the worker's pidfd itself, which separates the kernel's teardown of
the killed process from the master's reaction to it. Backoff is set to reset after 0.5 s
and each worker has run that long before it is killed, so every restart is immediate:
this measures the start path, not the backoff policy.

    python bench/respawn.py [--kills 50] [--workers 4]
"""

import argparse
import os
import select
import signal
import time

from common import at, machine, running_master, summary

CONFIG = """
workers = {workers}
[api]
port = 0
[supervision]
heartbeat_interval_s = 1
heartbeat_timeout_s = 10
backoff_initial_s = 0.5
backoff_max_s = 5
backoff_reset_after_s = 0.5
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    with running_master(CONFIG.format(workers=args.workers)) as (_, _, log):
        ids = [f"worker{n}" for n in range(1, args.workers + 1)]
        running = {w: log.wait(0, event="worker state", worker=w, new="running") for w in ids}
        teardown, noticed, logged, registered, start_ms, boot_ms = [], [], [], [], [], []
        for n in range(args.kills):
            worker = ids[n % len(ids)]
            up = running[worker]
            while time.time() - at(up) < 0.6:  # let its backoff reset
                time.sleep(0.01)
            mark = len(log.poll())
            pidfd = os.pidfd_open(up["pid"])  # to see when the kernel has it dead
            killed_at = time.time()
            os.kill(up["pid"], signal.SIGKILL)
            select.select([pidfd], [], [], 10)
            dead_at = time.time()
            os.close(pidfd)
            time.sleep(0.2)  # read the log afterwards: polling it now would compete for CPU
            exited = log.wait(mark, event="worker exited", worker=worker)
            back = log.wait(mark, event="worker state", worker=worker, new="running")
            teardown.append((dead_at - killed_at) * 1000)
            noticed.append((exited["noticed_at"] - dead_at) * 1000)
            logged.append((at(exited) - killed_at) * 1000)
            registered.append((at(back) - killed_at) * 1000)
            start_ms.append(back["start_ms"])
            boot_ms.append(back["boot_ms"])
            running[worker] = back

    print(f"machine: {machine()}")
    print(f"{args.kills} SIGKILLs, {args.workers} workers, plain spawn")
    print(summary("kill -> dead (kernel teardown)", teardown))
    print(summary("dead -> noticed by the master", noticed))
    print(summary("exit logged with reason and tail", logged))
    print(summary("kill -> replacement registered", registered))
    print(summary("  of which: start -> registered", start_ms))
    print(summary("  of which: in the worker", boot_ms))


if __name__ == "__main__":
    main()
