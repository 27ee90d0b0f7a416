"""What wakes the supervisor. Producers (pipes, process exits, signals, the API, the
memory watch's thread) post these to one queue; only the supervisor loop acts on them.
Process events carry the pid, so an event from a process that has since been replaced
is recognised and dropped."""

import msgspec

from hiscrm.master.supervision.commands import CommandRequest
from hiscrm.master.supervision.memory_watch import MemoryMeasured


class FrameReceived(msgspec.Struct, frozen=True):
    worker_id: str
    pid: int
    data: bytes


class ChannelClosed(msgspec.Struct, frozen=True):
    worker_id: str
    pid: int
    error: Exception | None


class ProcessExited(msgspec.Struct, frozen=True):
    worker_id: str
    pid: int


class SignalReceived(msgspec.Struct, frozen=True):
    signum: int


class DeadlinesChanged(msgspec.Struct, frozen=True):
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
