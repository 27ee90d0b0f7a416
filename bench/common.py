"""What the benchmarks share: running a master, reading its log, summarising figures."""

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent


class Log:
    """A master.log read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.events: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offset += len(complete)
            self.events += [json.loads(line) for line in complete.splitlines() if line.strip()]
        return self.events

    def wait(self, after: int = 0, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.poll()[after:]:
                if all(event.get(k) == v for k, v in fields.items()):
                    return event
            time.sleep(0.002)
        raise TimeoutError(f"no {fields} within {timeout}s")


def at(event: dict[str, Any]) -> float:
    """An event's timestamp as seconds since the epoch."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


@contextmanager
def running_master(
    config_toml: str, prepare: Callable[[Path], None] | None = None, code: Path = REPO
) -> Iterator[tuple[subprocess.Popen[bytes], Path, Log]]:
    """A master on a throwaway state dir; stopped (SIGTERM) on the way out. ``prepare``
    gets the state dir before the master starts; ``code`` is the checkout it runs (another
    one gives a reference from the same run)."""
    with tempfile.TemporaryDirectory(prefix="hiscrm-bench-") as tmp:
        home = Path(tmp)
        (home / "bench.toml").write_text(config_toml)
        if prepare is not None:
            (home / "var").mkdir()
            prepare(home / "var")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(BENCH)])}
        master = subprocess.Popen(
            [sys.executable, "-m", "hiscrm.master", "--config", str(home / "bench.toml")],
            cwd=home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            yield master, home / "var", Log(home / "var" / "logs" / "master.log")
        finally:
            master.send_signal(signal.SIGTERM)
            master.wait(60)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(name: str, values_ms: list[float], unit: str = "ms") -> str:
    values = sorted(values_ms)
    return (
        f"{name:<38} min {values[0]:8.2f}  p50 {statistics.median(values):8.2f}  "
        f"p95 {percentile(values, 0.95):8.2f}  max {values[-1]:8.2f}  {unit}  (n={len(values)})"
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


def api_of(state: Path, timeout_s: float = 60.0) -> tuple[str, str]:
    """The API URL and token of the master on ``state``, once it has written them."""
    deadline = time.monotonic() + timeout_s
    while not (state / "master.json").exists() or not (state / "token").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no master.json and token in {state}")
        time.sleep(0.01)
    url = json.loads((state / "master.json").read_text())["api_url"]
    return url, (state / "token").read_text().strip()
