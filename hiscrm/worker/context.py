"""The ``ctx`` a platform's ``run`` receives for one account."""

import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from structlog.typing import FilteringBoundLogger

from hiscrm.models import AccountSpec


class AccountContext:
    def __init__(self, account: AccountSpec, log: FilteringBoundLogger) -> None:
        self._account = account
        self._options = MappingProxyType(account.options)
        self._log = log
        self.last_progress_at: int | None = None  # ms

    @property
    def account(self) -> AccountSpec:
        return self._account

    @property
    def options(self) -> Mapping[str, Any]:
        return self._options

    @property
    def log(self) -> FilteringBoundLogger:
        return self._log

    def progress(self) -> None:
        self.last_progress_at = time.time_ns() // 1_000_000
