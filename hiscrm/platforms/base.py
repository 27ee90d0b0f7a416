"""What a platform plugin sees and provides.

A platform is a class whose instances have ``async def run(self, ctx)``. The worker makes
one instance per account and awaits ``run`` for as long as the account is assigned to it;
if ``run`` raises or returns, the worker logs it, reports it to the master and starts a
fresh instance after a backoff.
"""

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from structlog.typing import FilteringBoundLogger

from hiscrm.models import AccountSpec


class PlatformContext(Protocol):
    """Handed to ``run``: the account, its options and a logger bound to the account."""

    @property
    def account(self) -> AccountSpec: ...

    @property
    def options(self) -> Mapping[str, Any]: ...

    @property
    def log(self) -> FilteringBoundLogger: ...

    def progress(self) -> None:
        """Tell the worker the platform is alive and doing work (shown in status)."""


@runtime_checkable
class Platform(Protocol):
    async def run(self, ctx: PlatformContext) -> None: ...
