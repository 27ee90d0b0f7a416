"""The memory limit (``[supervision] max_memory_mb``): every ``CHECK_INTERVAL_S`` one pass
measures the whole process tree of every running worker (the worker and all its
descendants: workers are child subreapers, so what their children leave stays in their
tree); a worker over its limit is restarted gracefully, reason ``memory_limit``. Without
a limit the figures are only shown, so a pass runs every ``SHOWN_ONLY_INTERVAL_S``, or
``CHECK_INTERVAL_S`` after the last one once a new worker process has registered.

Each slot's limit (``slot_limit_bytes``): the worker a quarantined account runs alone in
(``solo-<id>``) takes that account's own ``max_memory_mb`` when it has one; every other
worker, and a solo one whose account has none, ``[supervision] max_memory_mb``. A shared
worker never takes an account's own limit: its accounts share one process, so one
account's memory cannot be told from its neighbours'.

The figure judged is the tree's PSS (proportional set size: a page shared by n processes
counts 1/n in each, so the pages a forked worker shares with the template are not
counted once per worker), RSS standing in for a process whose PSS cannot be read.

Cheaply: reading PSS makes the kernel walk every mapping of a process (~0.5 ms for a
small Python process), reading RSS is one small read. PSS is never more than RSS, so a
tree whose RSS is within its limit is within it for sure: PSS is read when the RSS is
over the limit, and otherwise only to keep the figure shown fresh (``PSS_REFRESH_S``, or
sooner when the RSS moved by more than ``PSS_DRIFT_RATIO``). Those freshness reads are
spread over passes (``pss_budget``, the trees not read yet first): fifty workers started
together cost the master a few readings a pass, not fifty in one. The pass runs in a thread,
off the master's loop; its result comes back to the loop as an event, where the decision
(``over_limit``, pure) is taken and acted on. Without a limit the figures are still
measured and shown (to choose a limit by).
"""

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from enum import StrEnum
from functools import partial
from typing import Any

import msgspec
import psutil
from structlog.typing import FilteringBoundLogger

from hiscrm.master.supervision.process_stats import read_tree_memory

CHECK_INTERVAL_S = 2.0
SHOWN_ONLY_INTERVAL_S = 30.0  # no limit is set: the figures are only shown
PSS_REFRESH_S = 300.0  # the PSS shown is at most this old
PSS_DRIFT_RATIO = 0.1  # ... or read again once the RSS moved by this much of it
PSS_DRIFT_MIN_BYTES = 8 * 2**20  # (but not for less than this)
PSS_MIN_READS_PER_PASS = 2  # freshness reads a pass may make, at least
MB = 2**20


class MemoryKind(StrEnum):
    PSS = "pss"  # PSS of every process of the tree
    RSS = "rss"  # RSS for at least one process whose PSS could not be read (PSS for the rest)


class PssReading(msgspec.Struct, frozen=True):
    bytes: int  # PSS of the tree; RSS standing in for the processes it could not be read of
    at: float  # loop time
    rss_bytes: int  # the tree's RSS at the same moment
    kind: MemoryKind


class TreeFigures(msgspec.Struct, frozen=True):
    """One worker's process tree as last measured."""

    pid: int  # the worker's
    processes: int
    rss_bytes: int
    at: float  # loop time of the pass
    pss: PssReading | None  # the last PSS reading of this process (this pass or earlier)

    @property
    def judged_bytes(self) -> int:
        """What the limit is judged on: PSS read in this pass, else RSS (PSS was not read
        because the RSS is within the limit, so the PSS is too)."""
        if self.pss is not None and self.pss.at == self.at:
            return self.pss.bytes
        return self.rss_bytes


class Target(msgspec.Struct, frozen=True):
    worker_id: str
    pid: int
    limit_bytes: int | None
    last_pss: PssReading | None  # of this same process, from an earlier pass


class PassResult(msgspec.Struct, frozen=True):
    figures: dict[str, TreeFigures]  # by worker id; a worker that exited meanwhile is missing
    pss_unreadable: list[tuple[int, str]]  # (pid, why) counted with RSS instead
    cpu_s: float  # CPU time the pass took (its thread's)
    wall_s: float
    processes: dict[int, psutil.Process]  # every process measured, by pid (for the next pass)


class MemoryMeasured(msgspec.Struct, frozen=True):
    """A pass has finished in its thread (the event that brings it to the loop)."""

    outcome: "asyncio.Future[PassResult]"


class Over(msgspec.Struct, frozen=True):
    worker_id: str
    figures: TreeFigures
    limit_bytes: int

    def fields(self) -> dict[str, Any]:
        """For the log line."""
        pss = self.figures.pss
        return {
            "worker": self.worker_id,
            "pid": self.figures.pid,
            "tree_memory_mb": round(self.figures.judged_bytes / MB, 1),
            "kind": pss.kind.value if pss is not None else MemoryKind.RSS.value,
            "max_memory_mb": round(self.limit_bytes / MB, 1),
            "tree_rss_mb": round(self.figures.rss_bytes / MB, 1),
            "processes": self.figures.processes,
        }


# --- the decisions (pure) ------------------------------------------------------------------


def slot_limit_bytes(account_mb: int | None, workers_mb: int | None) -> int | None:
    """A slot's limit in bytes (None: none): ``account_mb``, the own limit of the account
    it runs alone (None for a shared worker, or an account without one), before
    ``workers_mb`` (``[supervision] max_memory_mb``)."""
    limit_mb = account_mb if account_mb is not None else workers_mb
    return None if limit_mb is None else limit_mb * MB


def pss_for_limit(rss_bytes: int, limit_bytes: int | None) -> bool:
    """Whether only the PSS can tell if a tree is over its limit (its RSS is over it)."""
    return limit_bytes is not None and rss_bytes > limit_bytes


def pss_needed(
    rss_bytes: int, limit_bytes: int | None, last: PssReading | None, now: float
) -> bool:
    """Whether to read a tree's PSS in this pass, given its RSS now: for the limit, or
    to keep the figure shown fresh."""
    if pss_for_limit(rss_bytes, limit_bytes):
        return True
    if last is None or now - last.at >= PSS_REFRESH_S:
        return True
    drift = max(PSS_DRIFT_MIN_BYTES, int(last.rss_bytes * PSS_DRIFT_RATIO))
    return abs(rss_bytes - last.rss_bytes) >= drift


def pss_budget(trees: int, interval_s: float) -> int:
    """How many trees one pass may read the PSS of only to keep the figure shown fresh:
    enough for every tree to be read once per ``PSS_REFRESH_S`` at passes ``interval_s``
    apart, and at least ``PSS_MIN_READS_PER_PASS``. Reads for the limit are never held
    back."""
    return max(PSS_MIN_READS_PER_PASS, math.ceil(trees * interval_s / PSS_REFRESH_S))


def refresh_order(target: Target) -> tuple[bool, float]:
    """Which trees get the freshness reads of a pass first: those never read, then the
    oldest reading."""
    last = target.last_pss
    return (last is not None, last.at if last is not None else 0.0)


def over_limit(figures: Mapping[str, TreeFigures], limits: Mapping[str, int | None]) -> list[Over]:
    """The workers whose tree is over their limit (None: no limit), in the order given."""
    over = []
    for worker_id, tree in figures.items():
        limit = limits.get(worker_id)
        if limit is not None and tree.judged_bytes > limit:
            over.append(Over(worker_id, tree, limit))
    return over


# --- one pass (in a thread) -------------------------------------------------------------------


def measure(
    targets: Sequence[Target],
    now: float,
    known: Mapping[int, psutil.Process] | None = None,
    budget: int | None = None,
) -> PassResult:
    """Measure every target's tree; ``now`` is the loop time the pass counts as, ``known``
    the previous pass's ``processes``, ``budget`` how many PSS reads this pass may make
    only to keep figures fresh (None: as many as needed)."""
    began, began_cpu = time.perf_counter(), time.thread_time()
    found: dict[int, psutil.Process] = {}
    figures: dict[str, TreeFigures] = {}
    unreadable: list[tuple[int, str]] = []
    left = [len(targets) if budget is None else budget]
    for target in sorted(targets, key=refresh_order):
        want = partial(_want_pss, target=target, now=now, left=left)
        tree = read_tree_memory(target.pid, want, known, found)
        if tree is None:
            continue  # it exited meanwhile
        pss = target.last_pss
        if tree.pss_bytes is not None:
            kind = MemoryKind.RSS if tree.pss_unreadable else MemoryKind.PSS
            pss = PssReading(tree.pss_bytes, now, tree.rss_bytes, kind)
            unreadable += tree.pss_unreadable
        figures[target.worker_id] = TreeFigures(
            target.pid, tree.processes, tree.rss_bytes, now, pss
        )
    cpu_s, wall_s = time.thread_time() - began_cpu, time.perf_counter() - began
    return PassResult(figures, unreadable, cpu_s, wall_s, found)


def _want_pss(rss_bytes: int, *, target: Target, now: float, left: list[int]) -> bool:
    if pss_for_limit(rss_bytes, target.limit_bytes):
        return True
    if left[0] > 0 and pss_needed(rss_bytes, target.limit_bytes, target.last_pss, now):
        left[0] -= 1
        return True
    return False


# --- the watch (on the loop) ------------------------------------------------------------------


class MemoryWatch:
    """The schedule of passes, the figures of the last one, and what they cost."""

    def __init__(self, log: FilteringBoundLogger, count_error: Callable[[], int]) -> None:
        self.log = log
        self.count_error = count_error
        self.figures: dict[str, TreeFigures] = {}  # of the last pass, by worker id
        self.passes = 0
        self.cpu_seconds = 0.0  # spent measuring, in the passes' thread
        self.wall_seconds = 0.0
        self._next: float | None = None  # when the next pass is due; None while one runs
        self._last = 0.0  # when the last pass ended (or the watch started)
        self._began = 0.0  # when the last pass began
        self._new_since: float | None = None  # a worker registered since; not measured yet
        self._said_rss = False
        self._processes: dict[int, psutil.Process] = {}  # of the last pass (only it reads them)

    def start(self, now: float) -> None:
        self._last = now
        self._next = now + CHECK_INTERVAL_S

    @property
    def deadline(self) -> float | None:
        return self._next

    def due(self, now: float, limited: bool = False) -> bool:
        """Whether a pass is due. It comes nearer (``CHECK_INTERVAL_S`` after the last)
        when a limit is set (``limited``: one may have been set since the last pass) or
        a new worker process has not been measured yet."""
        if self._next is None:
            return False  # one is running
        if limited or self._new_since is not None:
            self._next = min(self._next, self._last + CHECK_INTERVAL_S)
        return self._next <= now

    def new_worker(self, now: float) -> None:
        """A worker process registered: measure it soon."""
        if self._new_since is None:
            self._new_since = now

    def begin(
        self,
        serving: Mapping[str, int],
        limits: Mapping[str, int | None],
        now: float,
        post: Callable[[MemoryMeasured], None],
    ) -> None:
        """Start a pass over ``serving`` (worker id -> pid) in a thread; its result is
        posted as ``MemoryMeasured``."""
        targets = [
            Target(worker_id, pid, limits.get(worker_id), self._last_pss(worker_id, pid))
            for worker_id, pid in serving.items()
        ]
        if not targets:
            self._schedule(now, limits)
            return
        self._next = None
        self._began = now
        known = self._processes
        budget = pss_budget(len(targets), self._interval(limits))
        outcome = asyncio.get_running_loop().run_in_executor(
            None, measure, targets, now, known, budget
        )
        outcome.add_done_callback(lambda done: post(MemoryMeasured(done)))

    @staticmethod
    def _interval(limits: Mapping[str, int | None]) -> float:
        """Between passes, when no new worker waits: short only when a limit is set."""
        limited = any(limit is not None for limit in limits.values())
        return CHECK_INTERVAL_S if limited else SHOWN_ONLY_INTERVAL_S

    def _schedule(self, now: float, limits: Mapping[str, int | None]) -> None:
        if self._new_since is not None and self._new_since <= self._began:
            self._new_since = None  # the pass just ended has measured it
        self._last = now
        soon = self._new_since is not None
        self._next = now + (CHECK_INTERVAL_S if soon else self._interval(limits))

    def _last_pss(self, worker_id: str, pid: int) -> PssReading | None:
        figures = self.figures.get(worker_id)
        return figures.pss if figures is not None and figures.pid == pid else None

    def on_measured(
        self,
        event: MemoryMeasured,
        now: float,
        serving: Mapping[str, int],
        limits: Mapping[str, int | None],
    ) -> list[Over]:
        """Take a finished pass's figures (of processes still serving: ``serving`` is
        worker id -> pid now) and say which workers are over their limit."""
        self._schedule(now, limits)
        if event.outcome.cancelled():
            return []
        try:
            result = event.outcome.result()
        except Exception as exc:  # a bug in the pass: the next one may do better
            self.log.error(
                "measuring workers' memory failed",
                internal_errors_total=self.count_error(),
                exc_info=exc,
            )
            return []
        self._processes = result.processes
        self.passes += 1
        self.cpu_seconds += result.cpu_s
        self.wall_seconds += result.wall_s
        self.figures = {
            worker_id: tree
            for worker_id, tree in result.figures.items()
            if serving.get(worker_id) == tree.pid
        }
        if result.pss_unreadable and not self._said_rss:
            self._said_rss = True
            pid, why = result.pss_unreadable[0]
            self.log.warning(
                "cannot read the proportional set size (PSS) of a worker's process; its "
                "resident set size (RSS) counts instead, which counts pages shared with "
                "the fork template in full (said once)",
                pid=pid,
                why=why,
                processes=len(result.pss_unreadable),
            )
        return over_limit(self.figures, limits)

    def of(self, worker_id: str, pid: int | None) -> TreeFigures | None:
        """The last figures of this worker's process ``pid``, if measured."""
        figures = self.figures.get(worker_id)
        return figures if figures is not None and figures.pid == pid else None
