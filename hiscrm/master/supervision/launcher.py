"""How worker processes are started: the ``Launcher`` interface, and ``SpawnLauncher``,
which starts each worker in a fresh interpreter (``multiprocessing`` spawn), so it
imports the code now on disk. ``template_launcher`` forks them from a warm template
instead, falling back to this one.
"""

import multiprocessing
from collections.abc import Callable
from typing import Protocol

from hiscrm.channel import open_channel
from hiscrm.entrypoint import Entrypoint
from hiscrm.master.supervision.events import Event
from hiscrm.master.supervision.worker_process import WorkerProcess
from hiscrm.protocol import WorkerBoot

WORKER_ENTRYPOINT = Entrypoint("hiscrm.worker.bootstrap:main")


class Launcher(Protocol):
    starts: dict[str, int]  # workers started, by how (for metrics)

    async def prepare(self, sample: WorkerBoot, count_error: Callable[[], object]) -> None:
        """Once, before the first workers start; ``count_error`` counts what it logs."""

    async def start(self, boot: WorkerBoot, post: Callable[[Event], None]) -> WorkerProcess: ...

    def known_pids(self) -> set[int]:
        """Children of the master besides the workers that the launcher reaps itself."""

    def stop(self) -> None:
        """The master is done: let go of whatever the launcher keeps running."""


class SpawnLauncher:
    """Starts each worker in a fresh interpreter (multiprocessing ``spawn``)."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self.starts = {"spawn": 0}

    async def prepare(self, sample: WorkerBoot, count_error: Callable[[], object]) -> None:
        return None  # nothing to get ready

    def known_pids(self) -> set[int]:
        return set()

    def stop(self) -> None:
        return None  # it keeps nothing running

    async def start(self, boot: WorkerBoot, post: Callable[[Event], None]) -> WorkerProcess:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=WORKER_ENTRYPOINT,
            args=(boot.model_dump_json(), child_end),
            name=f"hiscrm-{boot.worker_id}",
        )
        try:
            process.start()
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self.starts["spawn"] += 1
        worker: WorkerProcess | None = None
        try:
            assert process.pid is not None
            worker = WorkerProcess(boot.worker_id, process.pid, post, process)
            worker.channel = await open_channel(
                parent_end, worker.on_frame, worker.on_channel_closed
            )
        except BaseException:  # e.g. out of file descriptors: take the process down again
            process.kill()
            process.join()
            parent_end.close()
            if worker is not None:
                worker.close()
            raise
        return worker
