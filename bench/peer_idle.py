"""Idle master CPU beside the peers', measured by the peer comparison harness in the same
run: its ``bench_idle.py`` (50 idle workers, the supervisor daemon's CPU over 30 s once all
are ready) run ``--runs`` times for hiscrm (this interpreter's install) and the peers
named by ``--only``; per-run figures and medians. The machine is shared by whatever else
runs on it, so the runs alternate and the medians are what to read.

    python bench/peer_idle.py --peers DIR [--runs 5] [--only hiscrm,pm2,supervisord]

``DIR`` is the harness's directory (its README says how to install the peers).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import machine


def one_run(peers: Path, only: str, workers: int, window: float) -> dict[str, float]:
    """config name -> daemon CPU % of one core, for one run of the harness."""
    with tempfile.TemporaryDirectory(prefix="hiscrm-peer-idle-") as tmp:
        out = Path(tmp) / "idle.json"
        subprocess.run(
            [
                "python3",
                str(peers / "bench_idle.py"),
                "--only",
                only,
                "--workers",
                str(workers),
                "--window",
                str(window),
                "--json",
                str(out),
            ],
            env={**os.environ, "HISCRM_PY": sys.executable},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        results = json.loads(out.read_text())["results"]
    return {r["config"]: r["daemon_cpu_pct"] for r in results if "daemon_cpu_pct" in r}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=Path, required=True, help="the harness's directory")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default="hiscrm,pm2,supervisord")
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--window", type=float, default=30.0)
    args = parser.parse_args()
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the start")
    figures: dict[str, list[float]] = {}
    for n in range(args.runs):
        run = one_run(args.peers, args.only, args.workers, args.window)
        for config, pct in run.items():
            figures.setdefault(config, []).append(pct)
        shown = ", ".join(f"{config} {pct:.2f} %" for config, pct in run.items())
        print(f"run {n + 1}: {shown}", flush=True)
    print(f"daemon CPU with {args.workers} idle workers, % of one core, median of {args.runs}:")
    for config, values in figures.items():
        print(f"  {config:<20} {statistics.median(values):5.2f} %  (runs {values})")


if __name__ == "__main__":
    main()
