"""The configuration file: its schema, the embedded default, and loading with clear errors.

Every key is read somewhere; unknown keys are errors, so a typo never becomes a setting
that silently does nothing.
"""

import ipaddress
import tomllib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from hiscrm.items import KINDS
from hiscrm.models import AccountSpec
from hiscrm.platform_names import resolve_platform_name

EMBEDDED_DEFAULT = "<embedded default>"


class ConfigError(Exception):
    """A configuration problem, rendered as one line: source, key, problem."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    heartbeat_timeout_s: float = Field(default=15.0, gt=0)
    start_timeout_s: float = Field(default=30.0, gt=0)
    stop_timeout_s: float = Field(default=10.0, gt=0)
    kill_timeout_s: float = Field(default=3.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    backoff_reset_after_s: float = Field(default=60.0, gt=0)
    reassign_after_s: float = Field(default=30.0, gt=0)
    fork_template: bool = True  # start workers by forking a warm template (Linux)

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


class SyncConfig(_Section):
    stale_after_s: float = Field(default=300.0, gt=0)


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
        **{kind.collection: (float | None, Field(default=None, gt=0)) for kind in KINDS.values()},
    )


class CodeConfig(_Section):
    """Which installed packages count as code to fingerprint (besides hiscrm and
    everything outside site-packages)."""

    packages: list[str] = Field(default_factory=list)


class LogsConfig(_Section):
    max_bytes: int = Field(default=10 * 1024 * 1024, ge=4096)
    backups: int = Field(default=5, ge=0, le=1000)


class Config(_Section):
    state_dir: Path = Path("var")
    workers: int = Field(default=2, ge=1, le=512)
    accounts_per_worker: int = Field(default=10, ge=1)
    api: ApiConfig = ApiConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    sync: SyncConfig = SyncConfig()
    retention: RetentionConfig = RetentionConfig()
    code: CodeConfig = CodeConfig()
    logs: LogsConfig = LogsConfig()
    accounts: list[AccountSpec] = Field(default_factory=list)

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
    """Parse TOML text into a Config; relative paths resolve against ``base_dir``."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from exc
    raw.update(overrides)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        first = errors[0]
        problem = _problem_of(dict(first))
        if len(errors) > 1:
            problem += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        raise ConfigError(source, _key_of(tuple(first["loc"])), problem) from exc
    if not config.state_dir.is_absolute():
        config = config.model_copy(update={"state_dir": (base_dir / config.state_dir).resolve()})
    return config


def load_config(
    path: Path | None, *, workers: int | None = None, state_dir: Path | None = None
) -> Config:
    """Load the file at ``path`` (or the embedded default) and apply command-line overrides."""
    overrides: dict[str, Any] = {}
    if workers is not None:
        overrides["workers"] = workers
    if path is None:
        text = resources.files("hiscrm").joinpath("default.toml").read_text(encoding="utf-8")
        source, base_dir = EMBEDDED_DEFAULT, Path.cwd()
    else:
        source, base_dir = str(path), path.resolve().parent
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(source, "", f"cannot read: {exc}") from exc
    config = parse_config(text, source, base_dir, overrides)
    if state_dir is not None:
        config = config.model_copy(update={"state_dir": state_dir.resolve()})
    return config
