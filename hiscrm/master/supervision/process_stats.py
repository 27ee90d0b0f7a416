"""Memory and CPU of worker processes, read with psutil when someone asks (status,
metrics, the memory limit).

CPU percent is measured over at least ``CPU_WINDOW_S``: asked more often, it answers the
last measurement instead of the few milliseconds since the previous question (which read
0.0 for a busy process)."""

import time
from collections.abc import Callable, Mapping

import msgspec
import psutil

from hiscrm import process_tree

CPU_WINDOW_S = 1.0


class ProcessSample(msgspec.Struct, frozen=True):
    rss_bytes: int
    cpu_percent: float | None  # over the last window of at least CPU_WINDOW_S; None at first
    cpu_seconds: float  # user + system, since the process started


class _Watched(msgspec.Struct):
    process: psutil.Process
    base_cpu: float  # cpu seconds at the start of the current window
    base_at: float  # monotonic time of it
    percent: float | None = None  # of the last complete window


class ProcessStats:
    """Keeps one psutil.Process per pid, with the start of its CPU window."""

    def __init__(self) -> None:
        self._watched: dict[int, _Watched] = {}

    def sample(self, pid: int) -> ProcessSample | None:
        now = time.monotonic()
        watched = self._watched.get(pid)
        try:
            process = watched.process if watched is not None else psutil.Process(pid)
            with process.oneshot():
                times = process.cpu_times()
                cpu = times.user + times.system
                rss = process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess):  # it just exited: no figures
            self._watched.pop(pid, None)
            return None
        if watched is None:
            watched = self._watched[pid] = _Watched(process, cpu, now)
        elif now - watched.base_at >= CPU_WINDOW_S:
            watched.percent = round(100 * (cpu - watched.base_cpu) / (now - watched.base_at), 1)
            watched.base_cpu, watched.base_at = cpu, now
        return ProcessSample(rss, watched.percent, cpu)

    def keep_only(self, pids: set[int]) -> None:
        for pid in set(self._watched) - pids:
            del self._watched[pid]


# --- the memory of a worker's whole process tree (the memory limit) ----------------------


class TreeMemory(msgspec.Struct, frozen=True):
    """A worker and all its descendants, summed. PSS (proportional set size: a page
    shared by n processes counts 1/n in each, so pages shared with the fork template are
    not counted once per worker) is read only when asked: it makes the kernel walk every
    mapping (~0.5 ms for a small Python process), RSS is one small read."""

    processes: int
    rss_bytes: int
    pss_bytes: int | None  # None: not read this time
    # Processes whose PSS could not be read (pid, why): counted in pss_bytes with their RSS.
    pss_unreadable: tuple[tuple[int, str], ...] = ()


def read_tree_memory(
    root: int,
    want_pss: Callable[[int], bool],
    known: Mapping[int, psutil.Process] | None = None,
    found: dict[int, psutil.Process] | None = None,
) -> TreeMemory | None:
    """The memory of ``root`` and its descendants now; None if ``root`` is gone.
    ``want_pss(rss_bytes)`` says, from the tree's RSS, whether to read PSS too.

    ``known`` are psutil.Process objects of an earlier call, by pid (reusing them saves
    a quarter of the cost); those of this tree are put in ``found``. The tree's pids are
    found afresh each time, so a pid reused meanwhile is still a process of the tree."""
    known = known or {}
    found = {} if found is None else found
    tree: list[tuple[psutil.Process, int]] = []
    for pid in [root, *process_tree.descendants(root)]:
        try:
            process = known.get(pid) or psutil.Process(pid)
            tree.append((process, process.memory_info().rss))
            found[pid] = process
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            if pid == root:  # gone (or not ours to read): no figures
                return None
            continue  # a descendant that just exited (a zombie holds no memory)
    rss = sum(r for _, r in tree)
    if not want_pss(rss):
        return TreeMemory(len(tree), rss, None)
    pss = 0
    unreadable: list[tuple[int, str]] = []
    for process, process_rss in tree:
        try:
            process_pss: int | None = getattr(process.memory_full_info(), "pss", None)
            why = "this system reports no PSS"
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        except (psutil.AccessDenied, OSError) as exc:  # another user's process, no smaps
            process_pss, why = None, f"{type(exc).__name__}: {exc}"
        if process_pss is None:
            pss += process_rss
            unreadable.append((process.pid, why))
        else:
            pss += process_pss
    return TreeMemory(len(tree), rss, pss, tuple(unreadable))
