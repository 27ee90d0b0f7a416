"""Changing what runs without a restart: how fast it takes effect.

* ``POST /accounts`` → the account's first item readable through the API: a master with
  ``--workers`` workers and room to spare; each new account's platform upserts a message
  a millisecond after it starts. p50 of ``--accounts`` (20) additions, one at a time.
* ``hiscrmctl update`` adding 100 accounts to a master running 200: the time until the
  answer of ``POST /config/update``, and until all 300 run (``GET /status``).
* For scale, the same master's time to answer ``GET /status`` (a round trip).
* The master's CPU for measuring memory with 50 workers: see ``bench/memory_watch.py``
  (``--memory`` runs it here with one shorter run).

    python bench/live.py [--accounts 20] [--memory]
"""

import argparse
import statistics
import time
from pathlib import Path

import httpx
from common import api_of, machine, running_master, summary

ADD_CONFIG = """
workers = 2
accounts_per_worker = 100
[api]
port = 0
[[accounts]]
id = "steady"
platform = "benchplatforms:Quiet"
"""

UPDATE_HEAD = """
workers = 4
accounts_per_worker = 100
[api]
port = 0
"""

QUIET = """
[[accounts]]
id = "quiet-{n:03d}"
platform = "benchplatforms:Quiet"
"""


def client_for(state: Path) -> httpx.Client:
    url, token = api_of(state)
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def wait(predicate: object, timeout: float, what: str, pause: float = 0.001) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(pause)


def first_items(count: int) -> tuple[list[float], list[float]]:
    """Milliseconds from POST /accounts to its first item, and GET /status round trips."""
    took, round_trips = [], []
    with running_master(ADD_CONFIG) as (_master, state, log):
        log.wait(event="account assigned", account_id="steady", timeout=60)
        with client_for(state) as client:
            for n in range(count):
                account_id = f"new-{n:02d}"
                body = {
                    "id": account_id,
                    "platform": "benchplatforms:Pinger",
                    "options": {"interval_s": 0.001},
                }
                began = time.perf_counter()
                answer = client.post("/accounts", json=body)
                assert answer.status_code == 201, answer.text

                def arrived(account_id: str = account_id) -> bool:
                    page = client.get(f"/accounts/{account_id}/messages?limit=1").json()
                    return bool(page["items"])

                wait(arrived, 30, f"{account_id}'s first item")
                took.append((time.perf_counter() - began) * 1000)
                began = time.perf_counter()
                client.get("/status")
                round_trips.append((time.perf_counter() - began) * 1000)
                # Stop it again so every addition finds the same load.
                assert client.patch(f"/accounts/{account_id}", json={"enabled": False}).is_success
    return took, round_trips


def update_adding(before: int, added: int) -> tuple[float, float]:
    """Seconds until the update answers, and until every account runs."""
    head = UPDATE_HEAD
    config = head + "".join(QUIET.format(n=n) for n in range(before))
    with running_master(config) as (_master, state, _log), client_for(state) as client:

        def running(total: int) -> bool:
            return int(client.get("/status").json()["accounts"]["running"]) == total

        wait(lambda: running(before), 120, f"{before} accounts running", 0.05)
        config_path = state.parent / "bench.toml"
        config_path.write_text(head + "".join(QUIET.format(n=n) for n in range(before + added)))
        began = time.perf_counter()
        answer = client.post("/config/update")
        answered = time.perf_counter() - began
        assert answer.is_success, answer.text
        assert len(answer.json()["accounts"]["added"]) == added, answer.text
        wait(lambda: running(before + added), 120, "all running", 0.002)
        return answered, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--before", type=int, default=200)
    parser.add_argument("--added", type=int, default=100)
    parser.add_argument("--memory", action="store_true", help="also measure the memory watch")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    took, round_trips = first_items(args.accounts)
    print(summary("POST /accounts -> first item readable", took))
    print(summary("GET /status round trip (same master)", round_trips))
    print(
        f"ratio: first item p50 = {statistics.median(took) / statistics.median(round_trips):.1f}"
        " x a status round trip"
    )
    answered, all_running = update_adding(args.before, args.added)
    print(
        f"update adding {args.added} accounts to {args.before}: answered in "
        f"{answered * 1000:.0f} ms, all {args.before + args.added} running after "
        f"{all_running * 1000:.0f} ms"
    )
    if args.memory:
        from memory_watch import one_run

        run = one_run(50, 60.0, 5.0)
        print(
            f"memory watch, 50 idle workers: {run['watch_pct']:.3f} % of one core "
            f"(the whole master {run['master_pct']:.2f} %)"
        )


if __name__ == "__main__":
    main()
