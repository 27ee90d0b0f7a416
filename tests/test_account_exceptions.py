"""Every exception a platform raises stays in its account: ``SystemExit``,
``KeyboardInterrupt``, ``GeneratorExit``, exceptions whose ``str()`` or ``repr()`` raises
(even ``SystemExit``), whose notes cannot be read, with a 5 MB message, groups of them.
The account goes to ``backoff`` and runs again; the error is logged, sent and counted with
what could be rendered, in bounded sizes; the worker and its other accounts carry on. So
does an account whose task dies inside the error reporter itself."""

import re
from typing import Any

import pytest
from conftest import MasterFactory, make_config
from harness import Master, count, wait_until

# kind -> how the master shows the error (the start of last_error.message)
KINDS = {
    "system_exit": "SystemExit: 3",
    "keyboard_interrupt": "KeyboardInterrupt",
    "generator_exit": "GeneratorExit",
    "str_raises": "StrRaises: <str() of this StrRaises raised RuntimeError>",
    "repr_raises": "ReprRaises: plain text",
    "str_and_repr_raise": "StrAndReprRaise: <str() of this StrAndReprRaise raised RuntimeError>",
    "str_raises_system_exit": "StrRaisesSystemExit: <str() of this StrRaisesSystemExit raised "
    "SystemExit>",
    "broken_notes": "BrokenNotes: its notes cannot be read",
    "huge_message": "ValueError: huge xxxxxxxx",
    "group": "BaseExceptionGroup: several at once (4 sub-exceptions)",
}
MAX_MESSAGE = 2_200  # what the worker sends of a message: 2,000 characters and a note


@pytest.fixture(scope="module")
def master(start_module_master: MasterFactory) -> Master:
    accounts: list[dict[str, Any]] = [
        {"id": "good", "platform": "demo", "options": {"rate": 20.0}},
        {"id": "escaping", "platform": "testplatforms.failing:TaskRaisesSystemExit"},
        {"id": "reporter-breaks", "platform": "testplatforms.failing:ReporterBreaks"},
    ]
    accounts += [
        {
            "id": kind.replace("_", "-"),
            "platform": "testplatforms.failing:Raise",
            "options": {"kind": kind},
        }
        for kind in KINDS
    ]
    config = make_config(
        workers=1,
        accounts_per_worker=20,
        accounts=accounts,
        supervision={"backoff_max_s": 0.5},
    )
    master = start_module_master(config)
    master.wait_running("worker1")
    return master


def account(master: Master, account_id: str) -> dict[str, Any]:
    with master.http() as http:
        info: dict[str, Any] = http.get(f"/accounts/{account_id}").json()
    return info


def worker_states(master: Master, account_id: str) -> list[tuple[str, str]]:
    """The account's task states as its worker logged them, (old, new) in order. (The
    worker's log, not the master's: the master rate-limits repeated warnings.)"""
    text = master.worker_log("worker1").read_text()
    pattern = rf"account state +account_id={account_id} new=(\w+) old=(\w+)"
    return [(old, new) for new, old in re.findall(pattern, text)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(KINDS))
def test_an_exception_stays_in_its_account(master: Master, kind: str) -> None:
    account_id = kind.replace("_", "-")
    good_before = count(master.db, "messages", "good")
    # Restarted each time: running -> backoff -> running, at least twice over.
    wait_until(
        lambda: worker_states(master, account_id).count(("backoff", "running")) >= 2,
        20,
        f"{account_id} restarted twice",
    )
    states = worker_states(master, account_id)
    assert states[0] == ("stopped", "running")
    assert set(states) == {("stopped", "running"), ("running", "backoff"), ("backoff", "running")}

    wait_until(lambda: account(master, account_id)["errors_total"] >= 2, 10, "errors counted")
    info = account(master, account_id)
    assert info["task_restarts"] >= 1
    assert info["failed"] is None
    error = info["last_error"]
    assert error["message"].startswith(KINDS[kind]), error["message"][:300]
    assert len(error["message"]) <= MAX_MESSAGE
    assert "Traceback (most recent call last)" in error["traceback"]
    assert "failing.py" in error["traceback"]

    # The worker carried on (one process all along), and so did its other accounts.
    wait_until(lambda: count(master.db, "messages", "good") > good_before + 10, 15, "good syncing")
    assert account(master, "good")["state"] == "running"
    assert len(master.log.find(event="worker state", worker="worker1", new="running")) == 1
    assert not master.log.find(event="worker exited")


@pytest.mark.timeout(60)
def test_the_worker_log_stays_bounded_with_a_5mb_message(master: Master) -> None:
    wait_until(
        lambda: account(master, "huge-message")["errors_total"] >= 3, 20, "three huge errors"
    )
    log = master.worker_log("worker1")
    huge = [line for line in log.read_text().splitlines() if "huge xxxx" in line]
    assert len(huge) >= 3
    assert max(len(line) for line in huge) < MAX_MESSAGE + 200
    assert "more characters)" in huge[0]
    assert log.stat().st_size < 2_000_000


@pytest.mark.timeout(60)
def test_a_systemexit_from_a_platforms_own_task_does_not_stop_the_worker(master: Master) -> None:
    wait_until(
        lambda: "error='SystemExit: 4' errors_total=" in master.worker_log("worker1").read_text(),
        10,
        "the SystemExit reported",
    )
    text = master.worker_log("worker1").read_text()
    line = next(line for line in text.splitlines() if "error='SystemExit: 4'" in line)
    assert "source=loop" in line
    assert account(master, "escaping")["state"] == "running"
    assert len(master.log.find(event="worker state", worker="worker1", new="running")) == 1
    assert not master.log.find(event="worker exited")


@pytest.mark.timeout(60)
def test_a_task_killed_inside_the_error_reporter_is_restarted_not_left_running(
    master: Master,
) -> None:
    """The reporter fails on the account's error (here made to, once each time): its
    supervising task dies there. The account leaves ``running`` for ``backoff`` and runs
    again; the task's end is counted and shown as the account's last error."""
    account_id = "reporter-breaks"
    wait_until(
        lambda: worker_states(master, account_id).count(("backoff", "running")) >= 2,
        20,
        f"{account_id} restarted twice",
    )
    assert set(worker_states(master, account_id)) == {
        ("stopped", "running"),
        ("running", "backoff"),
        ("backoff", "running"),
    }
    ended = master.worker_log("worker1").read_text()
    assert f"account_id={account_id}" in ended
    assert "its task ended (RuntimeError: the error reporter is broken)" in ended
    left = master.log.wait_for(event="account state", account_id=account_id, new="backoff")
    assert left["old"] == "running"
    assert "its task ended (RuntimeError: the error reporter is broken)" in left["reason"]

    wait_until(lambda: account(master, account_id)["errors_total"] >= 2, 10, "errors counted")
    info = account(master, account_id)
    assert info["task_restarts"] >= 2
    assert info["failed"] is None
    error = info["last_error"]
    assert error["message"] == "RuntimeError: the error reporter is broken"
    assert "failing.py" in error["traceback"]
    assert len(master.log.find(event="worker state", worker="worker1", new="running")) == 1
    assert not master.log.find(event="worker exited")
