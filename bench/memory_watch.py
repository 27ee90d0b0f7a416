"""What measuring workers' memory (the memory limit) costs the master.

A master with ``--workers`` idle workers (one account each of a platform that does
nothing) and ``[supervision] max_memory_mb`` set well above what they use, so every pass
measures every tree and restarts nothing. Once every account is assigned and
``--settle`` seconds have passed, over ``--seconds`` (by default two minutes, so the
window holds the PSS refreshes that come every minute, not only the cheap RSS passes):

* the CPU time the memory watch spent measuring (``hiscrm_memory_watch_cpu_seconds_total``,
  its thread's CPU time) as % of one core, and its passes;
* the master's whole CPU time (user + system, psutil) as % of one core, for scale.

Then, in this process, one pass over the same 50 worker trees timed directly: as the
master does it (RSS of every process; PSS only where due), and the worst case in which
every tree's RSS is over its limit, so PSS is read for every process every pass.

    python bench/memory_watch.py [--workers 50] [--seconds 120] [--settle 10] [--runs 3]
"""

import argparse
import json
import statistics
import time

import httpx
import psutil
from common import machine, running_master

from hiscrm.master.supervision.memory_watch import CHECK_INTERVAL_S, Target, measure

CONFIG = """
workers = {workers}
accounts_per_worker = 1
[api]
port = 0
[supervision]
max_memory_mb = 4096
"""

ACCOUNT = """
[[accounts]]
id = "quiet-{n}"
platform = "benchplatforms:Quiet"
"""


def scrape(client: httpx.Client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise LookupError(name)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def one_run(workers: int, seconds: float, settle: float) -> dict[str, float]:
    config = CONFIG.format(workers=workers)
    config += "".join(ACCOUNT.format(n=n) for n in range(1, workers + 1))
    with running_master(config) as (master, state, log):
        for n in range(1, workers + 1):
            log.wait(event="account assigned", account_id=f"quiet-{n}", timeout=120)
        time.sleep(settle)
        url = json.loads((state / "master.json").read_text())["api_url"]
        token = (state / "token").read_text().strip()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            page = client.get("/workers?limit=1000").json()["items"]
            me = psutil.Process(master.pid)
            watch_before = scrape(client, "hiscrm_memory_watch_cpu_seconds_total")
            passes_before = scrape(client, "hiscrm_memory_watch_passes_total")
            master_before = cpu_seconds(me)
            t0 = time.monotonic()
            time.sleep(seconds)
            elapsed = time.monotonic() - t0
            master_after = cpu_seconds(me)
            watch_after = scrape(client, "hiscrm_memory_watch_cpu_seconds_total")
            passes_after = scrape(client, "hiscrm_memory_watch_passes_total")
            trees = client.get("/workers?limit=1000").json()["items"]
        pids = {w["id"]: w["pid"] for w in page}
        # One pass timed here, as the master does it (PSS fresh: not read) and worst case.
        as_master, worst = [], []
        for _ in range(10):
            began = time.perf_counter()
            measure([Target(w, pid, 4096 * 2**20, None) for w, pid in pids.items()], 0.0)
            worst.append(time.perf_counter() - began)  # never read before: PSS for all
            fresh = measure([Target(w, pid, 4096 * 2**20, None) for w, pid in pids.items()], 0.0)
            targets = [Target(w, f.pid, 4096 * 2**20, f.pss) for w, f in fresh.figures.items()]
            began = time.perf_counter()
            measure(targets, 1.0, fresh.processes)
            as_master.append(time.perf_counter() - began)
    passes = passes_after - passes_before
    return {
        "watch_pct": (watch_after - watch_before) / elapsed * 100,
        "master_pct": (master_after - master_before) / elapsed * 100,
        "passes": passes,
        "pass_cpu_ms": (watch_after - watch_before) / passes * 1000 if passes else 0.0,
        "rss_pass_ms": statistics.median(as_master) * 1000,
        "pss_pass_ms": statistics.median(worst) * 1000,
        "tree_pss_mb": statistics.median(w["tree_memory_bytes"] for w in trees) / 2**20,
        "tree_rss_mb": statistics.median(w["tree_rss_bytes"] for w in trees) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    runs = [one_run(args.workers, args.seconds, args.settle) for _ in range(args.runs)]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def each(key: str, digits: int = 3) -> str:
        return ", ".join(f"{r[key]:.{digits}f}" for r in runs)

    print(
        f"{args.workers} idle workers, a pass every {CHECK_INTERVAL_S:g} s: memory watch "
        f"{median('watch_pct'):.3f} % of one core (runs: {each('watch_pct')}), "
        f"{median('pass_cpu_ms'):.2f} ms CPU per pass, {median('passes'):.0f} passes in "
        f"{args.seconds:g} s; the whole master {median('master_pct'):.2f} % "
        f"(runs: {each('master_pct', 2)})"
    )
    print(
        f"one pass timed here: as the master does it (RSS; PSS only where due) "
        f"{median('rss_pass_ms'):.2f} ms; PSS of every process {median('pss_pass_ms'):.2f} ms"
    )
    print(
        f"a worker's tree: PSS {median('tree_pss_mb'):.1f} MB, RSS "
        f"{median('tree_rss_mb'):.1f} MB (median)"
    )


if __name__ == "__main__":
    main()
