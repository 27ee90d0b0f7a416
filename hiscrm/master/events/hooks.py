"""Hooks (``[[hooks]]``): events sent to a URL or a command, each hook on its own.

Each hook follows the hub like a stream's client, with a queue of ``queue`` events;
what comes beyond is dropped and counted. One task per hook delivers its events in
order: a POST of the event's JSON (``{"id", "event", "data"}``) to ``url``, answered with
a 2xx; or ``command`` run with that JSON on its standard input, ending with status 0
(its output goes to ``logs/hooks.log``, also what it printed before a kill at its time
limit). ``timeout_s`` bounds each attempt whole, not each phase of it. A failed attempt is
logged and counted, and tried again after ``backoff_s``, doubled each time, up to
``retries`` times; then the event is given up, said so. A hook that hangs or fails
holds up only its own queue: never the master, the store or other hooks.
"""

import asyncio
import contextlib
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from structlog.typing import FilteringBoundLogger

from hiscrm import safe_path
from hiscrm.config import HookConfig
from hiscrm.logfile import RotatingLogFile
from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.store import StoredEvent
from hiscrm.master.events.hub import EventHub
from hiscrm.master.events.subscriber import Subscriber

if TYPE_CHECKING:
    import httpx

OUTPUT_LIMIT = 64 * 1024  # bytes of a command's output kept in hooks.log per event
KILLED_OUTPUT_WAIT_S = 1.0  # how long the output of a command killed is read after
MAX_DELAY_S = 300.0


def retry_delay(failures: int, backoff_s: float) -> float:
    """The wait after the ``failures``-th failed attempt of one event."""
    return float(min(backoff_s * 2 ** min(failures - 1, 32), MAX_DELAY_S))


def envelope(event: StoredEvent) -> bytes:
    """What a hook receives: the event's id, name and data (its JSON as stored)."""
    return f'{{"id":{event.id},"event":"{event.name}","data":{event.data}}}'.encode()


class HookQueue(Subscriber):
    """A hook's queue: bounded by a number of events; beyond it, events are dropped."""

    def __init__(self, event_filter: EventFilter, limit: int) -> None:
        super().__init__(event_filter, max_bytes=2**62, client=False)
        self.limit = limit
        self.dropped = 0

    def offer(self, events: list[StoredEvent]) -> bool:
        room = self.limit - len(self.buffered)
        wanted = [
            e for e in events if e.id > self.start and self.filter.matches(e.name, e.account_id)
        ]
        if len(wanted) > room:
            self.dropped += len(wanted) - max(room, 0)
            wanted = wanted[: max(room, 0)]
        return super().offer(wanted)


class HookStats(msgspec.Struct):
    deliveries: int = 0  # events delivered
    failures: int = 0  # failed attempts, and events dropped or given up
    dropped: int = 0  # events dropped because the queue was full
    given_up: int = 0
    last_error: str | None = None


class Hook:
    def __init__(
        self,
        config: HookConfig,
        hub: EventHub,
        output: RotatingLogFile,
        log: FilteringBoundLogger,
    ) -> None:
        self.config = config
        self.name = str(config.name)
        self.stats = HookStats()
        self._hub = hub
        self._output = output
        self._log = log.bind(hook=self.name)
        self.queue = HookQueue(EventFilter(tuple(config.on)), config.queue)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def start(self) -> None:
        self._hub.subscribe(self.queue)
        if self.config.url is not None:
            import httpx  # only a webhook needs it (the master imports it late otherwise)

            self._client = httpx.AsyncClient(timeout=self.config.timeout_s)
        self._task = asyncio.create_task(self._run(), name=f"hook {self.name}")

    async def stop(self) -> None:
        self._hub.unsubscribe(self.queue)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _run(self) -> None:
        while True:
            batch = await self.queue.next_batch(60.0)
            self._note_dropped()
            for event in batch:
                await self._deliver(event)

    def _note_dropped(self) -> None:
        dropped = self.queue.dropped - self.stats.dropped
        if dropped > 0:
            self.stats.dropped += dropped
            self.stats.failures += dropped
            self._log.error(
                "hook events dropped: its queue is full (the hook is slower than the events)",
                dropped=dropped,
                queue=self.config.queue,
            )

    async def _deliver(self, event: StoredEvent) -> None:
        body = envelope(event)
        attempts = self.config.retries + 1
        for attempt in range(1, attempts + 1):
            error = await self._attempt(event, body)
            if error is None:
                self.stats.deliveries += 1
                return
            self.stats.failures += 1
            self.stats.last_error = error
            self._log.error(
                "hook delivery failed",
                event_id=event.id,
                event_name=event.name,
                attempt=attempt,
                of=attempts,
                error=error,
            )
            if attempt < attempts:
                await asyncio.sleep(retry_delay(attempt, self.config.backoff_s))
        self.stats.given_up += 1
        self._log.error("hook gave up on an event", event_id=event.id, event_name=event.name)

    async def _attempt(self, event: StoredEvent, body: bytes) -> str | None:
        """None if delivered; else why not, in a few words."""
        if self._client is not None and self.config.url is not None:
            return await self._post(self._client, self.config.url, body)
        assert self.config.command is not None
        return await self._run_command(self.config.command, event, body)

    async def _post(self, client: "httpx.AsyncClient", url: str, body: bytes) -> str | None:
        import httpx

        try:
            # The whole attempt: httpx's own timeout bounds each phase (a connect, a
            # read), so an answer trickling in would hold the hook far longer.
            async with asyncio.timeout(self.config.timeout_s):
                answer = await client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
        except (TimeoutError, httpx.TimeoutException):
            return f"no answer within {self.config.timeout_s:g} s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if not answer.is_success:
            return f"answered {answer.status_code}: {answer.text[:200]}"
        return None

    async def _run_command(self, command: list[str], event: StoredEvent, body: bytes) -> str | None:
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # its own group: a time limit ends all it started
                env=safe_path.plain_environment(),
            )
        except OSError as exc:
            return f"cannot run {command[0]!r}: {exc}"
        assert process.stdin is not None
        assert process.stdout is not None
        output = CommandOutput()
        try:
            async with asyncio.timeout(self.config.timeout_s):
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(_feed(process.stdin, body))
                    tasks.create_task(output.collect(process.stdout))
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            # What it printed before is in the pipe still (unless something it started
            # left its group and holds the pipe open: then not waited for long).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILLED_OUTPUT_WAIT_S):
                    await output.collect(process.stdout)
            self._write_output(event, output)
            return f"still running after {self.config.timeout_s:g} s: killed"
        except asyncio.CancelledError:  # the hook stops (the master does): what it ran goes
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            raise
        self._write_output(event, output)
        if process.returncode != 0:
            return f"exited with status {process.returncode}"
        return None

    def _write_output(self, event: StoredEvent, output: "CommandOutput") -> None:
        if not output.kept:
            return
        prefix = f"[{self.name} event {event.id}] ".encode()
        lines = b"".join(prefix + line + b"\n" for line in bytes(output.kept).splitlines())
        if output.beyond:
            lines += prefix + f"... {output.beyond} more bytes\n".encode()
        try:
            self._output.write(lines)
        except OSError as exc:
            self.stats.failures += 1
            self._log.error("cannot write hooks.log", exc_info=exc)


class CommandOutput:
    """A command's output as it comes: the first ``OUTPUT_LIMIT`` bytes, and how many
    more (read and let go, so a chatty command never fills its pipe and stalls)."""

    def __init__(self) -> None:
        self.kept = bytearray()
        self.beyond = 0

    async def collect(self, stream: asyncio.StreamReader) -> None:
        """Until the end of ``stream``."""
        while chunk := await stream.read(64 * 1024):
            room = OUTPUT_LIMIT - len(self.kept)
            self.kept += chunk[:room]
            self.beyond += max(0, len(chunk) - max(room, 0))


async def _feed(stdin: asyncio.StreamWriter, body: bytes) -> None:
    """The event on the command's standard input; one that exits without reading it is
    no error of the feeding (its status tells)."""
    try:
        stdin.write(body)
        await stdin.drain()
        stdin.close()
        await stdin.wait_closed()
    except (BrokenPipeError, ConnectionResetError):
        return


class Hooks:
    """The hooks of the configuration; ``apply`` replaces them with a new set."""

    def __init__(self, hub: EventHub, logs_dir: Path, log: FilteringBoundLogger) -> None:
        self._hub = hub
        self._log = log
        self._output = RotatingLogFile(logs_dir / "hooks.log", 10 * 1024 * 1024, 3)
        self._opened = False
        self.running: dict[str, Hook] = {}
        self.retired: dict[str, HookStats] = {}  # counts of hooks taken out, for metrics

    async def apply(self, configs: list[HookConfig]) -> None:
        wanted = {str(c.name): c for c in configs}
        if wanted and not self._opened:
            self._output.open()
            self._opened = True
        for name, hook in list(self.running.items()):
            if wanted.get(name) != hook.config:
                await hook.stop()
                self.retired[name] = hook.stats
                del self.running[name]
        for name, config in wanted.items():
            if name not in self.running:
                hook = Hook(config, self._hub, self._output, self._log)
                if name in self.retired:  # a changed hook goes on counting
                    hook.stats = self.retired.pop(name)
                hook.start()
                self.running[name] = hook
                self._log.info("hook started", hook=name, on=config.on)

    async def stop(self) -> None:
        for hook in self.running.values():
            await hook.stop()
        if self._opened:
            self._output.close()

    def stats(self) -> dict[str, HookStats]:
        return {**self.retired, **{n: h.stats for n, h in self.running.items()}}
