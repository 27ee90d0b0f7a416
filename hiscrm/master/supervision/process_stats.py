"""Memory and CPU of worker processes, read with psutil when someone asks (status,
metrics, the memory limit).

CPU percent is measured over at least ``CPU_WINDOW_S``: asked more often, it answers the
last measurement instead of the few milliseconds since the previous question (which read
0.0 for a busy process)."""

import time
from dataclasses import dataclass

import psutil

CPU_WINDOW_S = 1.0


@dataclass(frozen=True, slots=True)
class ProcessSample:
    rss_bytes: int
    cpu_percent: float | None  # over the last window of at least CPU_WINDOW_S; None at first
    cpu_seconds: float  # user + system, since the process started


@dataclass(slots=True)
class _Watched:
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
