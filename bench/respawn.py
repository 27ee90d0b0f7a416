"""Respawn latency, rolling reload and memory per worker, with the fork template and
with plain spawn.

1. Respawn: a real master with 4 idle workers (``python -m hiscrm.master``); SIGKILL one
   worker at a time, round robin, ``--kills`` times, and time from the kill until the
   master noticed and until the replacement registered. Timestamps come from the
   master's own log (``worker exited`` with the moment its pidfd fired, and the
   ``running`` transition) against the moment of the kill; the log is read only after
   each respawn, so this script does not compete for the CPU meanwhile. The script
   waits on the worker's pidfd itself, which separates the kernel's teardown of the
   killed process from the master's reaction. Backoff resets after 0.5 s and each
   worker has run that long before it is killed: this measures the start path.
2. Rolling reload: 8 workers with 16 demo accounts, ``--reloads`` times SIGHUP; the
   total time of each reload and the largest per-account gap (revoked in the old
   process → running in the new one).
3. USS (memory only that process has) of each idle worker, and its RSS.

    python bench/respawn.py [--kills 50] [--reloads 5]
"""

import argparse
import os
import select
import signal
import statistics
import time
from typing import Any

import psutil
from common import Log, at, machine, running_master, summary

CONFIG = """
workers = {workers}
[api]
port = 0
[supervision]
fork_template = {fork}
heartbeat_interval_s = 1
heartbeat_timeout_s = 10
backoff_initial_s = 0.5
backoff_max_s = 5
backoff_reset_after_s = 0.5
"""

ACCOUNT = """
[[accounts]]
id = "acc-{n}"
platform = "demo"
options = {{ rate = 5.0, seed = {n} }}
"""

MODES = {"template": "true", "spawn": "false"}


def wait_running(log: Log, workers: int) -> dict[str, dict[str, Any]]:
    ids = [f"worker{n}" for n in range(1, workers + 1)]
    return {w: log.wait(0, event="worker state", worker=w, new="running") for w in ids}


def respawn(fork: str, kills: int, workers: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {
        k: [] for k in ("teardown", "noticed", "logged", "registered", "start", "boot")
    }
    with running_master(CONFIG.format(workers=workers, fork=fork)) as (_, _, log):
        running = wait_running(log, workers)
        ids = sorted(running)
        for n in range(kills):
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
            time.sleep(0.2 if fork == "true" else 0.6)  # read the log only afterwards
            exited = log.wait(mark, event="worker exited", worker=worker)
            back = log.wait(mark, event="worker state", worker=worker, new="running")
            figures["teardown"].append((dead_at - killed_at) * 1000)
            figures["noticed"].append((exited["noticed_at"] - dead_at) * 1000)
            figures["logged"].append((at(exited) - killed_at) * 1000)
            figures["registered"].append((at(back) - killed_at) * 1000)
            figures["start"].append(back["start_ms"])
            figures["boot"].append(back["boot_ms"])
            running[worker] = back
    return figures


def memory(fork: str, workers: int) -> tuple[list[float], list[float]]:
    """USS and RSS (MiB) of each idle worker."""
    with running_master(CONFIG.format(workers=workers, fork=fork)) as (_, _, log):
        running = wait_running(log, workers)
        time.sleep(2.0)
        mib = 1 << 20
        processes = [psutil.Process(e["pid"]) for e in running.values()]
        return (
            [p.memory_full_info().uss / mib for p in processes],
            [p.memory_info().rss / mib for p in processes],
        )


def rolling_reload(fork: str, reloads: int, workers: int) -> tuple[list[float], list[float]]:
    """Total seconds of each reload, and its largest per-account gap in ms."""
    accounts = "".join(ACCOUNT.format(n=n) for n in range(1, 2 * workers + 1))
    took, gaps = [], []
    with running_master(CONFIG.format(workers=workers, fork=fork) + accounts) as (
        master,
        _,
        log,
    ):
        wait_running(log, workers)
        time.sleep(1.0)
        for _ in range(reloads):
            mark = len(log.poll())
            os.kill(master.pid, signal.SIGHUP)
            done = log.wait(mark, timeout=120, event="reload complete")
            steps = [e for e in log.poll()[mark:] if e["event"] == "reload: worker replaced"]
            assert len(steps) == workers, f"{len(steps)} of {workers} workers replaced"
            took.append(done["took_s"])
            gaps.append(max(s["max_gap_ms"] for s in steps))
            time.sleep(1.0)
    return took, gaps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--reloads", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4, help="for respawn and memory")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    for mode, fork in MODES.items():
        kills = args.kills if mode == "template" else max(10, args.kills // 2)
        figures = respawn(fork, kills, args.workers)
        print(f"\nrespawn, {mode}: {kills} SIGKILLs, {args.workers} idle workers")
        print(summary("kill -> dead (kernel teardown)", figures["teardown"]))
        print(summary("dead -> noticed by the master", figures["noticed"]))
        print(summary("exit logged with reason and tail", figures["logged"]))
        print(summary("kill -> replacement registered", figures["registered"]))
        print(summary("  of which: start -> registered", figures["start"]))
        print(summary("  of which: in the worker", figures["boot"]))
    for mode, fork in MODES.items():
        took, gaps = rolling_reload(fork, args.reloads, 8)
        print(f"\nrolling reload, {mode}: 8 workers, 16 accounts, {args.reloads} reloads")
        print(summary("total", [t * 1000 for t in took]))
        print(summary("largest per-account gap", gaps))
    for mode, fork in MODES.items():
        uss, rss = memory(fork, args.workers)
        print(
            f"\nidle worker memory, {mode}: USS p50 {statistics.median(uss):.1f} MiB, "
            f"RSS p50 {statistics.median(rss):.1f} MiB ({args.workers} workers)"
        )


if __name__ == "__main__":
    main()
