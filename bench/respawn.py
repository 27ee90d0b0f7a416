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
import json
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def config_text(workers: int) -> str:
    return f"""
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


class Log:
    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.events = path, 0, []

    def poll(self) -> list[dict[str, Any]]:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offset += len(complete)
            self.events += [json.loads(line) for line in complete.splitlines() if line.strip()]
        return self.events

    def wait(self, after: int, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.poll()[after:]:
                if all(event.get(k) == v for k, v in fields.items()):
                    return event
            time.sleep(0.001)
        raise TimeoutError(f"no {fields} within {timeout}s")


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def summary(name: str, values_ms: list[float]) -> str:
    values = sorted(values_ms)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return (
        f"{name:<34} min {values[0]:8.2f}  p50 {statistics.median(values):8.2f}  "
        f"p95 {p95:8.2f}  max {values[-1]:8.2f}  ms  (n={len(values)})"
    )


def machine() -> str:
    """A one-line description of where the figures come from."""
    cpuinfo = Path("/proc/cpuinfo")
    models = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
        if line.startswith("model name")
    ]
    cpu = models[0] if models else platform.processor() or "unknown CPU"
    system = f"{platform.system()} {platform.release()}"
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {system}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hiscrm-bench-") as tmp:
        home = Path(tmp)
        (home / "bench.toml").write_text(config_text(args.workers))
        log = Log(home / "var" / "logs" / "master.log")
        master = subprocess.Popen(
            [sys.executable, "-m", "hiscrm.master", "--config", str(home / "bench.toml")],
            cwd=home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            ids = [f"worker{n}" for n in range(1, args.workers + 1)]
            running = {w: log.wait(0, event="worker state", worker=w, new="running") for w in ids}
            teardown, noticed, logged, registered, start_ms = [], [], [], [], []
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
                exited = log.wait(mark, event="worker exited", worker=worker)
                back = log.wait(mark, event="worker state", worker=worker, new="running")
                teardown.append((dead_at - killed_at) * 1000)
                noticed.append((exited["noticed_at"] - dead_at) * 1000)
                logged.append((at(exited) - killed_at) * 1000)
                registered.append((at(back) - killed_at) * 1000)
                start_ms.append(back["start_ms"])
                running[worker] = back
        finally:
            master.send_signal(signal.SIGTERM)
            master.wait(30)

    print(f"machine: {machine()}")
    print(f"{args.kills} SIGKILLs, {args.workers} workers, plain spawn")
    print(summary("kill -> dead (kernel teardown)", teardown))
    print(summary("dead -> noticed by the master", noticed))
    print(summary("exit logged with reason and tail", logged))
    print(summary("kill -> replacement registered", registered))
    print(summary("  of which: start -> registered", start_ms))


if __name__ == "__main__":
    main()
