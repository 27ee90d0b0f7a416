"""The registry of accounts and the accounts the config file declares, reconciled.

Accounts live in the store (``accounts``). Each one has a *source*:

* ``config``: declared by ``[[accounts]]`` in the config file, which owns it. At start and
  on ``update`` the registry follows the file: a new declaration is created, a changed
  one changed, a declaration gone is removed from the registry (its data is kept). The
  API refuses to change or delete it (change the file, then ``hiscrmctl update``).
* ``api``: made through the API (``POST /accounts``, ``hiscrmctl account add``), which
  owns it; it survives restarts, and no config update touches it. A declaration in the
  file with the id of such an account is a conflict: reported, and left out.

``plan`` is the pure part: what to create, change and remove, and which declarations
conflict.
"""

from collections.abc import Callable
from typing import Literal

import msgspec
from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from hiscrm.master.data.store import AccountRecord
from hiscrm.models import AccountSpec, validation_problem


class RegistryPlan(msgspec.Struct):
    create: list[AccountRecord] = msgspec.field(default_factory=list)
    change: list[AccountRecord] = msgspec.field(default_factory=list)
    remove: list[str] = msgspec.field(default_factory=list)
    conflicts: list[str] = msgspec.field(default_factory=list)  # declared ids owned by the API

    @property
    def empty(self) -> bool:
        return not (self.create or self.change or self.remove or self.conflicts)


def spec_of(record: AccountRecord) -> AccountSpec:
    return AccountSpec(
        id=record.id,
        platform=record.platform,
        options=record.options,
        enabled=record.enabled,
        max_memory_mb=record.max_memory_mb,
    )


def usable_specs(
    records: list[AccountRecord],
    log: FilteringBoundLogger,
    count_error: Callable[[], int],
    told: set[tuple[str, int]] | None = None,
) -> dict[str, AccountSpec]:
    """The registry's accounts as the master runs them, by id. A row that no longer makes
    a valid account (stored by an older version, before its options were bounded) is left
    out, never raised: logged at error level naming it and why, and counted, once per
    version of the row when ``told`` keeps track across calls."""
    told = set() if told is None else told
    specs: dict[str, AccountSpec] = {}
    for record in records:
        try:
            specs[record.id] = spec_of(record)
        except ValidationError as exc:
            if (record.id, record.updated_at) in told:
                continue
            told.add((record.id, record.updated_at))
            log.error(
                "stored account is not valid; it is left out",
                account_id=record.id,
                source=record.source,
                reason=validation_problem(exc.errors(include_url=False)[0]),
                fix="make it again through the API, or declare it in the config file",
                errors_total=count_error(),
            )
    return specs


def record_of(
    spec: AccountSpec, source: Literal["config", "api"], created_at: int, at: int
) -> AccountRecord:
    """The registry's row of an account as configured (made at ``created_at``, changed
    at ``at``)."""
    return AccountRecord(
        spec.id, spec.platform, dict(spec.options), spec.enabled, source, created_at, at,
        spec.max_memory_mb,
    )  # fmt: skip


def _configured(account: AccountRecord | AccountSpec) -> tuple[object, ...]:
    """What the file sets of an account: a difference in any of it is a change."""
    return (account.platform, account.options, account.enabled, account.max_memory_mb)


def plan(declared: list[AccountSpec], registry: list[AccountRecord], now_ms: int) -> RegistryPlan:
    """What the registry must do to follow the file. New declarations get creation times
    a millisecond apart, in the file's order, so the registry keeps that order."""
    existing = {r.id: r for r in registry}
    result = RegistryPlan()
    for spec in declared:
        record = existing.get(spec.id)
        if record is None:
            at = now_ms + len(result.create)
            result.create.append(record_of(spec, "config", at, at))
        elif record.source != "config":
            result.conflicts.append(spec.id)
        elif _configured(record) != _configured(spec):
            result.change.append(record_of(spec, "config", record.created_at, now_ms))
    ids = {spec.id for spec in declared}
    result.remove = [r.id for r in registry if r.source == "config" and r.id not in ids]
    return result


def apply(plan: RegistryPlan, registry: list[AccountRecord]) -> list[AccountRecord]:
    """The registry after ``plan`` (what the store will hold), in creation order."""
    by_id = {r.id: r for r in registry if r.id not in plan.remove}
    for record in (*plan.create, *plan.change):
        by_id[record.id] = record
    return sorted(by_id.values(), key=lambda r: (r.created_at, r.id))
