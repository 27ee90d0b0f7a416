"""Reconciling the registry of accounts with the config file, as a pure plan."""

from hiscrm.master.data.account_registry import apply, plan, spec_of
from hiscrm.master.data.store import AccountRecord
from hiscrm.models import AccountSpec


def record(account_id: str, source: str = "config", **options: object) -> AccountRecord:
    return AccountRecord(account_id, "demo", dict(options), True, source, 1, 1)  # type: ignore[arg-type]


def test_the_registry_follows_the_file_and_leaves_api_accounts_alone() -> None:
    registry = [record("kept"), record("changed", rate=1), record("gone"), record("mine", "api")]
    declared = [
        AccountSpec(id="kept"),
        AccountSpec(id="changed", options={"rate": 2}),
        AccountSpec(id="new-1"),
        AccountSpec(id="new-2", enabled=False),
        AccountSpec(id="mine"),  # the API made it: the file may not take it over
    ]
    result = plan(declared, registry, 1000)
    assert [r.id for r in result.create] == ["new-1", "new-2"]
    assert [r.created_at for r in result.create] == [1000, 1001]  # the file's order
    assert result.create[1].enabled is False
    assert [(r.id, r.options, r.created_at) for r in result.change] == [("changed", {"rate": 2}, 1)]
    assert result.remove == ["gone"]
    assert result.conflicts == ["mine"]
    after = apply(result, registry)
    assert [r.id for r in after] == ["changed", "kept", "mine", "new-1", "new-2"]
    assert next(r for r in after if r.id == "mine").source == "api"


def test_an_unchanged_file_plans_nothing() -> None:
    registry = [record("a"), record("b", "api")]
    assert plan([AccountSpec(id="a")], registry, 5).empty


def test_a_new_memory_limit_in_the_file_is_a_change_and_reaches_the_spec() -> None:
    registry = [record("a"), record("b"), record("c")]
    registry[2] = AccountRecord("c", "demo", {}, True, "config", 1, 1, 64)
    declared = [
        AccountSpec(id="a", max_memory_mb=64),  # set
        AccountSpec(id="b"),  # unchanged
        AccountSpec(id="c"),  # cleared
        AccountSpec(id="d", max_memory_mb=32),  # new, with one
    ]
    result = plan(declared, registry, 1000)
    assert [(r.id, r.max_memory_mb) for r in result.change] == [("a", 64), ("c", None)]
    assert [(r.id, r.max_memory_mb) for r in result.create] == [("d", 32)]
    assert [spec_of(r).max_memory_mb for r in apply(result, registry)] == [64, None, None, 32]
    assert plan(declared, apply(result, registry), 2000).empty
