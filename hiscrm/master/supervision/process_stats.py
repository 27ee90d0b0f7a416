"""Memory and CPU of worker processes, read with psutil when someone asks (status, metrics)."""

from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class ProcessSample:
    rss_bytes: int
    cpu_percent: float  # since the previous sample of this process
    cpu_seconds: float  # user + system, since the process started


class ProcessStats:
    """Keeps one psutil.Process per pid, so CPU percentages have a previous reading."""

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}

    def sample(self, pid: int) -> ProcessSample | None:
        process = self._processes.get(pid)
        try:
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
                process.cpu_percent(None)  # the baseline for the next call
            with process.oneshot():
                times = process.cpu_times()
                return ProcessSample(
                    process.memory_info().rss, process.cpu_percent(None), times.user + times.system
                )
        except (psutil.NoSuchProcess, psutil.ZombieProcess):  # it just exited: no figures
            self._processes.pop(pid, None)
            return None

    def keep_only(self, pids: set[int]) -> None:
        for pid in set(self._processes) - pids:
            del self._processes[pid]
