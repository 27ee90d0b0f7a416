"""Reconciling the registry of accounts with the config file, as a pure plan."""

from hiscrm.master.data.account_registry import apply, plan
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
