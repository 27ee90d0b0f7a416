"""Why and how a worker process is being stopped, as one value.

A stop escalates: ``master:shutdown`` over the pipe (*asked*), after ``stop_timeout_s``
SIGTERM to the process group (*signalled*; a hung worker gets SIGABRT alone first, so
faulthandler writes its stack), after ``kill_timeout_s`` SIGKILL (*killed*). The plan
says where the stop is, until when, and what follows the exit.
"""

import signal
from enum import Enum, StrEnum

import msgspec


class StopReason(StrEnum):
    """Why the master ends a process. The value is the exit record's ``reason``."""

    STOP = "stop"  # an operator stopped the worker
    RESTART = "restart"  # an operator restarted it
    SHUTDOWN = "shutdown"  # the master is stopping
    RELOAD = "reload"  # a rolling reload retires the old process
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"  # hung: no heartbeat
    START_TIMEOUT = "start_timeout"  # did not register in time
    PROTOCOL_ERROR = "protocol_error"  # its byte stream broke
    PROTOCOL_MISMATCH = "protocol_mismatch"  # it speaks another protocol
    MEMORY_LIMIT = "memory_limit"  # its process tree grew over [supervision] max_memory_mb

    @property
    def by_operator(self) -> bool:
        """Not a failure of the worker: no backoff, restarted at once if it is to be."""
        return self in OPERATOR_REASONS


OPERATOR_REASONS = frozenset(
    {StopReason.STOP, StopReason.RESTART, StopReason.SHUTDOWN, StopReason.RELOAD}
)


class StopStage(Enum):
    ASKED = "asked"  # master:shutdown sent (or nothing sent: it is told by a refusal)
    SIGNALLED = "signalled"  # SIGTERM to the group (SIGABRT to a hung worker)
    KILLED = "killed"  # SIGKILL to the group


class AfterStop(Enum):
    RESTART = "restart"  # start the slot again once the process has exited
    STAY_STOPPED = "stay_stopped"


class StopPlan(msgspec.Struct, frozen=True):
    reason: StopReason
    stage: StopStage
    signal: signal.Signals | None  # what was sent at this stage (None: only asked)
    deadline: float  # loop time at which the next stage begins
    then: AfterStop
