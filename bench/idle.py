"""Master CPU while many workers sit idle, and what each idle worker costs.

A master with ``--workers`` workers (default settings otherwise: heartbeats every 5 s),
each with one account of a platform that does nothing, so the only traffic is
supervision: heartbeats and the idle syncs that prove each account's sync path works.
Once every worker has registered and ``--settle`` seconds have passed, the master's
CPU time (user + system, psutil) is sampled over ``--seconds``; so is the workers'.
Nothing polls the API meanwhile.

    python bench/idle.py [--workers 50] [--seconds 30] [--settle 10] [--runs 3]
"""

import argparse
import json
import statistics
import time

import httpx
import psutil
from common import machine, running_master

CONFIG = """
workers = {workers}
accounts_per_worker = 1
[api]
port = 0
[supervision]
fork_template = {fork}
"""

ACCOUNT = """
[[accounts]]
id = "quiet-{n}"
platform = "benchplatforms:Quiet"
"""


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def idle_run(workers: int, seconds: float, settle: float, fork: bool) -> tuple[float, float]:
    """(master CPU as % of one core, median worker CPU as % of one core)."""
    config = CONFIG.format(workers=workers, fork="true" if fork else "false")
    config += "".join(ACCOUNT.format(n=n) for n in range(1, workers + 1))
    with running_master(config) as (master, state, log):
        for n in range(1, workers + 1):
            log.wait(event="account assigned", account_id=f"quiet-{n}", timeout=120)
        time.sleep(settle)
        url = json.loads((state / "master.json").read_text())["api_url"]
        token = (state / "token").read_text().strip()
        page = httpx.get(
            f"{url}/workers?limit=1000", headers={"Authorization": f"Bearer {token}"}
        ).json()
        me = psutil.Process(master.pid)
        children = [psutil.Process(w["pid"]) for w in page["items"]]
        before = cpu_seconds(me), {c.pid: cpu_seconds(c) for c in children}
        t0 = time.monotonic()
        time.sleep(seconds)
        elapsed = time.monotonic() - t0
        master_pct = (cpu_seconds(me) - before[0]) / elapsed * 100
        worker_pcts = [
            (cpu_seconds(c) - before[1][c.pid]) / elapsed * 100 for c in children if c.is_running()
        ]
    return master_pct, statistics.median(worker_pcts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for fork in (True, False):
        runs = [idle_run(args.workers, args.seconds, args.settle, fork) for _ in range(args.runs)]
        masters = [m for m, _ in runs]
        print(
            f"{'template' if fork else 'spawn':>8}: {args.workers} idle workers, master CPU "
            f"median {statistics.median(masters):.2f} % of one core "
            f"(runs: {', '.join(f'{m:.2f}' for m in masters)}); "
            f"a worker {statistics.median(w for _, w in runs):.3f} %"
        )


if __name__ == "__main__":
    main()
