"""What wakes the supervisor. Producers (pipes, process exits, signals) post these to one
queue; only the supervisor loop acts on them. Process events carry the pid, so an event
from a process that has since been replaced is recognised and dropped."""

import asyncio
from dataclasses import dataclass
from typing import Any

from hiscrm.master.data.store_thread import SyncOutcome


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
class Command:
    """An operator's action (from the API): ``stop``, ``start``, ``restart`` of a worker,
    or ``reload`` of all. ``reply`` gets the result once the action has settled."""

    action: str
    worker_id: str | None
    reply: "asyncio.Future[Any]"
    why: str = "requested"  # for the log: who asked (the API, --watch)


@dataclass(frozen=True, slots=True)
class StoreOutcomes:
    """The store thread committed (or refused) these syncs."""

    outcomes: list[SyncOutcome]


Event = FrameReceived | ChannelClosed | ProcessExited | SignalReceived | StoreOutcomes | Command
