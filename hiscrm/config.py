"""The configuration file: its schema, the embedded default, and loading with clear errors.

Every key is read somewhere; unknown keys are errors, so a typo never becomes a setting
that silently does nothing. Every number has a finite range the program can run with
(``inf``, ``nan`` and absurd magnitudes are refused with the key named), so a value the
schema accepts is a value the master and its workers can use.
"""

import ipaddress
import re
import socket
import tomllib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from hiscrm.event_names import check_prefix as check_event_prefix
from hiscrm.items import KINDS
from hiscrm.models import AccountSpec, MemoryLimitMb
from hiscrm.platform_names import resolve_platform_name
from hiscrm.store_url import check_store_url

EMBEDDED_DEFAULT = "<embedded default>"
BOM = "\ufeff"

HOUR_S = 3600.0
DAY_S = 24 * HOUR_S
WEEK_S = 7 * DAY_S
NODE_ID_MAX = 63
NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # a label of metrics and logs
MAX_RETENTION_DAYS = 36500  # a hundred years: "keep", without overflowing a timestamp

# Days to keep one collection. The one place this range is set: ``[retention]`` is made of
# optional fields of this type, however its collections are listed.
RetentionDays = Annotated[float, Field(gt=0, le=MAX_RETENTION_DAYS, allow_inf_nan=False)]


def retention_field() -> Any:
    """A ``[retention]`` key: days to keep that collection; not set keeps it forever."""
    return Field(default=None)


def seconds(default: float, *, at_least: float, at_most: float) -> Any:
    """A duration key: finite, within ``[at_least, at_most]`` seconds."""
    return Field(default=default, ge=at_least, le=at_most, allow_inf_nan=False)


class ConfigError(Exception):
    """A configuration problem, rendered as one line: source, key, problem."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ApiConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=0, le=65535)  # 0: any free port (see master.json)
    auth: bool = True  # bearer token from <state_dir>/token on every route but /healthz
    metrics_public: bool = False  # serve /metrics without the token
    # Open connections at most (fewer if the fd limit leaves less room); beyond: 503.
    max_connections: int = Field(default=1000, ge=1, le=100_000)
    # A request's head and body must arrive within this (from the connection opening, or
    # from its first byte on a kept-alive connection); else 408 and the connection closes.
    request_read_timeout_s: float = Field(default=5.0, gt=0, le=300)
    max_log_followers: int = Field(default=16, ge=1, le=1000)  # logs?follow=true at once
    max_page_bytes: int = Field(default=4 * 2**20, ge=64 * 1024, le=256 * 2**20)  # per answer
    # A dashboard session (hiscrmctl open) lasts this long; then the page asks to sign in.
    session_ttl_s: float = seconds(12 * HOUR_S, at_least=1.0, at_most=30 * DAY_S)

    @field_validator("host")
    @classmethod
    def _host_usable(cls, host: str) -> str:
        if not host:
            raise ValueError(
                "must not be empty (an empty host would listen on every address; "
                'say "0.0.0.0" if that is meant)'
            )
        if any(c.isspace() or not c.isprintable() for c in host):
            raise ValueError(f"{host!r} is not a host name or address")
        return host

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> Self:
        if not self.auth and not self.is_loopback:
            raise ValueError(
                f"auth = false is only allowed on a loopback address, not host {self.host!r}"
            )
        return self

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/api/v1"


class SupervisionConfig(_Section):
    heartbeat_interval_s: float = seconds(5.0, at_least=0.01, at_most=HOUR_S)
    heartbeat_timeout_s: float = seconds(15.0, at_least=0.05, at_most=DAY_S)
    start_timeout_s: float = seconds(30.0, at_least=0.1, at_most=HOUR_S)
    stop_timeout_s: float = seconds(10.0, at_least=0.1, at_most=HOUR_S)
    kill_timeout_s: float = seconds(3.0, at_least=0.1, at_most=HOUR_S)
    backoff_initial_s: float = seconds(0.5, at_least=0.01, at_most=HOUR_S)
    backoff_max_s: float = seconds(30.0, at_least=0.01, at_most=DAY_S)
    backoff_reset_after_s: float = seconds(60.0, at_least=0.1, at_most=WEEK_S)
    reassign_after_s: float = seconds(30.0, at_least=0.1, at_most=DAY_S)
    fork_template: bool = True  # start workers by forking a warm template (Linux)
    # A worker whose whole process tree grows over this (PSS) is restarted gracefully (a
    # quarantined account's own worker: the account's max_memory_mb, when it has one).
    max_memory_mb: MemoryLimitMb | None = None  # 16 MB to 1 TB

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"heartbeat_timeout_s ({self.heartbeat_timeout_s}) must be greater than "
                f"heartbeat_interval_s ({self.heartbeat_interval_s})"
            )
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                f"backoff_max_s ({self.backoff_max_s}) must not be less than "
                f"backoff_initial_s ({self.backoff_initial_s})"
            )
        return self


class QuarantineConfig(_Section):
    """When an account is suspected of killing its workers (see docs/ARCHITECTURE.md)."""

    window_s: float = seconds(600.0, at_least=1.0, at_most=WEEK_S)  # evidence kept this long
    deaths: int = Field(default=3, ge=2, le=1000)  # worker deaths while it was there
    release_after_s: float = seconds(300.0, at_least=1.0, at_most=WEEK_S)  # alone, no death


class SyncConfig(_Section):
    stale_after_s: float = seconds(300.0, at_least=0.1, at_most=WEEK_S)


class _Retention(_Section):
    """Days to keep each collection in the store; a collection not named is kept forever."""

    def days(self) -> dict[str, float]:
        return {name: days for name, days in self.model_dump().items() if days is not None}


# One optional key per collection of the registry of kinds.
if TYPE_CHECKING:
    RetentionConfig = _Retention
else:
    RetentionConfig = create_model(
        "RetentionConfig",
        __base__=_Retention,
        **{kind.collection: (RetentionDays | None, retention_field()) for kind in KINDS.values()},
    )


class CodeConfig(_Section):
    """Which installed packages count as code to fingerprint (besides hiscrm and
    everything outside site-packages)."""

    packages: list[str] = Field(default_factory=list)


class LogsConfig(_Section):
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=4096, le=2**40)
    backups: int = Field(default=5, ge=0, le=1000)


class StoreConfig(_Section):
    """Where the data lives: no ``url``, SQLite in the state directory; a
    ``postgresql://`` URL, that PostgreSQL database."""

    url: str | None = None
    min_free_mb: int = Field(default=256, ge=0, le=10**7)  # below this, health is failing

    @field_validator("url")
    @classmethod
    def _url_usable(cls, url: str | None) -> str | None:
        return None if url is None else check_store_url(url)


def default_node_id() -> str:
    """This host's name, cut to what a node id may hold (the first label of a fully
    qualified name; other characters become ``-``)."""
    name = socket.gethostname().split(".")[0] or "node"
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", name)[:NODE_ID_MAX]
    return cleaned if cleaned[0].isalnum() else "n" + cleaned[: NODE_ID_MAX - 1]


class ClusterConfig(_Section):
    """Several masters on one PostgreSQL store: each holds leases on at most ``capacity``
    accounts (default: ``workers * accounts_per_worker``), renews them every
    ``lease_renew_s``; a master that stops renewing loses them after ``lease_ttl_s``."""

    node_id: str = Field(
        default_factory=default_node_id, pattern=NODE_ID_PATTERN, max_length=NODE_ID_MAX
    )
    lease_ttl_s: float = seconds(15.0, at_least=1.0, at_most=HOUR_S)
    lease_renew_s: float = seconds(3.0, at_least=0.1, at_most=HOUR_S)
    capacity: int | None = Field(default=None, ge=0, le=1_000_000)
    rebalance_step: int = Field(default=4, ge=1, le=10_000)  # leases moved per renewal

    @model_validator(mode="after")
    def _renewals_fit(self) -> Self:
        # A master must notice a failed renewal, retry once, and stop its accounts, all
        # before its leases can expire.
        if self.lease_renew_s * 3 > self.lease_ttl_s:
            raise ValueError(
                f"lease_renew_s ({self.lease_renew_s}) must be at most a third of "
                f"lease_ttl_s ({self.lease_ttl_s})"
            )
        return self


class EventsConfig(_Section):
    """The event stream (``GET /events``): what is kept for clients that resume, and
    how much a client may fall behind."""

    keep: int = Field(default=100_000, ge=100, le=100_000_000)  # supervisor events kept
    keep_s: float = seconds(DAY_S, at_least=60.0, at_most=365 * DAY_S)  # ... and how long
    heartbeat_s: float = seconds(15.0, at_least=0.1, at_most=HOUR_S)  # a comment when idle
    client_buffer_kb: int = Field(default=4096, ge=64, le=1024 * 1024)  # then cut off
    max_clients: int = Field(default=200, ge=1, le=100_000)  # streams open at once


class OutboxConfig(_Section):
    """Replies (``POST /accounts/{id}/messages|comments``)."""

    expire_after_s: float = seconds(3600.0, at_least=1.0, at_most=30 * DAY_S)  # still queued


class HookConfig(_Section):
    """``[[hooks]]``: events (by name or prefix) sent to a URL (POST of the event's JSON)
    or to a command (the event's JSON on its standard input)."""

    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[\w.-]+$")
    on: list[str] = Field(min_length=1)
    url: str | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    timeout_s: float = seconds(5.0, at_least=0.1, at_most=HOUR_S)  # per attempt
    retries: int = Field(default=5, ge=0, le=100)  # after the first attempt
    backoff_s: float = seconds(1.0, at_least=0.01, at_most=HOUR_S)  # doubled each retry
    queue: int = Field(default=1000, ge=1, le=1_000_000)  # events waiting; beyond: dropped

    @field_validator("on")
    @classmethod
    def _known_events(cls, on: list[str]) -> list[str]:
        for prefix in on:
            check_event_prefix(prefix)
        return on

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, not {url!r}")
        return url

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.url is None) == (self.command is None):
            raise ValueError("a hook has either url or command (exactly one)")
        return self


class Config(_Section):
    state_dir: Path = Path("var")
    workers: int = Field(default=2, ge=1, le=512)
    accounts_per_worker: int = Field(default=10, ge=1, le=10_000)
    api: ApiConfig = ApiConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    sync: SyncConfig = SyncConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    store: StoreConfig = StoreConfig()
    retention: RetentionConfig = RetentionConfig()
    code: CodeConfig = CodeConfig()
    logs: LogsConfig = LogsConfig()
    events: EventsConfig = EventsConfig()
    outbox: OutboxConfig = OutboxConfig()
    cluster: ClusterConfig = ClusterConfig()
    hooks: list[HookConfig] = Field(default_factory=list)
    # Where workers look for platform modules besides the master's sys.path (after it);
    # relative to the config file, whose own directory comes first (see load_config).
    plugin_paths: list[Path] = Field(default_factory=list)
    accounts: list[AccountSpec] = Field(default_factory=list)

    @field_validator("state_dir", mode="before")
    @classmethod
    def _state_dir_usable(cls, value: Any) -> Any:
        text = str(value) if isinstance(value, (str, Path)) else None
        if text is not None and not text.strip():
            raise ValueError('must not be empty (use "." for the config file\'s directory)')
        if text is not None and "\0" in text:
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("plugin_paths", mode="before")
    @classmethod
    def _plugin_paths_usable(cls, value: Any) -> Any:
        if isinstance(value, list):
            for entry in value:
                text = str(entry) if isinstance(entry, (str, Path)) else None
                if text is not None and not text.strip():
                    raise ValueError('an entry is empty (use "." for the config file\'s directory)')
                if text is not None and "\0" in text:
                    raise ValueError("an entry contains a NUL character")
        return value

    @field_validator("hooks")
    @classmethod
    def _hooks_named(cls, hooks: list[HookConfig]) -> list[HookConfig]:
        """Unnamed hooks are named ``hook1``, ``hook2``, … by their place; names are
        unique (they label metrics and log lines)."""
        named = [
            h if h.name is not None else h.model_copy(update={"name": f"hook{n}"})
            for n, h in enumerate(hooks, 1)
        ]
        seen: set[str] = set()
        for hook in named:
            if hook.name in seen:
                raise ValueError(f"hook name {hook.name!r} appears more than once")
            seen.add(str(hook.name))
        return named

    @field_validator("accounts")
    @classmethod
    def _accounts_valid(cls, accounts: list[AccountSpec]) -> list[AccountSpec]:
        seen: set[str] = set()
        for account in accounts:
            if account.id in seen:
                raise ValueError(f"account id {account.id!r} appears more than once")
            seen.add(account.id)
        return accounts

    @property
    def worker_ids(self) -> list[str]:
        return [f"worker{n}" for n in range(1, self.workers + 1)]

    @property
    def node_capacity(self) -> int:
        """How many accounts this master leases at most."""
        given = self.cluster.capacity
        return self.workers * self.accounts_per_worker if given is None else given

    @property
    def platform_specs(self) -> list[str]:
        """Every distinct platform the accounts use, as ``module:Class``, in config order."""
        specs = (resolve_platform_name(a.platform) for a in self.accounts)
        return list(dict.fromkeys(specs))


def _key_of(loc: tuple[int | str, ...]) -> str:
    key = ""
    for part in loc:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key


def _problem_of(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    message = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    if error["type"] not in ("value_error", "assertion_error", "missing") and "input" in error:
        message += f" (got {error['input']!r})"
    return message


def parse_config(text: str, source: str, base_dir: Path, overrides: dict[str, Any]) -> Config:
    """Parse TOML text into a Config; relative paths resolve against ``base_dir``.

    A UTF-8 byte order mark at the start (as some Windows editors write) is ignored. Text
    with no key at all (empty, or only blanks and comments) is refused: a file half
    written looks like this, and taking it as "every default, no accounts" would drop
    every declared account on ``update`` (and start the demo defaults). Without a file
    the master takes the embedded default."""
    try:
        raw = tomllib.loads(text.removeprefix(BOM))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from exc
    if not raw:  # nothing but blanks and comments: most likely a save not finished
        raise ConfigError(source, "", "the file is empty")
    raw.update(overrides)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        problem = _problem_of(dict(first))
        if len(errors) > 1:
            problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        key, leaf = _key_of(tuple(first["loc"])), str(first["loc"][-1]) if first["loc"] else ""
        if leaf and problem.startswith((f"{leaf}:", f"{leaf}.", f"{leaf}[")):
            inner, _, problem = problem.partition(": ")  # it names its own place, deeper
            key = key.removesuffix(leaf) + inner
        raise ConfigError(source, key, problem) from exc
    plugin_paths = [
        _resolved(base_dir / path, source, f"plugin_paths[{n}]")
        for n, path in enumerate(config.plugin_paths)
    ]
    return config.model_copy(
        update={
            "state_dir": _resolved(base_dir / config.state_dir, source, "state_dir"),
            "plugin_paths": list(dict.fromkeys(plugin_paths)),
        }
    )


def _resolved(path: Path, source: str, key: str) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (Python < 3.13)
        raise ConfigError(source, key, f"cannot resolve {str(path)!r}: {exc}") from exc


def check_override(key: str, value: Any) -> Any:
    """``value`` as top-level key ``key`` would take it, for a command-line flag that
    overrides it; ValueError names the problem as a config error would."""
    try:
        return getattr(Config.model_validate({key: value}), key)
    except ValidationError as exc:
        raise ValueError(_problem_of(dict(exc.errors(include_url=False)[0]))) from None


def load_config(
    path: Path | None, *, workers: int | None = None, state_dir: Path | None = None
) -> Config:
    """Load the file at ``path`` (or the embedded default) and apply command-line overrides.

    With a file, its own directory comes first in ``plugin_paths``: platform modules kept
    beside the config file are found whatever the master's working directory."""
    overrides: dict[str, Any] = {}
    if workers is not None:
        overrides["workers"] = workers
    if path is None:
        text = resources.files("hiscrm").joinpath("default.toml").read_text(encoding="utf-8")
        source, base_dir = EMBEDDED_DEFAULT, Path.cwd()
    else:
        source = str(path)
        try:
            base_dir = path.resolve().parent
            text = path.read_text(encoding="utf-8")
        except (OSError, RuntimeError, UnicodeDecodeError) as exc:
            raise ConfigError(source, "", f"cannot read: {exc}") from exc
    config = parse_config(text, source, base_dir, overrides)
    if path is not None:
        paths = list(dict.fromkeys([base_dir, *config.plugin_paths]))
        config = config.model_copy(update={"plugin_paths": paths})
    if state_dir is not None:
        resolved = _resolved(state_dir, "--state-dir", "")
        config = config.model_copy(update={"state_dir": resolved})
    return config
