"""Every message between master and worker: one pydantic union, one envelope, one codec.

Frames on the pipe are JSON envelopes::

    {"protocol": 1, "id": 17, "sent_at": 1763848020123, "body": {"type": "worker:heartbeat", ...}}

``decode`` never lets bad input escape as anything but a :class:`ProtocolError` that says
what was wrong (undecodable bytes, another protocol version, an unknown type, an invalid
field) and carries the first bytes, so receivers can log it, count it and carry on.

A type constant cannot be "undefined at run time" here: a message is its class, the union
lists every class, and ``tests/test_protocol.py`` checks that nothing is left out.
"""

import hashlib
import itertools
import json
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hiscrm.channel import MAX_FRAME_BYTES
from hiscrm.code_fingerprint import CodeFile
from hiscrm.items import MAX_INT, Item, epoch_ms
from hiscrm.models import AccountSpec
from hiscrm.replies import ReplyAction

PROTOCOL_VERSION = 1
ERROR_HEAD_BYTES = 80  # how much of a bad frame goes into the error message
# Syncs and digests are chunked to stay below this: a frame's limit, less room for the
# envelope around them.
MAX_MESSAGE_BYTES = MAX_FRAME_BYTES - 64 * 1024
_SYNC_OVERHEAD_BYTES = 300  # envelope and body fields around the list of changes


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- worker -> master -------------------------------------------------------------------


class WorkerRegister(_Message):
    """First message of a worker: who it is and which protocol it speaks."""

    type: Literal["worker:register"] = "worker:register"
    worker_id: str
    pid: int
    protocol: int
    schema_hash: str
    platforms: list[str]
    boot_ms: float  # from the start of the interpreter to this message
    code_version: str
    code_files: list[CodeFile]  # what it runs, to compare with the disk
    # Platforms it could not load (spec -> the error line and the end of the traceback):
    # their accounts are ``failed`` in this process; the others run.
    platform_errors: dict[str, str] = Field(default_factory=dict)
    # Platforms (specs) whose class declares ``sends_idempotent``: a reply of theirs left
    # ``unknown`` may be sent again. One imported later (at an account's first assignment)
    # is not listed: its replies count as not idempotent.
    idempotent_platforms: list[str] = Field(default_factory=list)


class WorkerHeartbeat(_Message):
    """Sent by the worker's event loop every ``heartbeat_interval_s``."""

    type: Literal["worker:heartbeat"] = "worker:heartbeat"
    seq: int
    loop_lag_ms: float  # how late the loop woke up for this beat
    errors_total: int
    progress_at: dict[str, int] = Field(default_factory=dict)  # account id -> ms of last progress
    log_write_errors: int = 0  # log lines the worker could not write (disk full)
    sync: dict[str, int] = Field(default_factory=dict)  # messages, bytes, resends, nacks


class WorkerError(_Message):
    """An error caught in the worker; it is also in the worker's log with its traceback."""

    type: Literal["worker:error"] = "worker:error"
    source: str  # where it happened: "account", "heartbeat", "protocol", "loop", ...
    account_id: str | None = None
    error_type: str
    message: str
    traceback: str
    errors_total: int

    @property
    def summary(self) -> str:
        """``Type: message``, or the type alone when the message is empty."""
        return f"{self.error_type}: {self.message}" if self.message else self.error_type


class WorkerAccountState(_Message):
    """An account task in the worker changed state."""

    type: Literal["worker:account:state"] = "worker:account:state"
    account_id: str
    state: str
    restarts: int
    reason: str


class ItemChange(BaseModel):
    """One item as it is after change ``seq`` of its account."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=1, le=MAX_INT)
    version: int = Field(ge=1, le=MAX_INT)
    hash: str
    item: Item


class WorkerDataSync(_Message):
    """Changes ``base_seq < seq <= last_seq`` of one account, oldest first: every change in
    that range that still matters (one superseded by a newer change of the same item is
    left out). The master commits it only if it has everything up to ``base_seq``, so a
    lost or failed sync is never skipped over. Empty ``changes`` still proves the account's
    sync path works."""

    type: Literal["worker:data:sync"] = "worker:data:sync"
    account_id: str
    base_seq: int = Field(ge=0, le=MAX_INT)
    last_seq: int = Field(ge=0, le=MAX_INT)
    changes: list[ItemChange]

    @model_validator(mode="after")
    def _seqs_match_the_changes(self) -> Self:
        """The range is what the changes say: an empty sync covers nothing (``last_seq ==
        base_seq``), a full one ends at its last change, and changes go up inside it. A
        sync that claims more would move the store's acknowledged seq past changes it
        never saw."""
        if self.last_seq < self.base_seq:
            raise ValueError(f"last_seq {self.last_seq} is before base_seq {self.base_seq}")
        if not self.changes:
            if self.last_seq != self.base_seq:
                raise ValueError(
                    f"an empty sync must have last_seq == base_seq, not {self.base_seq}.."
                    f"{self.last_seq}"
                )
            return self
        previous = self.base_seq
        for change in self.changes:
            if not previous < change.seq <= self.last_seq:
                raise ValueError(
                    f"change seq {change.seq} out of order or outside "
                    f"({self.base_seq}, {self.last_seq}]"
                )
            previous = change.seq
        if previous != self.last_seq:
            raise ValueError(f"last_seq {self.last_seq} but the last change is seq {previous}")
        return self


class WorkerAccountReleased(_Message):
    """Answer to ``master:account:revoke``: the account's task has stopped, and nothing of
    it is left unacknowledged (``unacked`` says otherwise, and those stay in the spool)."""

    type: Literal["worker:account:released"] = "worker:account:released"
    account_id: str
    unacked: int


class WorkerSendResult(_Message):
    """What became of a ``master:send``: ``sent`` (with the platform's id of what it
    sent, if it said), ``failed`` (the platform raised, cannot send, or the target is not
    this account's: ``error`` says which), or ``not_sent`` (the account does not run here
    now: nothing was handed to the platform, so it may go again)."""

    type: Literal["worker:send:result"] = "worker:send:result"
    account_id: str
    request_id: str
    outcome: Literal["sent", "failed", "not_sent"]
    item_id: str | None = None
    error: str | None = None


class WorkerGoodbye(_Message):
    """The worker is about to exit on its own terms."""

    type: Literal["worker:goodbye"] = "worker:goodbye"
    reason: str


# --- master -> worker -------------------------------------------------------------------


class MasterWelcome(_Message):
    """Registration accepted; carries the master's protocol so the worker checks it too."""

    type: Literal["master:welcome"] = "master:welcome"
    protocol: int
    schema_hash: str
    master_pid: int


class MasterRefuse(_Message):
    """Registration refused; the worker exits with ``ExitCode.PROTOCOL_MISMATCH``."""

    type: Literal["master:refuse"] = "master:refuse"
    reason: str


class MasterShutdown(_Message):
    """Stop gracefully within ``timeout_s`` and exit 0."""

    type: Literal["master:shutdown"] = "master:shutdown"
    reason: str
    timeout_s: float


class MasterAccountAssign(_Message):
    """Watch this account. The store has every change up to ``acked_seq``; ``digest``
    messages with ``digest_total`` entries follow before the account starts."""

    type: Literal["master:account:assign"] = "master:account:assign"
    account: AccountSpec
    acked_seq: int = Field(ge=0)
    digest_total: int = Field(ge=0)


class MasterAccountDigest(_Message):
    """What the store holds for an account: ``[kind, id, version, hash]`` per item."""

    type: Literal["master:account:digest"] = "master:account:digest"
    account_id: str
    entries: list[tuple[str, str, int, str]]


class MasterDataAck(_Message):
    """Every change of the account up to ``seq`` is committed to the store."""

    type: Literal["master:data:ack"] = "master:data:ack"
    account_id: str
    seq: int


class MasterDataNack(_Message):
    """A sync could not be committed; the worker sends it again later."""

    type: Literal["master:data:nack"] = "master:data:nack"
    account_id: str
    seq: int
    reason: str


class MasterSyncRequest(_Message):
    """Send pending changes now; with ``from_seq``, send again every item changed after
    that sequence number (as far as the worker still holds it)."""

    type: Literal["master:sync:request"] = "master:sync:request"
    account_id: str
    from_seq: int | None = None


class MasterSend(_Message):
    """Send this reply through the account's platform, once; answered by
    ``worker:send:result``."""

    type: Literal["master:send"] = "master:send"
    account_id: str
    request_id: str
    action: ReplyAction


class MasterAccountRevoke(_Message):
    type: Literal["master:account:revoke"] = "master:account:revoke"
    account_id: str


AnyMessage = (
    WorkerRegister
    | WorkerHeartbeat
    | WorkerError
    | WorkerAccountState
    | WorkerDataSync
    | WorkerAccountReleased
    | WorkerSendResult
    | WorkerGoodbye
    | MasterWelcome
    | MasterRefuse
    | MasterShutdown
    | MasterAccountAssign
    | MasterAccountDigest
    | MasterAccountRevoke
    | MasterDataAck
    | MasterDataNack
    | MasterSyncRequest
    | MasterSend
)
Message = Annotated[AnyMessage, Field(discriminator="type")]


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: int
    id: int
    sent_at: int  # ms since the epoch
    body: Message

    @field_validator("protocol")
    @classmethod
    def _same_version(cls, value: int) -> int:
        if value != PROTOCOL_VERSION:
            raise ValueError(f"protocol version {value}, this side speaks {PROTOCOL_VERSION}")
        return value


def message_types() -> dict[str, type[_Message]]:
    """Every message class in the union, by its ``type`` tag."""
    members: tuple[type[_Message], ...] = AnyMessage.__args__
    return {m.model_fields["type"].default: m for m in members}


_SCHEMA_HASH: str | None = None
_REF_ID = re.compile(r'("ref": "[^"]*):\d+"')  # "hiscrm.protocol.Envelope:9419885548"


def schema_hash() -> str:
    """A short hash of the whole message schema; both sides compare it at registration."""
    global _SCHEMA_HASH
    if _SCHEMA_HASH is None:
        _SCHEMA_HASH = model_schema_hash(Envelope)
    return _SCHEMA_HASH


def model_schema_hash(model: type[BaseModel]) -> str:
    """A short hash of ``model``'s schema, the same in every process: pydantic's core
    schema, built already (a JSON Schema would take ~10 ms to make), with functions by
    name and the object ids in its references left out."""
    schema = json.dumps(
        model.__pydantic_core_schema__,
        sort_keys=True,
        default=lambda value: getattr(value, "__qualname__", type(value).__name__),
    )
    schema = _REF_ID.sub(r'\1"', schema)
    return hashlib.sha256(schema.encode()).hexdigest()[:16]


class ProtocolErrorKind(StrEnum):
    UNDECODABLE = "undecodable"  # not JSON
    VERSION = "version"  # another protocol version
    UNKNOWN_TYPE = "unknown_type"  # a message type this side does not know
    INVALID = "invalid"  # a field is wrong, or the message is not for this side
    FRAMING = "framing"  # the byte stream broke (a length that cannot be)


class ProtocolError(Exception):
    """A frame that could not be turned into a message, and why (``kind``)."""

    def __init__(self, kind: ProtocolErrorKind, detail: str, head: bytes) -> None:
        super().__init__(f"{kind}: {detail}; first bytes: {head!r}")
        self.kind = kind
        self.detail = detail
        self.head = head


class Encoder:
    """Wraps messages into envelopes with increasing ids; one per sending side."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def encode(self, body: AnyMessage) -> bytes:
        envelope = Envelope.model_construct(
            protocol=PROTOCOL_VERSION,
            id=next(self._ids),
            sent_at=epoch_ms(),
            body=body,
        )
        return envelope.model_dump_json().encode()

    def encode_sync(
        self, account_id: str, base_seq: int, last_seq: int, changes: list[bytes]
    ) -> bytes:
        """A ``worker:data:sync`` frame from changes already serialized as ItemChange JSON
        (the same bytes the spool holds), so each item is serialized once. The receiver
        validates it like any other message."""
        head = json.dumps(
            {
                "protocol": PROTOCOL_VERSION,
                "id": next(self._ids),
                "sent_at": epoch_ms(),
                "body": {
                    "type": "worker:data:sync",
                    "account_id": account_id,
                    "base_seq": base_seq,
                    "last_seq": last_seq,
                },
            },
            separators=(",", ":"),
        ).encode()
        return head[:-2] + b',"changes":[' + b",".join(changes) + b"]}}"


def change_json(seq: int, version: int, hash_: str, item_json: bytes) -> bytes:
    """One ItemChange as JSON, built around the item's own JSON."""
    return b'{"seq":%d,"version":%d,"hash":"%s","item":%s}' % (
        seq,
        version,
        hash_.encode(),
        item_json,
    )


T = TypeVar("T")


def chunk_by_size(items: list[T], size_of: Callable[[T], int], budget: int) -> list[list[T]]:
    """Split ``items``, in order, into groups whose sizes add up to at most ``budget``
    (an item bigger than that goes alone)."""
    chunks: list[list[T]] = []
    current: list[T] = []
    size = 0
    for item in items:
        item_size = size_of(item)
        if current and size + item_size > budget:
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += item_size
    if current:
        chunks.append(current)
    return chunks


def sync_batches(
    changes: list[tuple[int, bytes]], budget: int = MAX_MESSAGE_BYTES
) -> list[list[tuple[int, bytes]]]:
    """Split ``(seq, serialized change)`` pairs, in order, into groups whose sync message
    stays within ``budget``."""
    return chunk_by_size(changes, lambda change: len(change[1]) + 1, budget - _SYNC_OVERHEAD_BYTES)


def decode(data: bytes) -> Envelope:
    """Validate one frame into an Envelope or raise ProtocolError saying what was wrong."""
    try:
        return Envelope.model_validate_json(data)
    except ValidationError as exc:
        raise _classify(exc, data) from exc


def _classify(exc: ValidationError, data: bytes) -> ProtocolError:
    head = bytes(data[:ERROR_HEAD_BYTES])
    errors = exc.errors(include_url=False)
    if any(e["type"] in ("json_invalid", "json_type") for e in errors):
        return ProtocolError(ProtocolErrorKind.UNDECODABLE, errors[0]["msg"], head)
    for error in errors:
        if error["loc"][:1] == ("protocol",):
            detail = str(error["msg"]).removeprefix("Value error, ")
            return ProtocolError(ProtocolErrorKind.VERSION, detail, head)
    for error in errors:
        if error["loc"] == ("body",) and error["type"] == "union_tag_invalid":
            tag = _body_type(data)
            detail = f"unknown message type {tag!r}"
            return ProtocolError(ProtocolErrorKind.UNKNOWN_TYPE, detail, head)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    return ProtocolError(ProtocolErrorKind.INVALID, f"{where}: {first['msg']}", head)


def _body_type(data: bytes) -> Any:
    try:
        return json.loads(data)["body"]["type"]
    except (ValueError, KeyError, TypeError):
        return None


class WorkerBoot(BaseModel):
    """What a worker process is told when it is started (not a message on the pipe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    worker_id: str
    master_pid: int
    log_path: str
    log_max_bytes: int
    log_backups: int
    heartbeat_interval_s: float
    stop_timeout_s: float
    backoff_initial_s: float
    backoff_max_s: float
    backoff_reset_after_s: float
    platforms: list[str]  # module:Class specs to import at boot
    plugin_paths: list[str] = Field(default_factory=list)  # appended to sys.path first
    spool_dir: str  # <state_dir>/spool: unacknowledged changes per account
    code_packages: list[str] = Field(default_factory=list)  # fingerprinted besides hiscrm
    idle_sync_s: float  # an account with nothing new still syncs this often
    ack_timeout_s: float  # a sync not acknowledged in this time is sent again
    # collection -> days the store keeps it (``[retention]``): older items are forgotten
    retention_days: dict[str, float] = Field(default_factory=dict)
