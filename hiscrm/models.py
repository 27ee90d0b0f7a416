"""Data models shared by master, workers and platforms."""

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hiscrm.platform_names import resolve_platform_name

ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

# A memory limit in MB (16 MB to 1 TB): ``[supervision] max_memory_mb`` and an account's
# own ``max_memory_mb``. The one place this range is set.
MemoryLimitMb = Annotated[int, Field(ge=16, le=2**20)]


class AccountSpec(BaseModel):
    """One monitored account as configured: which platform watches it and with what options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ACCOUNT_ID_PATTERN)
    platform: str = "demo"
    options: dict[str, Any] = Field(default_factory=dict)
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
