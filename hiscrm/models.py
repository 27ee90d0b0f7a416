"""Data models shared by master, workers and platforms."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hiscrm.platform_names import resolve_platform_name

ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class AccountSpec(BaseModel):
    """One monitored account as configured: which platform watches it and with what options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=ACCOUNT_ID_PATTERN)
    platform: str = "demo"
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True  # False: kept, never run (state "disabled")

    @field_validator("platform")
    @classmethod
    def _known_form(cls, name: str) -> str:
        resolve_platform_name(name)  # raises ValueError naming the problem
        return name
