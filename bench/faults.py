"""Time from a fault to where it shows, for each fault class of docs/FAULTS.md.

Each class is injected ``--trials`` times (5) into a running master: a real
``python -m hiscrm.master`` on a throwaway state dir, with the platforms of ``tests/`` on
its path, one master per class. After each injection the script requests, one after the
other every 10 ms, the status route the table names (``/workers/{id}``,
``/accounts/{id}`` or ``/status``), ``/metrics`` and ``/healthz``, and notes when each
first shows the fault; the master.log line is timed by its own timestamp. Figures are
medians of the trials, in ms from the fault.

The moment of the fault is taken where it happens: the faulty platform
(``tests/testplatforms/faults.py``) writes ``time.monotonic()`` (one clock for every
process on the machine) just before it commits the fault; for a signal, a held lock, a
configuration change or a new account, the script notes it just before it acts; for a
protocol mismatch, it is the master's refusal (nothing is wrong before it). Faults that
can only show after a threshold (a hung worker: ``heartbeat_timeout_s`` after its last
heartbeat; no progress: ``stale_after_s``; a stuck store: a write waiting 2 s) also
show the time past the threshold.

A worker killed or crashed is back within milliseconds: status and metrics keep the
exit (``restarts``, ``last_exit``), but /healthz is not meant to stay changed, and shows
the moment only if a request falls into it (the /healthz column says in how many
trials). ``n/a``: health is not meant to change at all (one exception in a task, one
refused item: the account runs on).

Each route is requested about every 10 ms: the master serves ~300 requests/s beside
the fault, on the same cores.

    python bench/faults.py [--trials 5] [--only WORD ...]
"""

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from common import BENCH, REPO, Log, machine

TESTS = REPO / "tests"
FAULT = "testplatforms.faults:Fault"
POLL_S = 0.01
HEARTBEAT_INTERVAL_S = 0.2
HEARTBEAT_TIMEOUT_S = 1.0
STALE_AFTER_S = 2.0
STORE_STUCK_S = 2.0  # health: a write waiting this long means the store cannot commit
MEMORY_LIMIT_MB = 150
RESTARTS = "hiscrm_worker_restarts_total"
QUARANTINED = "account quarantined: its workers die while it runs; it runs alone from now on"
HUNG = {"event": "worker is hung: no heartbeat", "worker": "worker1"}
KILLED = {"event": "worker exited", "worker": "worker1", "reason": "killed"}

CONFIG = """
workers = {workers}
accounts_per_worker = 20
[api]
port = 0
[supervision]
heartbeat_interval_s = {heartbeat_interval}
heartbeat_timeout_s = {heartbeat_timeout}
stop_timeout_s = 1.5
kill_timeout_s = 1.0
backoff_initial_s = 0.2
backoff_max_s = 1.0
backoff_reset_after_s = 1.0
reassign_after_s = 60
fork_template = {fork}
{supervision}
[sync]
stale_after_s = {stale}
[quarantine]
{quarantine}
{store}
{accounts}
"""
NO_QUARANTINE = "window_s = 1\ndeaths = 1000"  # evidence forgotten between trials
DEMO = """
[[accounts]]
id = "demo-1"
platform = "demo"
options = { rate = 5.0, seed = 1 }
"""


def config(**over: Any) -> str:
    values: dict[str, Any] = {
        "workers": 1,
        "heartbeat_interval": HEARTBEAT_INTERVAL_S,
        "heartbeat_timeout": HEARTBEAT_TIMEOUT_S,
        "fork": "true",
        "supervision": "",
        "stale": 3600,
        "quarantine": NO_QUARANTINE,
        "store": "[store]",
        "accounts": DEMO,
    }
    values.update(over)
    return CONFIG.format(**values)


# --- reading the master -----------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> Samples:
    samples: Samples = {}
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            name, labels, value = match.groups()
            samples[(name, frozenset(LABEL.findall(labels or "")))] = float(value)
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def check(health: dict[str, Any], name: str, *words: str) -> bool:
    """Health's check ``name`` is not ok, and its detail holds every word."""
    found = health.get("checks", {}).get(name)
    if found is None or found["status"] == "ok":
        return False
    return all(word in found["detail"] for word in words)


class Run:
    """A master running one case's configuration."""

    def __init__(self, home: Path, config_text: str, code_dir: Path = REPO) -> None:
        self.home = home
        self.config_path = home / "hiscrm.toml"
        self.config_path.write_text(config_text)
        self.state_dir = home / "var"
        self.log = Log(self.state_dir / "logs" / "master.log")
        paths = [str(code_dir), str(TESTS), str(BENCH)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hiscrm.master", "--config", str(self.config_path)],
            cwd=home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
            start_new_session=True,
        )
        info = self.state_dir / "master.json"
        wait_for(info.exists, 60, "master.json written")
        url = json.loads(info.read_text())["api_url"]
        token = (self.state_dir / "token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        self.http = httpx.Client(base_url=url, headers=headers, timeout=30)
        wait_for(lambda: self.healthz()["status"] == "ok", 60, "health ok at start")

    def get(self, path: str) -> Any:
        return self.http.get(path).json()

    def healthz(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.http.get("/healthz").json()
        return answer

    def metrics(self) -> Samples:
        return parse_metrics(self.http.get("/metrics").text)

    def worker(self, worker_id: str = "worker1") -> dict[str, Any]:
        return dict(self.get(f"/workers/{worker_id}"))

    def add_account(self, account_id: str, platform: str, **options: Any) -> None:
        body = {"id": account_id, "platform": platform, "options": options}
        answer = self.http.post("/accounts", json=body)
        assert answer.status_code == 201, answer.text

    def remove_account(self, account_id: str) -> None:
        answer = self.http.delete(f"/accounts/{account_id}", params={"purge": "true"})
        assert answer.status_code == 200, answer.text

    def mark(self) -> int:
        return len(self.log.poll())

    def stop(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


MONO_TO_WALL = time.time() - time.monotonic()


def event_time(event: dict[str, Any]) -> float:
    """A master.log event's own timestamp, on the monotonic clock."""
    return datetime.fromisoformat(event["timestamp"]).timestamp() - MONO_TO_WALL


# --- watching for a fault ---------------------------------------------------------------


@dataclass
class Watch:
    """Where one injected fault should show; baselines are taken before the injection."""

    status_path: str
    status: Callable[[Any], bool]
    metric: Callable[[Samples], bool]
    health: Callable[[dict[str, Any]], bool] | None  # None: not meant to change
    event: dict[str, Any]  # fields of the master.log line
    timeout_s: float = 15.0


@dataclass
class Figures:
    status: list[float] = field(default_factory=list)
    metric: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    event: list[float] = field(default_factory=list)
    trials: int = 0
    health_meant: bool = True


def measure(
    run: Run, watch: Watch, mark: int, fault_at: Callable[[], float | None], figures: Figures
) -> None:
    """Poll until status, metric (and health) show the fault; then time them, and the
    master.log line, from the moment of the fault."""
    seen: dict[str, float] = {}
    wanted = ["status", "metric"] + (["health"] if watch.health is not None else [])
    deadline = time.monotonic() + watch.timeout_s
    tick = time.monotonic()
    while time.monotonic() < deadline and not all(k in seen for k in wanted):
        if "status" not in seen and watch.status(run.get(watch.status_path)):
            seen["status"] = time.monotonic()
        if "metric" not in seen and watch.metric(run.metrics()):
            seen["metric"] = time.monotonic()
        if watch.health is not None and "health" not in seen and watch.health(run.healthz()):
            seen["health"] = time.monotonic()
        tick += POLL_S
        time.sleep(max(0.0, tick - time.monotonic()))
    missing = [k for k in ("status", "metric") if k not in seen]
    if missing:
        raise TimeoutError(f"{' and '.join(missing)} did not show it in {watch.timeout_s} s")
    wait_for(lambda: fault_at() is not None, 10, "the moment of the fault written")
    t0 = fault_at()
    assert t0 is not None
    figures.trials += 1
    figures.health_meant = watch.health is not None
    for name in seen:
        getattr(figures, name).append(seen[name] - t0)

    def logged() -> bool:
        events = run.log.poll()[mark:]
        found = [e for e in events if all(e.get(k) == v for k, v in watch.event.items())]
        if found:
            figures.event.append(event_time(found[0]) - t0)
        return bool(found)

    wait_for(logged, 10, f"master.log: {watch.event}")


def settle(run: Run, seconds: float = 1.2) -> None:
    """Health ok again, then long enough for a worker's backoff (reset after 1 s) and the
    quarantine's evidence (``window_s = 1``) to be forgotten."""
    wait_for(lambda: run.healthz()["status"] == "ok", 60, "health ok again")
    time.sleep(seconds)


def written_time(path: Path) -> Callable[[], float | None]:
    def read() -> float | None:
        try:
            return float(path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    return read


def worker_watch(run: Run, reason: str, event: dict[str, Any], **last_exit: Any) -> Watch:
    """worker1 stops or restarts for ``reason``: its state leaves ``running`` and its
    restart is counted (``restarts_by_reason``, ``last_exit``); ``hiscrm_worker_up``
    drops, ``hiscrm_worker_restarts_total{reason}`` grows; health names the workers."""
    before = run.worker()["restarts_by_reason"].get(reason, 0)
    before_metric = sample(run.metrics(), RESTARTS, reason=reason, worker="worker1")

    def status(worker: dict[str, Any]) -> bool:
        exit_ = worker["last_exit"] or {}
        restarted = worker["restarts_by_reason"].get(reason, 0) > before
        return worker["state"] != "running" or (
            restarted and all(exit_.get(k) == v for k, v in last_exit.items())
        )

    def metric(s: Samples) -> bool:
        return (
            sample(s, "hiscrm_worker_up", worker="worker1") == 0
            or sample(s, RESTARTS, reason=reason, worker="worker1") > before_metric
        )

    return Watch("/workers/worker1", status, metric, lambda h: check(h, "workers"), event)


def account_errors_watch(account: str) -> Watch:
    return Watch(
        f"/accounts/{account}",
        lambda a: a["errors_total"] >= 1,
        lambda s: sample(s, "hiscrm_account_errors_total", account=account) >= 1,
        None,
        {"event": "worker error", "account_id": account},
    )


def account_state_watch(account: str, state: str, words: tuple[str, ...]) -> Watch:
    return Watch(
        f"/accounts/{account}",
        lambda a: a["state"] == state,
        lambda s: sample(s, "hiscrm_account_state", account=account, state=state) == 1,
        lambda h: check(h, "accounts", *words, account),
        {"event": "account state", "account_id": account, "new": state},
    )


# --- the cases --------------------------------------------------------------------------

Trial = Callable[[Run, int, Path, Figures], None]


def platform_fault(fault: str, watch: Callable[[Run, str], Watch], once: bool = True) -> Trial:
    """A new account whose platform commits ``fault`` (once, unless ``once`` is False);
    deleted afterwards."""

    def trial(run: Run, n: int, tmp: Path, figures: Figures) -> None:
        account = f"{fault.replace('_', '-')}-{n}"
        fault_file = tmp / f"{account}.at"
        options: dict[str, Any] = {"fault": fault, "fault_file": str(fault_file)}
        if once:
            options["once_marker"] = str(tmp / f"{account}.once")
        looking = watch(run, account)
        mark = run.mark()
        run.add_account(account, FAULT, **options)
        measure(run, looking, mark, written_time(fault_file), figures)
        run.remove_account(account)
        settle(run)

    return trial


def signal_trial(sig: signal.Signals, reason: str, event: dict[str, Any]) -> Trial:
    def trial(run: Run, n: int, tmp: Path, figures: Figures) -> None:
        pid = run.worker()["pid"]
        looking = worker_watch(run, reason, event)
        mark = run.mark()
        t0 = time.monotonic()
        os.kill(pid, sig)
        measure(run, looking, mark, lambda: t0, figures)
        settle(run)

    return trial


def oom_trial(run: Run, n: int, tmp: Path, figures: Figures) -> None:
    """A worker grown past 200 MB by an account, SIGKILLed as the OOM killer would (no
    cgroups here); the account is deleted afterwards."""
    account = f"hog-{n}"
    run.add_account(account, FAULT, fault="hog", max_mb=300, step_mb=40)
    wait_for(lambda: (run.worker()["rss_bytes"] or 0) > 200 * 2**20, 30, "the worker grew")
    pid = run.worker()["pid"]
    looking = worker_watch(run, "killed", KILLED, signal="SIGKILL")
    mark = run.mark()
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    measure(run, looking, mark, lambda: t0, figures)
    run.remove_account(account)
    settle(run)


def memory_limit_trial(run: Run, n: int, tmp: Path, figures: Figures) -> None:
    """An account that grows its worker past ``max_memory_mb``; the moment is when the
    worker's resident memory passed the limit (the master measures every 2 s)."""
    account = f"over-limit-{n}"
    fault_file = tmp / f"{account}.at"
    event = {"event": "worker over its memory limit; restarting it gracefully"}
    looking = worker_watch(run, "memory_limit", event)
    mark = run.mark()
    run.add_account(
        account,
        FAULT,
        fault="hog",
        max_mb=MEMORY_LIMIT_MB + 100,
        step_mb=20,
        limit_mb=MEMORY_LIMIT_MB,
        fault_file=str(fault_file),
        once_marker=str(tmp / f"{account}.once"),
    )
    measure(run, looking, mark, written_time(fault_file), figures)
    run.remove_account(account)
    settle(run)


def failing_watch(check_name: str, words: str) -> Watch:
    return Watch(
        "/status",
        lambda s: s["health"] == "failing",
        lambda s: sample(s, "hiscrm_health_check", check=check_name, status="failing") == 1,
        lambda h: check(h, check_name, words),
        {"event": "health", "status": "failing"},
    )


def store_trial(run: Run, n: int, tmp: Path, figures: Figures) -> None:
    """Another process takes the store's write lock (while the demo account syncs) and
    holds it until the fault has shown."""
    looking = failing_watch("store", "cannot commit")
    mark = run.mark()
    lock = sqlite3.connect(run.state_dir / "hiscrm.db", timeout=10)
    try:
        lock.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        measure(run, looking, mark, lambda: t0, figures)
    finally:
        lock.rollback()
        lock.close()
    settle(run)


def full_disk_trial(run: Run, n: int, tmp: Path, figures: Figures) -> None:
    """``[store] min_free_mb`` raised above the free space by a configuration update (no
    disk is filled for real); lowered again afterwards."""
    original = run.config_path.read_text()
    looking = failing_watch("disk", "disk nearly full")
    run.config_path.write_text(original.replace("[store]", "[store]\nmin_free_mb = 10000000"))
    mark = run.mark()
    t0 = time.monotonic()
    threading.Thread(target=lambda: run.http.post("/config/update")).start()
    measure(run, looking, mark, lambda: t0, figures)
    run.config_path.write_text(original)
    assert run.http.post("/config/update").status_code == 200
    settle(run)


def added_account_trial(platform: str, watch: Callable[[str], Watch]) -> Trial:
    """The fault is the account itself (its platform): the moment is when it is added."""

    def trial(run: Run, n: int, tmp: Path, figures: Figures) -> None:
        account = f"added-{n}"
        looking = watch(account)
        mark = run.mark()
        t0 = time.monotonic()
        run.add_account(account, platform)
        measure(run, looking, mark, lambda: t0, figures)
        run.remove_account(account)
        settle(run)

    return trial


BOOT_BREAKER = """import multiprocessing as _mp, os as _os, time as _time
if _mp.current_process().name == "hiscrm-worker2" and _os.path.exists({marker!r}):
    if not _os.path.exists({fault!r}):
        with open({fault!r}, "w") as _f:
            _f.write(repr(_time.monotonic()))
    raise RuntimeError("worker2 cannot import its runtime (bench/faults.py)")
"""


def copied_code(tmp: Path) -> Path:
    code = tmp / "code"
    shutil.copytree(REPO / "hiscrm", code / "hiscrm", ignore=shutil.ignore_patterns("__pycache__"))
    return code


def broken_code(tmp: Path) -> Path:
    """A copy of the code whose worker runtime raises at import in worker2 while the file
    ``broken`` exists (workers are spawned: each imports it itself)."""
    code = copied_code(tmp)
    module = code / "hiscrm" / "worker" / "adopted.py"
    breaker = BOOT_BREAKER.format(marker=str(tmp / "broken"), fault=str(tmp / "boot-fault.at"))
    module.write_text(breaker + module.read_text())
    return code


def boot_trial(run: Run, n: int, tmp: Path, figures: Figures) -> None:
    marker, fault_file = tmp / "broken", tmp / "boot-fault.at"
    fault_file.unlink(missing_ok=True)
    looking = Watch(
        "/workers/worker2",
        lambda w: w["state"] == "boot_failed",
        lambda s: sample(s, "hiscrm_worker_state", worker="worker2", state="boot_failed") == 1,
        lambda h: check(h, "workers", "worker2 is boot_failed"),
        {"event": "worker exited", "worker": "worker2", "reason": "boot_failed"},
    )
    mark = run.mark()
    marker.write_text("broken")
    restart = threading.Thread(target=lambda: run.http.post("/workers/worker2/restart"))
    restart.start()
    measure(run, looking, mark, written_time(fault_file), figures)
    marker.unlink()
    restart.join(60)
    wait_for(lambda: run.worker("worker2")["state"] == "running", 30, "worker2 back")
    settle(run)


def protocol_trial(run: Run, n: int, tmp: Path, figures: Figures) -> None:
    """The protocol changed on disk; worker1 is killed, and its replacement (spawned: the
    files changed) loads it and is refused. The moment is the master's refusal."""
    protocol_py = tmp / "code" / "hiscrm" / "protocol.py"
    original = protocol_py.read_text()
    line = 'type: Literal["worker:goodbye"] = "worker:goodbye"\n'
    changed = original.replace(line, line + f'    note{n}: str = ""\n')
    assert changed != original
    exited_before = (run.worker()["last_exit"] or {}).get("at", 0)
    looking = Watch(
        "/workers/worker1",
        lambda w: (
            (w["last_exit"] or {}).get("reason") == "protocol_mismatch"
            and w["last_exit"]["at"] > exited_before
        ),
        lambda s: sample(s, "hiscrm_worker_state", worker="worker1", state="boot_failed") == 1,
        lambda h: check(h, "workers", "worker1 is boot_failed"),
        {"event": "worker exited", "worker": "worker1", "reason": "protocol_mismatch"},
    )
    mark = run.mark()

    def refused() -> float | None:
        for e in run.log.poll()[mark:]:
            if e["event"].startswith("worker refused") and e.get("worker") == "worker1":
                return event_time(e)
        return None

    protocol_py.write_text(changed)
    os.kill(run.worker()["pid"], signal.SIGKILL)
    measure(run, looking, mark, refused, figures)
    protocol_py.write_text(original)
    wait_for(lambda: run.worker()["state"] == "running", 60, "worker1 back")
    settle(run)


def poison_trial(run: Run, n: int, tmp: Path, figures: Figures) -> None:
    """An account that kills its worker (``os._exit``) 0.3 s after each start; from its
    first kill until it is quarantined (three deaths by default)."""
    account = f"poison-{n}"
    fault_file = tmp / f"{account}.at"
    looking = Watch(
        f"/accounts/{account}",
        lambda a: a["state"] == "quarantined",
        lambda s: sample(s, "hiscrm_account_quarantined", account=account) == 1,
        lambda h: check(h, "accounts", "quarantined", account),
        {"event": QUARANTINED, "account_id": account},
        timeout_s=60,
    )
    mark = run.mark()
    run.add_account(account, FAULT, fault="exit", delay_s=0.3, fault_file=str(fault_file))
    measure(run, looking, mark, written_time(fault_file), figures)
    run.remove_account(account)
    settle(run, 2.0)


@dataclass
class Case:
    name: str  # as in docs/FAULTS.md
    trial: Trial
    config: dict[str, Any] = field(default_factory=dict)
    threshold_s: float | None = None
    code: Callable[[Path], Path] | None = None  # makes the code dir the master runs


CASES = [
    Case("import error at boot", boot_trial, {"workers": 2, "fork": "false"}, code=broken_code),
    Case(
        "exception in a sync path",
        platform_fault(
            "break_sync",
            lambda run, a: worker_watch(
                run, "crashed", {"event": "worker exited", "reason": "crashed"}, code=70
            ),
        ),
    ),
    Case(
        "exception in a platform task",
        platform_fault("raise", lambda run, a: account_errors_watch(a)),
    ),
    Case(
        "blocked event loop",
        platform_fault("block", lambda run, a: worker_watch(run, "heartbeat_timeout", HUNG)),
        threshold_s=HEARTBEAT_TIMEOUT_S,
    ),
    Case(
        "SIGSTOP",
        signal_trial(signal.SIGSTOP, "heartbeat_timeout", HUNG),
        threshold_s=HEARTBEAT_TIMEOUT_S,
    ),
    Case(
        "SIGKILL",
        signal_trial(signal.SIGKILL, "killed", KILLED),
    ),
    Case("OOM kill", oom_trial),
    Case(
        "segfault",
        platform_fault(
            "segfault",
            lambda run, a: worker_watch(
                run, "crashed", {"event": "worker exited", "reason": "crashed"}, signal="SIGSEGV"
            ),
        ),
    ),
    Case("protocol mismatch", protocol_trial, {"workers": 2}, code=copied_code),
    Case("oversized item", platform_fault("big_item", lambda r, a: account_errors_watch(a))),
    Case(
        "oversized frame",
        platform_fault(
            "big_frame",
            lambda run, a: worker_watch(
                run, "protocol_error", {"event": "protocol error", "kind": "framing"}
            ),
        ),
    ),
    Case(
        "crash-looping account",
        platform_fault(
            "raise", lambda run, a: account_state_watch(a, "backoff", ("backoff",)), once=False
        ),
    ),
    Case(
        "platform that cannot load",
        added_account_trial(
            "testplatforms.bad_import:Never",
            lambda a: account_state_watch(a, "failed", ("cannot run",)),
        ),
    ),
    Case(
        "account without progress",
        added_account_trial(
            "testplatforms.behaviours:Idle",
            lambda a: Watch(
                f"/accounts/{a}",
                lambda info: info["stale"],
                lambda s: sample(s, "hiscrm_account_stale", account=a) == 1,
                lambda h: check(h, "accounts", "stale", a),
                {"event": "account is stale: no progress", "account_id": a},
            ),
        ),
        {"stale": STALE_AFTER_S},
        threshold_s=STALE_AFTER_S,
    ),
    Case("store that cannot commit", store_trial, threshold_s=STORE_STUCK_S),
    Case("full disk", full_disk_trial),
    Case(
        "memory limit",
        memory_limit_trial,
        {"supervision": f"max_memory_mb = {MEMORY_LIMIT_MB}"},
    ),
    Case(
        "poison account",
        poison_trial,
        {"workers": 2, "quarantine": "release_after_s = 300", "accounts": ""},
    ),
]


@contextmanager
def case_master(case: Case) -> Iterator[tuple[Run, Path]]:
    with tempfile.TemporaryDirectory(prefix="hiscrm-bench-faults-") as tmp_name:
        tmp = Path(tmp_name)
        code = case.code(tmp) if case.code else REPO
        run = Run(tmp, config(**case.config), code)
        try:
            yield run, tmp
        finally:
            run.stop()


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:,.0f}" if values else "—"


def row(case: Case, figures: Figures) -> list[str]:
    health = ms(figures.health) if figures.health_meant else "n/a"
    if figures.health_meant and len(figures.health) < figures.trials:
        health += f" (seen {len(figures.health)}/{figures.trials})"
    threshold = ""
    if case.threshold_s is not None:
        past = [v - case.threshold_s for v in figures.status]
        threshold = f"{case.threshold_s:g} s (status {ms(past)} past it)"
    worst = f"{max(figures.status) * 1000:,.0f}" if figures.status else "—"
    cells = [case.name, ms(figures.status), worst, ms(figures.metric), health, ms(figures.event)]
    return [*cells, threshold]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="run the cases whose name holds one of these")
    args = parser.parse_args()
    print(f"# {machine()}; {args.trials} trials per fault; medians in ms from the fault")
    rows = []
    for case in CASES:
        if args.only and not any(word in case.name for word in args.only):
            continue
        figures = Figures()
        try:
            with case_master(case) as (run, tmp):
                for n in range(args.trials):
                    case.trial(run, n, tmp, figures)
            rows.append(row(case, figures))
        except (TimeoutError, AssertionError, httpx.HTTPError) as exc:
            failed = f"failed in trial {figures.trials + 1}: {exc!r}"
            rows.append([case.name, failed, "", "", "", "", ""])
        print(" | ".join(rows[-1]), flush=True)
    print("\n| fault | status | status, slowest | metric | /healthz | master.log | threshold |")
    print("|---|---|---|---|---|---|---|")
    for cells in rows:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
