"""What wakes the supervisor. Producers (pipes, process exits, signals, the API, the
memory watch's thread) post these to one queue; only the supervisor loop acts on them.
Process events carry the pid, so an event from a process that has since been replaced
is recognised and dropped."""

from dataclasses import dataclass

from hiscrm.master.supervision.commands import CommandRequest
from hiscrm.master.supervision.memory_watch import MemoryMeasured


@dataclass(frozen=True, slots=True)
class FrameReceived:
    worker_id: str
    pid: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    worker_id: str
    pid: int
    error: Exception | None


@dataclass(frozen=True, slots=True)
class ProcessExited:
    worker_id: str
    pid: int


@dataclass(frozen=True, slots=True)
class SignalReceived:
    signum: int


@dataclass(frozen=True, slots=True)
class DeadlinesChanged:
    """Something outside the loop (the data wing, from the API) has a new deadline."""


Event = (
    FrameReceived
    | ChannelClosed
    | ProcessExited
    | SignalReceived
    | CommandRequest
    | MemoryMeasured
    | DeadlinesChanged
)
