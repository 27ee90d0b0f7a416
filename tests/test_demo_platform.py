"""The demo platform behaves as a real one would across restarts: what its conversations
learned (their ``last_message_at``) is not written back to empty when its task starts
again."""

import pytest
from conftest import MasterFactory, make_config
from harness import wait_until

pytestmark = pytest.mark.timeout(60)


def test_a_restarted_demo_account_keeps_its_conversations_last_message_times(
    start_master: MasterFactory,
) -> None:
    accounts = [{"id": "d", "platform": "demo", "options": {"rate": 2.0, "conversations": 2}}]
    master = start_master(make_config(workers=1, accounts=accounts))
    master.wait_running("worker1")
    with master.http() as http:

        def conversations() -> list[dict[str, object]]:
            items: list[dict[str, object]] = http.get("/accounts/d/conversations").json()["items"]
            return items

        wait_until(
            lambda: (
                len(conversations()) == 2
                and all(c["last_message_at"] is not None for c in conversations())
            ),
            30,
            "both conversations have a message",
        )
        times = {c["id"]: c["last_message_at"] for c in conversations()}
        mark = master.mark()
        assert http.post("/workers/worker1/restart").status_code == 200
        master.wait_running("worker1", after=mark)
        # The new task's first message is stored after whatever the demo wrote as it
        # started again (one account's changes are stored in order).
        before = http.get("/accounts/d/messages", params={"limit": 1}).json()["total"]
        wait_until(
            lambda: http.get("/accounts/d/messages", params={"limit": 1}).json()["total"] > before,
            20,
            "a new message after the restart",
        )
        after = {c["id"]: c["last_message_at"] for c in conversations()}
        assert after.keys() == times.keys()
        for conversation, at in times.items():  # never written back to empty, nor older
            assert after[conversation] is not None
            assert after[conversation] >= at, (conversation, at, after[conversation])
    assert master.stop() == 0
