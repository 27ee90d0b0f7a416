"""schemathesis against the live OpenAPI spec: whatever it sends, no 500s, and every
answer matches the schema. (Driven through hypothesis directly: schemathesis' lazy
pytest fixture does not work with pytest 9.)"""

import re
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import MasterFactory, make_config
from harness import Master, wait_until
from hypothesis import HealthCheck, given, settings

KNOWN_IDS = {"worker_id": "worker1", "account_id": "acc-2", "item_id": "b00003"}
EXCLUDED = (
    re.compile(r"GET .*/logs$"),  # follow=true streams for as long as the client listens
    re.compile(r"GET .*/events$"),  # likewise (test_events_stream.py)
    re.compile(r"POST .*/workers/\{worker_id\}/(restart|stop|start)$"),  # tested directly
    re.compile(r"POST .*/reload$"),
    re.compile(r"POST .*/shutdown$"),  # would stop the master the others test
    # Accounts made, changed and deleted at random would change what the others check;
    # they are tested directly (test_accounts_live.py).
    re.compile(r"POST .*/accounts$"),
    re.compile(r"(PATCH|DELETE) .*/accounts/\{account_id\}$"),
    # Replies would be sent by the shared master's workers (test_replies.py).
    re.compile(r"POST .*/accounts/\{account_id\}/(messages|comments)$"),
    re.compile(r"(POST|DELETE) .*/outbox/"),
)


@pytest.fixture(scope="module")
def live(start_module_master: MasterFactory) -> Master:
    accounts = [
        {"id": "acc-1", "platform": "demo", "options": {"rate": 20.0, "seed": 1}},
        {"id": "acc-2", "platform": "testplatforms.recording:Burst", "options": {"count": 30}},
    ]
    master = start_module_master(make_config(workers=2, accounts=accounts))
    master.wait_all_running(["worker1", "worker2"])
    with master.http() as http:
        wait_until(
            lambda: http.get("/accounts/acc-2/messages").json()["total"] == 30, 20, "data stored"
        )
    return master


@pytest.mark.timeout(240)
def test_no_500s_and_answers_match_the_schema(live: Master) -> None:
    url = live.api_url()
    headers = {"Authorization": f"Bearer {live.token}"}
    schema = schemathesis.openapi.from_dict(
        httpx.get(f"{url}/openapi.json", headers=headers).json()
    )
    base_url = url.removesuffix("/api/v1")
    tested, failures = [], {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if any(
            pattern.search(f"{operation.method.upper()} {operation.path}") for pattern in EXCLUDED
        ):
            continue

        # Generated path ids are random and nearly always unknown (404). Run each
        # operation also with real ids, so the answers that carry data are checked too.
        for real_ids in (False, True):
            label = f"{operation.label} ({'real' if real_ids else 'generated'} ids)"
            tested.append(label)
            try:
                _checker(operation, real_ids, base_url, headers)()
            except Exception as exc:  # collect every operation's failure, then report them all
                failures[label] = f"{type(exc).__name__}: {str(exc)[:1500]}"
    assert len(tested) >= 15, tested
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())


def _checker(operation: Any, real_ids: bool, base_url: str, headers: dict[str, str]) -> Any:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    def check(case: Any) -> None:
        if real_ids and case.path_parameters:
            case.path_parameters.update(
                {k: v for k, v in KNOWN_IDS.items() if k in case.path_parameters}
            )
        case.call_and_validate(base_url=base_url, headers=headers)

    return check
