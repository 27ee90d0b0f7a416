"""Data models shared by master, workers and platforms."""

import json
import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from hiscrm.platform_names import resolve_platform_name

ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

# A memory limit in MB (16 MB to 1 TB): ``[supervision] max_memory_mb`` and an account's
# own ``max_memory_mb``. The one place this range is set.
MemoryLimitMb = Annotated[int, Field(ge=16, le=2**20)]

# An account's options travel whole in its assignment, one pipe frame of at most
# ``protocol.MAX_MESSAGE_BYTES`` (1 MiB), and are stored and served in every account
# listing: keep them well under that. Options past these bounds could never be assigned.
MAX_OPTIONS_BYTES = 64 * 1024  # of UTF-8 JSON
MAX_OPTIONS_DEPTH = 32  # nested objects and lists


def printable(text: str) -> str:
    """``text`` as valid UTF-8 whatever it holds (a lone surrogate as ``\\ud800``)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _escaped(text: str) -> str:
    return printable(text)[:80]


def validation_problem(error: Mapping[str, Any]) -> str:
    """One of pydantic's errors as one line, ``where: problem``, naming the place once
    (the options' own problems name it already: ``options.k: ...``)."""
    where = ".".join(str(p) for p in error["loc"])
    problem = str(error["msg"]).removeprefix("Value error, ")
    leaf = where.rsplit(".", 1)[-1]
    named = problem.startswith((f"{leaf}:", f"{leaf}.", f"{leaf}[", where))
    return problem if named else f"{where}: {problem}"


def _lone_surrogate(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return _escaped(text[exc.start : exc.end])
    return None


def _check_json(value: object, where: str, depth: int) -> None:
    """Raise ValueError naming the first place where ``value`` is not plain JSON."""
    if depth > MAX_OPTIONS_DEPTH:
        raise ValueError(f"{where}: nested deeper than {MAX_OPTIONS_DEPTH} levels")
    if isinstance(value, str):
        if (bad := _lone_surrogate(value)) is not None:
            raise ValueError(f"{where}: a lone surrogate {bad} (not valid Unicode text)")
    elif isinstance(value, bool) or value is None or isinstance(value, int):
        return
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a finite number (JSON has none)")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not text")
            if (bad := _lone_surrogate(key)) is not None:
                raise ValueError(f"{where}: key {_escaped(key)!r} holds a lone surrogate {bad}")
            _check_json(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, f"{where}[{index}]", depth + 1)
    else:
        raise ValueError(f"{where}: a {type(value).__name__} is not JSON")


def checked_options(value: object) -> object:
    """An account's options as given, if they are plain JSON (text without lone
    surrogates, finite numbers, at most ``MAX_OPTIONS_DEPTH`` deep) and at most
    ``MAX_OPTIONS_BYTES`` of it; else ValueError naming where and what is wrong. Runs
    before pydantic's own checks, which would quietly rewrite a surrogate in a key."""
    if not isinstance(value, dict):
        return value  # pydantic says what is wrong with it
    _check_json(value, "options", 0)
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if size > MAX_OPTIONS_BYTES:
        raise ValueError(f"options: {size:,} bytes of JSON, at most {MAX_OPTIONS_BYTES:,}")
    return value


# The one definition of an account's options: config file, POST and PATCH alike.
AccountOptions = Annotated[dict[str, Any], BeforeValidator(checked_options)]


class AccountSpec(BaseModel):
    """One monitored account as configured: which platform watches it and with what options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ACCOUNT_ID_PATTERN)
    platform: str = "demo"
    options: AccountOptions = Field(default_factory=dict)
    enabled: bool = True  # False: kept, never run (state "disabled")
    # The limit of its own worker's process tree while it is quarantined and runs alone
    # (``solo-<id>``); None: ``[supervision] max_memory_mb``. In a shared worker the
    # limit is always ``[supervision] max_memory_mb``: one account's memory cannot be told
    # from its neighbours' there.
    max_memory_mb: MemoryLimitMb | None = None

    @field_validator("platform")
    @classmethod
    def _known_form(cls, name: str) -> str:
        resolve_platform_name(name)  # raises ValueError naming the problem
        return name
