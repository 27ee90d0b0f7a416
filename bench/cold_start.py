"""Cold start: from launching the master to ``--workers`` workers ready, beside a plain
``multiprocessing`` spawn parent started the same way in the same run, and the respawn
that follows (it must still fork from the warm template).

* hiscrm: ``python -m hiscrm.master`` with ``--workers`` workers, one account each of
  ``benchplatforms:Ready``, which appends ``ready <pid> <time_ns>`` to a file when its
  account starts running. Cold start = the last of the first ``--workers`` lines minus
  the moment just before the master was launched (a fresh state directory each time).
  Then one worker is SIGKILLed and the replacement's ready line timed, and the master's
  ``hiscrm_worker_starts_total`` says how the workers were started.
* plain spawn (the reference): a parent that imports nothing but ``multiprocessing``
  and starts ``--workers`` spawn children, each importing pydantic (``BaseModel``) and
  structlog (what the peer comparison's worker imports), then appending the same line.
* lean spawn (a second reference): the same, with structlog imported as hiscrm imports
  it, without rich (``hiscrm.lean_imports``), so that the comparison does not rest on
  that saving alone.

Runs alternate (hiscrm, spawn, lean spawn; then in another order), ``--runs`` of each;
medians are printed.

Both start from byte-compiled code, as an installed package does (pip compiles it at
install): hiscrm's modules are compiled first (``compileall``), since an editable
checkout on a machine that sets ``PYTHONDONTWRITEBYTECODE`` would otherwise compile every
module at every start, which no installed master does. ``--source`` skips that, to show
what it costs.

    python bench/cold_start.py [--workers 4] [--runs 10] [--source]
"""

import argparse
import compileall
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import BENCH, REPO, machine

CONFIG = """
workers = {workers}
accounts_per_worker = 1
[api]
port = 0
"""

ACCOUNT = """
[[accounts]]
id = "ready-{n}"
platform = "benchplatforms:Ready"
options = {{ ready_file = "{ready}" }}
"""

SPAWN_CHILD = """
import os, time

def child(ready_file, lean):
    from pydantic import BaseModel  # noqa: F401  (plain "import pydantic" is lazy)
    if lean:
        from hiscrm.lean_imports import import_structlog  # hiscrm/__init__: "time" only
        import_structlog()
    import structlog  # noqa: F401
    fd = os.open(ready_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"ready {os.getpid()} {time.time_ns()}\\n".encode())
    os.close(fd)
    time.sleep(3600)
"""

SPAWN_PARENT = """
import multiprocessing, signal, sys
sys.path.insert(0, sys.argv[1])
import spawn_child

if __name__ == "__main__":
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=spawn_child.child, args=(sys.argv[2], sys.argv[4] == "lean"))
        for _ in range(int(sys.argv[3]))
    ]
    for child in children:
        child.start()
    # Blocked only now: starting the resource tracker unblocks it. sigwait takes it.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    signal.sigwait([signal.SIGTERM])
    for child in children:
        child.kill()
        child.join()
"""


def ready_lines(path: Path) -> list[tuple[int, int]]:
    """(pid, time_ns) of every complete line so far."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines(keepends=True)
    return [(int(p), int(t)) for _, p, t in (ln.split() for ln in lines if ln.endswith("\n"))]


def wait_lines(path: Path, count: int, timeout: float = 120) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(lines := ready_lines(path)) >= count:
            return lines
        time.sleep(0.002)
    raise TimeoutError(f"{count} ready lines not written within {timeout} s")


def hiscrm_run(workers: int) -> tuple[float, float, dict[str, float]]:
    """(cold start ms, respawn ms, workers started by how)."""
    with tempfile.TemporaryDirectory(prefix="hiscrm-cold-") as tmp:
        home = Path(tmp)
        ready = home / "ready"
        config = CONFIG.format(workers=workers)
        config += "".join(ACCOUNT.format(n=n, ready=ready) for n in range(1, workers + 1))
        (home / "bench.toml").write_text(config)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)])}
        launched = time.time_ns()
        master = subprocess.Popen(
            [sys.executable, "-m", "hiscrm.master", "--config", str(home / "bench.toml")],
            cwd=home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            lines = wait_lines(ready, workers)
            cold_ms = (max(t for _, t in lines[:workers]) - launched) / 1e6
            time.sleep(1.0)  # the template's spare is ready, backoff would not apply
            victim = lines[0][0]
            killed = time.time_ns()
            os.kill(victim, signal.SIGKILL)
            after = wait_lines(ready, workers + 1)
            respawn_ms = (after[workers][1] - killed) / 1e6
            starts = started_by_how(home / "var")
        finally:
            master.send_signal(signal.SIGTERM)
            master.wait(60)
    return cold_ms, respawn_ms, starts


def started_by_how(state: Path) -> dict[str, float]:
    import json

    url = json.loads((state / "master.json").read_text())["api_url"]
    token = (state / "token").read_text().strip()
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    return {
        how: float(n)
        for how, n in re.findall(r'hiscrm_worker_starts_total\{how="(\w+)"\} (\S+)', text)
    }


def spawn_run(workers: int, lean: bool = False) -> float:
    with tempfile.TemporaryDirectory(prefix="hiscrm-cold-spawn-") as tmp:
        home = Path(tmp)
        (home / "spawn_child.py").write_text(SPAWN_CHILD)
        (home / "spawn_parent.py").write_text(SPAWN_PARENT)
        ready = home / "ready"
        launched = time.time_ns()
        parent = subprocess.Popen(
            [
                sys.executable,
                str(home / "spawn_parent.py"),
                str(home),
                str(ready),
                str(workers),
                "lean" if lean else "plain",
            ],
            cwd=home,
            env={**os.environ, "PYTHONPATH": str(REPO)},  # the lean children import hiscrm
        )
        try:
            lines = wait_lines(ready, workers)
        finally:
            parent.send_signal(signal.SIGTERM)
            parent.wait(60)
    return (max(t for _, t in lines[:workers]) - launched) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--source", action="store_true", help="do not byte-compile hiscrm")
    args = parser.parse_args()
    print(f"machine: {machine()}, load average {os.getloadavg()[0]:.1f} at the start")
    if not args.source:
        compileall.compile_dir(REPO / "hiscrm", quiet=1)
        compileall.compile_dir(BENCH, quiet=1, maxlevels=0)
    print(f"hiscrm's modules {'from source' if args.source else 'byte-compiled'}")
    colds: list[float] = []
    respawns: list[float] = []
    spawns: list[float] = []
    leans: list[float] = []
    how: dict[str, float] = {}
    orders = [("hiscrm", "spawn", "lean"), ("spawn", "lean", "hiscrm"), ("lean", "hiscrm", "spawn")]
    for n in range(args.runs):
        for run in orders[n % len(orders)]:
            if run == "spawn":
                spawns.append(spawn_run(args.workers))
            elif run == "lean":
                leans.append(spawn_run(args.workers, lean=True))
            else:
                cold, respawn, how = hiscrm_run(args.workers)
                colds.append(cold)
                respawns.append(respawn)
        print(
            f"run {n + 1}: hiscrm {colds[-1]:.0f} ms, plain spawn {spawns[-1]:.0f} ms, "
            f"lean spawn {leans[-1]:.0f} ms, hiscrm respawn {respawns[-1]:.1f} ms, "
            f"workers started {how}",
            flush=True,
        )
    cold = statistics.median(colds)
    spawn, lean = statistics.median(spawns), statistics.median(leans)
    print(
        f"{args.workers} workers ready from launch, median of {args.runs}: "
        f"hiscrm {cold:.0f} ms, plain multiprocessing spawn {spawn:.0f} ms "
        f"(hiscrm / spawn = {cold / spawn:.2f}), lean spawn {lean:.0f} ms "
        f"(hiscrm / lean spawn = {cold / lean:.2f}); "
        f"then a respawn: {statistics.median(respawns):.1f} ms"
    )


if __name__ == "__main__":
    main()
