"""One registry of item kinds: adding a kind in one place (its model and its entry in
``hiscrm/items.py``) is enough for it to be synced, stored, queried and served.

The test adds a kind to a copy of the code, runs a real master on that copy with a
platform that writes the new kind, and reads it back from the store and the API."""

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import MasterFactory, make_config
from harness import REPO, TESTS_DIR, query, wait_until

POLL_MODEL = """
class Poll(_Item):
    kind: Literal["poll"] = "poll"
    question: str
    options: list[str] = Field(default_factory=list)
    votes: Count = 0
    closed_at: EpochMs | None = None


"""
POLL_ENTRY = """        Kind(
            "poll",
            "polls",
            Poll,
            "closed_at",
            indexes=(("closed_at",),),
            filters=("question",),
            sorts=("votes",),
        ),
"""
PLATFORM = """
import asyncio


class Pollster:
    async def run(self, ctx):
        for n in range(5):
            ctx.upsert_item(
                "poll",
                {
                    "id": f"poll-{n}",
                    "question": "colour?" if n % 2 else "size?",
                    "options": ["a", "b"],
                    "votes": n * 10,
                    "closed_at": 1_763_848_020_000 + n,
                },
            )
        ctx.upsert_message(
            {
                "id": "m1",
                "conversation_id": "c1",
                "direction": "inbound",
                "sender_id": "u",
                "text": "the old kinds still work",
                "sent_at": 1_763_848_020_000,
            }
        )
        await asyncio.Event().wait()
"""


def add_poll_kind(code: Path) -> None:
    items = code / "hiscrm" / "items.py"
    source = items.read_text()
    registry = "KINDS: dict[str, Kind] = {"
    end_of_entries = "    )\n}\nBY_COLLECTION"
    assert source.count(registry) == 1
    assert source.count(end_of_entries) == 1
    changed = source.replace(registry, POLL_MODEL + registry)
    changed = changed.replace(end_of_entries, POLL_ENTRY + end_of_entries)
    items.write_text(changed)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_a_kind_added_in_one_place_is_stored_queried_and_served(
    start_master: MasterFactory, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    code = tmp_path / "code"
    shutil.copytree(REPO / "hiscrm", code / "hiscrm")
    add_poll_kind(code)
    (code / "pollster.py").write_text(PLATFORM)
    config = make_config(
        workers=1,
        accounts=[{"id": "acc-1", "platform": "pollster:Pollster"}],
        retention={"polls": 30},
    )
    if backend == "postgres":
        url = request.getfixturevalue("pg_url")
        config["store"] = {"url": url}
    master = start_master(config, code_dir=code, env={"PYTHONPATH": f"{code}:{TESTS_DIR}"})
    master.wait_running("worker1")

    if backend == "sqlite":
        wait_until(lambda: query(master.db, "SELECT count(*) FROM polls")[0][0] == 5, 15, "polls")
        columns = [row[1] for row in query(master.db, "PRAGMA table_info(polls)")]
        indexes = [row[1] for row in query(master.db, "PRAGMA index_list(polls)")]
    else:

        def pg(sql: str) -> list[tuple[Any, ...]]:
            with psycopg.connect(url, autocommit=True) as conn:
                return conn.execute(sql).fetchall()  # type: ignore[arg-type]

        wait_until(lambda: pg("SELECT count(*) FROM polls")[0][0] == 5, 15, "polls")
        columns = [
            r[0]
            for r in pg(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'polls'"
            )
        ]
        indexes = [r[0] for r in pg("SELECT indexname FROM pg_indexes WHERE tablename = 'polls'")]
    assert {"question", "options", "votes", "closed_at"} <= set(columns)
    assert "polls_by_closed_at" in indexes
    with master.http() as http:
        page = http.get("/accounts/acc-1/polls", params={"question": "colour?"}).json()
        assert page["total"] == 2
        assert [p["id"] for p in page["items"]] == ["poll-3", "poll-1"]  # newest first
        by_votes = http.get("/accounts/acc-1/polls", params={"sort": "votes", "order": "asc"})
        assert [p["votes"] for p in by_votes.json()["items"]] == [0, 10, 20, 30, 40]
        one = http.get("/accounts/acc-1/polls/poll-2").json()
        assert one["options"] == ["a", "b"]
        assert one["account_id"] == "acc-1"
        assert one["kind"] == "poll"
        bad = http.get("/accounts/acc-1/polls", params={"sort": "nope"})
        assert bad.status_code == 422
        assert http.get("/accounts/acc-1/messages/m1").json()["text"] == "the old kinds still work"
        counts = http.get("/accounts/acc-1").json()["counts"]
        assert counts["polls"] == 5
        assert "/api/v1/accounts/{account_id}/polls" in http.get("/openapi.json").json()["paths"]
    assert master.stop() == 0
