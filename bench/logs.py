"""Worker output capture: how fast a worker's output reaches its log file, and proof that
no line is lost or torn across rotations.

One master, one worker, one account of ``benchplatforms:Chatter`` per mode, writing
``--mb`` megabytes of numbered ~100-byte lines flat out: ``fd`` (``os.write`` to fd 1 in
64 kB chunks, as C code or a child process writes), ``chunks`` (``sys.stdout.write`` of
the same chunks), ``print`` (one ``print`` per line) and ``log`` (one structlog
``ctx.log.info`` per line). The worker's fds 1 and 2 are its log file, so a write that
returned is in the file: the platform times its own writes. Rotation is on
(``logs.max_bytes`` 16 MB) with enough backups to keep everything, and afterwards every
numbered line must be in the files exactly once and whole.

    python bench/logs.py [--mb 100] [--runs 3] [--modes fd,chunks,print,log]
"""

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

from benchplatforms import chatter_line
from common import machine, running_master

CONFIG = """
workers = 1
[api]
port = 0
[logs]
max_bytes = 16000000
backups = {backups}
[[accounts]]
id = "chatter"
platform = "benchplatforms:Chatter"
options = {{ mode = "{mode}", mb = {mb}, result_file = "{result}" }}
"""
NUMBER = re.compile(rb"chatter \w+ (\d{10})")


def check_lines(logs: Path, mode: str, expected: int) -> tuple[int, int]:
    """Every numbered line once and whole, across the rotated files; (files, lines)."""
    rotated = sorted(logs.glob("worker1.log.*"), key=lambda p: -int(p.suffix[1:]))
    files = [*rotated, logs / "worker1.log"]  # oldest first
    marker = f"chatter {mode} ".encode()
    seen = bytearray(expected)
    for path in files:
        for line in path.read_bytes().splitlines():
            if marker not in line:
                continue
            match = NUMBER.search(line)
            n = int(match.group(1)) if match else -1
            # Whole: the line as written (a log event wraps it in a timestamp and level).
            whole = chatter_line(mode, n)[:-1].encode() if 0 <= n < expected else None
            if whole is None or (line != whole if mode != "log" else whole not in line):
                raise AssertionError(f"{path.name}: torn line {line[:120]!r}")
            if seen[n]:
                raise AssertionError(f"{path.name}: line {n} twice")
            seen[n] = 1
    found = sum(seen)
    if found != expected:
        missing = [n for n in range(expected) if not seen[n]][:5]
        raise AssertionError(f"{expected - found} lines missing, first {missing}")
    return len(files), found


def one_run(mode: str, mb: float) -> tuple[float, int]:
    """MB/s of one run and the log files it filled (after checking every line)."""
    with tempfile.TemporaryDirectory(prefix="hiscrm-bench-logs-") as tmp:
        result = Path(tmp) / "result.json"
        backups = int(mb * 1.5 / 16) + 4  # room for everything, so every line can be checked
        config = CONFIG.format(backups=backups, mode=mode, mb=mb, result=result)
        with running_master(config) as (_, state, _log):
            deadline = time.monotonic() + 600
            while not result.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{mode}: no result in 600 s")
                time.sleep(0.1)
            figures = json.loads(result.read_text())
            files, lines = check_lines(state / "logs", mode, figures["lines"])
        megabytes = lines * len(chatter_line(mode, 0)) / 1e6
        return megabytes / figures["seconds"], files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="fd,chunks,print,log")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    for mode in args.modes.split(","):
        runs = [one_run(mode, args.mb) for _ in range(args.runs)]
        rates = [rate for rate, _ in runs]
        print(
            f"{mode:>6}: median {statistics.median(rates):8.1f} MB/s "
            f"(runs: {', '.join(f'{r:.1f}' for r in rates)}); every line once and whole "
            f"in {max(files for _, files in runs)} log files"
        )


if __name__ == "__main__":
    main()
