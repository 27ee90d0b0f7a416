"""What the dashboard does, clicked in a real headless Chromium against a real master, and
checked on both sides: what the page shows, and what the master did (its API).

Workers: restart, stop and start with their progress; the health going degraded, then
failing, with its reason; a rolling reload; an update from the config file and its answer;
a killed worker's last log lines; the log followed across rotations. Accounts: options,
disable and enable, releasing a quarantined account. Conversations: replies on a content
and on a comment, a refused reply retried, threads ordered by their last message. The
overview's heartbeat age ticking, its sync-latency chart filling. The sign-in gate.

One master serves the module (the quarantine and the log rotation each start their own:
a poison account, small log files); each test opens its own tab and leaves the master as
the next one expects it: both workers running, the accounts of the config and no other.
"""

import itertools
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import Tab, new_tab, root_of, signed_in
from conftest import MasterFactory, make_config
from harness import Master, to_toml, wait_until
from playwright.sync_api import Browser, Locator, Page, expect
from testplatforms.refusing import REFUSAL

pytestmark = pytest.mark.timeout(90)

WORKERS = ["worker1", "worker2"]
NOTHING = "\u2013"  # what the page shows for no value (an en dash)
QUIET = 0.02  # events per second: one in 50 s, so nothing moves but what a test does
ACCOUNTS: list[dict[str, Any]] = [
    # Talks often, in one conversation and on three contents.
    {"id": "acc-1", "platform": "demo", "options": {"rate": 5.0, "seed": 1, "conversations": 1}},
    # Four conversations that stay as they are: their order changes only by replies.
    {"id": "quiet", "platform": "demo", "options": {"rate": QUIET, "conversations": 4}},
    {
        "id": "refuser",
        "platform": "testplatforms.refusing:RefusesOnce",
        "options": {"rate": QUIET, "conversations": 2},
    },
]
# A browser beside the master on a busy machine: no restarts for a slow heartbeat.
SUPERVISION = {"heartbeat_interval_s": 1, "heartbeat_timeout_s": 20}
CONFIG = make_config(ACCOUNTS, supervision=SUPERVISION)


@pytest.fixture(scope="module")
def master(start_module_master: MasterFactory) -> Master:
    started = start_module_master(CONFIG)
    started.wait_all_running(WORKERS)
    return started


@pytest.fixture(autouse=True)
def workers_running_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that failed half-way (a worker stopped) does not fail the next ones too."""
    yield
    if "master" not in request.fixturenames:
        return
    master: Master = request.getfixturevalue("master")
    with master.http() as http:
        for worker in WORKERS:
            if http.get(f"/workers/{worker}").json()["state"] != "running":
                http.post(f"/workers/{worker}/start")


def api_get(master: Master, path: str) -> Any:
    with master.http() as http:
        answer = http.get(path)
        assert answer.status_code == 200, (path, answer.status_code, answer.text)
        return answer.json()


def api_worker(master: Master, worker: str) -> dict[str, Any]:
    return dict(api_get(master, f"/workers/{worker}"))


def seconds_shown(text: str) -> float:
    """A duration as the page writes it ("850 ms", "4.2 s", "12 s", "3 min 5 s")."""
    total = 0.0
    for number, unit in re.findall(r"([\d.]+) (ms|s|min|h|d)\b", text):
        total += float(number) * {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}[unit]
    assert re.search(r"\d", text), f"no duration in {text!r}"
    return total


def fact(page: Page, name: str) -> Locator:
    return page.locator(f'.worker-detail dd[data-fact="{name}"]')


def act_on_worker(page: Page, action: str) -> None:
    button = page.locator(f".worker-detail button[data-action={action}]")
    expect(button).to_be_enabled()
    button.click()


# --- signing in ----------------------------------------------------------------------------


def test_without_a_credential_the_page_is_refused_and_signed_in_the_ui_alias_serves_it(
    chromium: Browser, master: Master
) -> None:
    root = root_of(master)
    with httpx.Client(base_url=root, timeout=30) as http:
        for path in ("/", "/ui/", "/ui/app.js", "/ui/views/workers.js"):
            refused = http.get(path)
            assert refused.status_code == 401, (path, refused.status_code)
            assert refused.headers["content-type"].startswith("text/html"), path
            assert "not signed in" in refused.text, path
            assert "hiscrmctl open" in refused.text, path
            assert "import" not in refused.text, f"{path} gave its script away"
        # What a refusal page needs to be readable is open; nothing else is.
        assert http.get("/ui/signin.css").status_code == 200
        assert http.get("/api/v1/status").status_code == 401

    # A browser with no cookie sees the explanation, not the dashboard.
    stranger = new_tab(chromium)
    shown = stranger.page.goto(root + "/ui/")
    assert shown is not None
    assert shown.status == 401
    expect(stranger.page.locator("h1")).to_have_text("not signed in")
    expect(stranger.page.locator("main")).to_contain_text("hiscrmctl open")
    stranger.close()

    # Signed in, /ui/ is the dashboard itself, live.
    tab = signed_in(chromium, master)
    shown = tab.page.goto(root + "/ui/#/workers")
    assert shown is not None
    assert shown.status == 200
    expect(tab.page.locator("#connection")).to_have_text("live")
    expect(tab.page.locator("h1")).to_have_text("Workers")
    expect(fact(tab.page, "PID")).to_have_text(str(api_worker(master, "worker1")["pid"]))
    tab.close()
    tab.no_console_errors()


# --- workers ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_restart_stop_and_start_show_their_progress_and_the_health_says_why(
    tab: Tab, master: Master
) -> None:
    page = tab.page
    tab.goto_hash("#/workers/worker2")
    old_pid = api_worker(master, "worker2")["pid"]
    expect(fact(page, "PID")).to_have_text(str(old_pid))
    progress = page.get_by_label("Progress")

    # Restart: the steps as the worker's events tell them, then the answer.
    act_on_worker(page, "restart")
    expect(progress).to_contain_text(re.compile(r"restart done in [\d.]+ s: running, pid "))
    restarted = api_worker(master, "worker2")
    assert restarted["state"] == "running"
    assert restarted["pid"] not in (None, old_pid)
    expect(progress).to_contain_text("restart requested")
    expect(progress).to_contain_text(f"pid {old_pid} exited: restart")
    expect(progress).to_contain_text(f"running (pid {restarted['pid']})")
    expect(progress).to_contain_text(f"pid {old_pid} → {restarted['pid']}")
    expect(fact(page, "PID")).to_have_text(str(restarted["pid"]))
    expect(fact(page, "Restarts")).to_contain_text("restart 1")

    # Stop: no pid, the state stopped, here and in the API; Stop off, Start on.
    act_on_worker(page, "stop")
    expect(progress).to_contain_text(re.compile(r"stop done in [\d.]+ s: stopped"))
    stopped = api_worker(master, "worker2")
    assert (stopped["state"], stopped["pid"]) == ("stopped", None)
    expect(fact(page, "PID")).to_have_text(NOTHING)
    expect(page.locator(".worker-detail h2 .badge")).to_have_text("stopped")
    expect(page.locator(".worker-detail button[data-action=stop]")).to_be_disabled()

    # The overview: degraded, and why.
    tab.goto_hash("#/")
    health = page.locator("#health")
    expect(health.locator("h2 .badge")).to_have_text("degraded")
    expect(health.locator("li.check-degraded").filter(has_text="workers")).to_contain_text(
        "workers 1/2 running: worker2 is stopped"
    )
    expect(page.locator("tr[data-worker=worker2] .col-state")).to_have_text("stopped")
    with master.http() as http:
        assert http.get("/healthz").json()["checks"]["workers"]["status"] == "degraded"

    # Both stopped: failing, and why (the master answers /healthz with a 503 meanwhile).
    tab.goto_hash("#/workers/worker1")
    act_on_worker(page, "stop")
    expect(progress).to_contain_text(re.compile(r"stop done in [\d.]+ s: stopped"))
    tab.goto_hash("#/")
    expect(health.locator("h2 .badge")).to_have_text("failing")
    expect(health.locator("li.check-failing")).to_contain_text(
        f"workers no worker runs while {len(ACCOUNTS)} accounts are enabled"
    )
    with master.http() as http:
        assert http.get("/healthz").status_code == 503
    expect(page.locator("ol.notable")).to_contain_text("failing: workers: no worker runs")

    # Start both again: running, new pids, ok again.
    for worker in ("worker1", "worker2"):
        tab.goto_hash(f"#/workers/{worker}")
        act_on_worker(page, "start")
        expect(progress).to_contain_text(
            re.compile(rf"start done in [\d.]+ s: running, pid {NOTHING} → \d+")
        )
        started = api_worker(master, worker)
        assert started["state"] == "running"
        expect(fact(page, "PID")).to_have_text(str(started["pid"]))
    tab.goto_hash("#/")
    expect(health.locator("h2 .badge")).to_have_text("ok")
    expect(page.locator("ol.notable")).to_contain_text("ok again")


@pytest.mark.timeout(120)
def test_reload_all_workers_shows_each_step_and_replaces_every_worker(
    tab: Tab, master: Master
) -> None:
    page = tab.page
    before = {w: api_worker(master, w)["pid"] for w in WORKERS}
    tab.goto_hash("#/workers/worker1")
    page.get_by_role("button", name="Reload all workers").click()
    answer = page.locator("section.answer")
    expect(answer).to_contain_text("Reloading: each worker is replaced in turn")
    expect(answer.locator("h2")).to_contain_text(
        re.compile(r"Reload complete in [\d.]+ s"), timeout=60_000
    )
    after = {w: api_worker(master, w) for w in WORKERS}
    for worker in WORKERS:
        assert after[worker]["state"] == "running"
        assert after[worker]["pid"] != before[worker]
        expect(answer.locator("li").filter(has_text=f"{worker}: ")).to_contain_text(
            f"pid {before[worker]} → {after[worker]['pid']}"
        )
    expect(fact(page, "PID")).to_have_text(str(after["worker1"]["pid"]))
    expect(page.locator("#notice")).to_be_empty()


def test_update_from_the_config_file_shows_its_answer_and_the_new_account(
    tab: Tab, master: Master
) -> None:
    page = tab.page
    added = {"id": "from-file", "platform": "demo", "options": {"rate": QUIET, "seed": 5}}
    master.config_path.write_text(to_toml({**CONFIG, "accounts": [*ACCOUNTS, added]}))
    try:
        tab.goto_hash("#/workers")
        page.get_by_role("button", name="Update from config file").click()
        answer = page.locator("section.answer")
        expect(answer.locator("h2")).to_have_text(f"Updated from {master.config_path}")
        expect(answer).to_contain_text("accounts added: from-file")
        made = api_get(master, "/accounts/from-file")
        assert (made["source"], made["options"]) == ("config", added["options"])

        tab.goto_hash("#/accounts")
        row = page.locator("tr[data-account=from-file]")
        expect(row.locator(".col-state .badge").first).to_have_text("running")
        expect(row.locator(".col-account")).to_contain_text("config")

        # Nothing changed: said so.
        tab.goto_hash("#/workers")
        page.get_by_role("button", name="Update from config file").click()
        expect(answer).to_contain_text("nothing changed")
    finally:
        master.config_path.write_text(to_toml(CONFIG))
        with master.http() as http:
            assert http.post("/config/update").json()["accounts"]["removed"] == ["from-file"]
    expect(page.locator("tr[data-account=from-file]")).to_have_count(0)


def test_a_killed_worker_shows_the_last_lines_it_logged(tab: Tab, master: Master) -> None:
    page = tab.page
    tab.goto_hash("#/workers/worker1")
    old_pid = api_worker(master, "worker1")["pid"]
    expect(fact(page, "PID")).to_have_text(str(old_pid))
    after = master.mark()
    os.kill(old_pid, signal.SIGKILL)
    new_pid = master.wait_running("worker1", after=after)
    expect(fact(page, "PID")).to_have_text(str(new_pid))

    last_exit = api_worker(master, "worker1")["last_exit"]
    assert last_exit["signal"] == "SIGKILL"
    assert last_exit["log_tail"], "the API has no last lines to show"
    exit_ = page.locator(".worker-detail .exit")
    expect(exit_).to_contain_text("signal SIGKILL")
    tail = exit_.get_by_label("Its last log lines")
    expect(tail).to_have_text("\n".join(last_exit["log_tail"]))


TICK = re.compile(r"tick (\d{7}) ")


@pytest.mark.timeout(120)
def test_the_log_view_follows_new_lines_across_rotations(
    chromium: Browser, start_master: MasterFactory
) -> None:
    """A master of its own: its log files are small (the master's too, which the module's
    master reads to wait on events)."""
    ticker = {
        "id": "ticker",
        "platform": "testplatforms.behaviours:Ticker",
        "options": {"interval_s": 0.02},  # ~3.7 kB/s: a 4 kB log file rotates each second
    }
    master = start_master(
        make_config([ticker], workers=1, supervision=SUPERVISION, logs={"max_bytes": 4096})
    )
    master.wait_all_running(["worker1"])
    log = master.worker_log("worker1")
    tab = signed_in(chromium, master)
    page = tab.page
    tab.goto_hash("#/workers/worker1")
    box = page.get_by_label("worker1 log")
    expect(box).to_contain_text(TICK)
    expect(page.locator(".worker-detail h3").filter(has_text="Log")).to_contain_text("(following)")
    inode = log.stat().st_ino
    rotations = 0

    def rotated() -> bool:
        nonlocal inode, rotations
        now = log.stat().st_ino
        if now != inode:
            inode, rotations = now, rotations + 1
        return rotations >= 3

    wait_until(rotated, 30, "the log rotated three times")
    # Three rotations later, the page shows what the newest file has, and every line
    # since it began following, in order: none lost, none twice.
    newest: list[str] = []
    wait_until(lambda: bool(newest.extend(TICK.findall(log.read_text())) or newest), 10, "a tick")
    expect(box).to_contain_text(f"tick {newest[-1]} ")
    numbers = [int(n) for n in TICK.findall(box.inner_text())]
    assert len(numbers) > 100, numbers
    gaps = [(a, b) for a, b in itertools.pairwise(numbers) if b != a + 1]
    assert not gaps, f"lines lost or repeated across rotations: {gaps[:5]}"
    assert list(log.parent.glob("worker1.log.*")), "no rotated files"
    tab.close()
    tab.no_console_errors()


# --- accounts --------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_options_disable_and_enable_change_the_account(tab: Tab, master: Master) -> None:
    page = tab.page
    account = {"id": "opt-1", "platform": "demo", "options": {"rate": QUIET, "seed": 3}}
    with master.http() as http:
        assert http.post("/accounts", json=account).status_code == 201
    try:
        tab.goto_hash("#/accounts")
        row = page.locator("tr[data-account=opt-1]")
        state = row.locator(".col-state .badge").first
        expect(state).to_have_text("running")

        # Options…: the dialog shows them; saved, the API has the new ones.
        row.get_by_role("button", name="Options…").click()
        dialog = page.locator("dialog[open]")
        expect(dialog.locator("h2")).to_have_text("Options of opt-1")
        box = dialog.get_by_label("Options (JSON)")
        assert re.sub(r"\s", "", box.input_value()) == '{"rate":0.02,"seed":3}'
        box.fill("not json")
        dialog.get_by_role("button", name="Save and restart its task").click()
        expect(dialog.get_by_role("alert")).to_contain_text("options: not JSON")
        box.fill('{"rate": 0.05, "seed": 11, "conversations": 2}')
        dialog.get_by_role("button", name="Save and restart its task").click()
        expect(dialog).to_have_count(0)
        expect(page.locator("#notice")).to_contain_text("opt-1: options saved; its task restarts")
        wait_until(
            lambda: (
                api_get(master, "/accounts/opt-1")["options"]
                == {"rate": 0.05, "seed": 11, "conversations": 2}
            ),
            10,
            "the new options",
        )
        expect(state).to_have_text("running")

        # Disable, then enable.
        row.get_by_role("button", name="Disable").click()
        expect(state).to_have_text("disabled")
        expect(row.locator(".col-account")).to_contain_text("disabled")
        disabled = api_get(master, "/accounts/opt-1")
        assert (disabled["state"], disabled["enabled"]) == ("disabled", False)
        expect(page.locator("#notice")).to_contain_text("opt-1 disabled")
        row.get_by_role("button", name="Enable").click()
        expect(state).to_have_text("running")
        enabled = api_get(master, "/accounts/opt-1")
        assert (enabled["state"], enabled["enabled"]) == ("running", True)
        expect(row.get_by_role("button", name="Disable")).to_be_visible()

        # An account of the config file is changed there: its buttons say so.
        config_row = page.locator("tr[data-account=quiet]")
        expect(config_row.get_by_role("button", name="Options…")).to_be_disabled()
        expect(config_row.get_by_role("button", name="Disable")).to_have_attribute(
            "title", re.compile("declared in the config file")
        )
    finally:
        # Away from the page first: a read of the account already on its way when it is
        # deleted would end in a 404 the browser reports on the console.
        page.goto("about:blank")
        with master.http() as http:
            assert http.delete("/accounts/opt-1?purge=true").status_code == 200


@pytest.mark.timeout(150)
def test_a_quarantined_account_is_released_in_the_page(
    chromium: Browser, start_master: MasterFactory, tmp_path: Path
) -> None:
    flag = tmp_path / "poisonous"
    flag.write_text("the worker dies while this exists")
    accounts = [
        {
            "id": "poison",
            "platform": "testplatforms.poison:PoisonWhileFlag",
            "options": {"flag": str(flag), "rate": QUIET},
        },
        {"id": "demo-a", "platform": "demo", "options": {"rate": 1.0, "seed": 1}},
    ]
    master = start_master(
        make_config(
            accounts,
            workers=2,
            quarantine={"deaths": 2, "window_s": 120, "release_after_s": 3600},
        )
    )
    master.wait_all_running(WORKERS)
    tab = signed_in(chromium, master)
    page = tab.page
    tab.goto_hash("#/accounts")
    row = page.locator("tr[data-account=poison]")
    release = row.get_by_role("button", name="Release")
    expect(
        page.locator("tr[data-account=demo-a]").get_by_role("button", name="Release")
    ).to_be_hidden()
    expect(row.locator(".col-state .badge").first).to_have_text("quarantined", timeout=60_000)
    expect(release).to_be_visible()
    quarantined = api_get(master, "/accounts/poison")
    assert quarantined["quarantined"] is True
    tab.goto_hash("#/")
    expect(page.locator("#health h2 .badge")).to_have_text("degraded")
    expect(page.locator("#health li.check-degraded").filter(has_text="accounts")).to_contain_text(
        "quarantined: poison"
    )

    flag.unlink()  # fixed: it would run like any other now
    tab.goto_hash("#/accounts")
    release.click()
    expect(page.locator("#notice")).to_contain_text("poison released from quarantine")
    wait_until(lambda: api_get(master, "/accounts/poison")["quarantined"] is False, 10, "released")
    expect(release).to_be_hidden()
    expect(row.locator(".col-state .badge").first).to_have_text("running", timeout=30_000)
    assert api_get(master, "/accounts/poison")["state"] == "running"
    tab.close()
    tab.no_console_errors()


# --- conversations ----------------------------------------------------------------------------


def send_reply(page: Page, text: str) -> str:
    """Types a reply and sends it; the request id of the row it makes."""
    box = page.get_by_placeholder("Write a reply")
    box.fill(text)
    box.press("Control+Enter")
    pending = page.locator("ol.messages li[data-request-id]").filter(has_text=text)
    expect(pending).to_have_count(1)
    request_id = pending.get_attribute("data-request-id")
    assert request_id is not None
    return request_id


def test_comments_are_answered_on_a_content_and_on_a_comment(tab: Tab, master: Master) -> None:
    page = tab.page
    tab.goto_hash("#/conversations/acc-1/comments")
    expect(page.locator("ul.threads li[data-id]")).to_have_count(3)
    page.locator("ul.threads li[data-id=content-0] a").click()
    expect(page.locator(".thread-head h2")).to_have_text("post 0")

    # On the content.
    text = f"Thanks for watching ({uuid.uuid4().hex[:8]})"
    request_id = send_reply(page, text)
    sent = page.locator(f'ol.messages li.outbound[data-id="reply-{request_id}"]')
    expect(sent.locator(".reply-state")).to_have_text("sent")
    expect(sent.locator(".text")).to_have_text(text)
    entry = api_get(master, f"/accounts/acc-1/outbox/{request_id}")
    assert (entry["state"], entry["content_id"], entry["parent_id"]) == ("sent", "content-0", None)

    # On a fan's comment: its Reply button, then the box.
    fan = page.locator("ol.messages li.msg.inbound[data-id]").last
    expect(fan).to_be_attached(timeout=20_000)
    comment_id = fan.get_attribute("data-id")
    author = api_get(master, f"/accounts/acc-1/comments/{comment_id}")["author_id"]
    fan.get_by_role("button", name="Reply").click()
    expect(page.locator("form.reply")).to_contain_text(f"Replying to {author}")
    expect(page.get_by_placeholder("Write a reply")).to_be_focused()
    text = f"Glad you liked it ({uuid.uuid4().hex[:8]})"
    request_id = send_reply(page, text)
    answer = page.locator(f'ol.messages li.outbound[data-id="reply-{request_id}"]')
    expect(answer.locator(".reply-state")).to_have_text("sent")
    expect(answer.locator(".meta")).to_contain_text(f"↪ {author}")
    entry = api_get(master, f"/accounts/acc-1/outbox/{request_id}")
    assert (entry["state"], entry["parent_id"]) == ("sent", comment_id)
    stored = api_get(master, f"/accounts/acc-1/comments/reply-{request_id}")
    assert (stored["parent_id"], stored["text"]) == (comment_id, text)


def test_a_refused_reply_shows_why_and_is_sent_when_retried(tab: Tab, master: Master) -> None:
    page = tab.page
    tab.goto_hash("#/conversations/refuser/messages/conv-0")
    text = f"Your order ships tomorrow ({uuid.uuid4().hex[:8]})"
    request_id = send_reply(page, text)
    row = page.locator(f'ol.messages li[data-request-id="{request_id}"]')
    expect(row.locator(".reply-state")).to_have_text("failed")
    failed = api_get(master, f"/accounts/refuser/outbox/{request_id}")
    assert failed["state"] == "failed"
    assert REFUSAL in failed["error"]
    expect(row.locator(".reply-status")).to_contain_text(failed["error"])
    expect(page.locator("ol.messages li.outbound[data-id]")).to_have_count(0)

    row.get_by_role("button", name="Retry").click()
    sent = page.locator(f'ol.messages li.outbound[data-id="out-{request_id}"]')
    expect(sent.locator(".reply-state")).to_have_text("sent")
    expect(sent.locator(".text")).to_have_text(text)
    expect(sent.get_by_role("button", name="Retry")).to_have_count(0)
    expect(page.locator(f'ol.messages li[data-request-id="{request_id}"]')).to_have_count(1)
    entry = api_get(master, f"/accounts/refuser/outbox/{request_id}")
    assert (entry["state"], entry["item_id"], entry["error"]) == ("sent", f"out-{request_id}", None)


def test_threads_are_ordered_by_their_last_message(tab: Tab, master: Master) -> None:
    page = tab.page
    tab.goto_hash("#/conversations/quiet/messages")
    threads = page.locator("ul.threads li[data-id]")
    expect(threads).to_have_count(4)

    def shown() -> list[str]:
        return [str(i) for i in threads.evaluate_all("rows => rows.map(r => r.dataset.id)")]

    def stored() -> list[str]:
        listed = api_get(
            master, "/accounts/quiet/conversations?sort=last_message_at&order=desc&limit=10"
        )
        return [c["id"] for c in listed["items"]]

    # Before any message: the API's conversations (in an order of their own: with no
    # message time, the page goes by id ascending, the API by id descending).
    assert sorted(shown()) == sorted(stored())
    # A reply in the last one brings it to the top, then one in another brings that one;
    # the others keep their order below them.
    replied: list[str] = []
    for conversation in (shown()[-1], shown()[-2]):
        below = [c for c in shown() if c != conversation]
        page.locator(f"ul.threads li[data-id={conversation}] a").click()
        request_id = send_reply(page, f"Following up ({uuid.uuid4().hex[:8]})")
        sent = page.locator(f'ol.messages li.outbound[data-id="out-{request_id}"]')
        expect(sent.locator(".reply-state")).to_have_text("sent")
        expect(threads.first).to_have_attribute("data-id", conversation)
        expect(threads.first).to_contain_text(re.compile(r"last message [\d.]+ m?s ago"))
        replied.insert(0, conversation)
        wait_until(lambda: stored()[: len(replied)] == replied, 10, "the API's order")
        assert shown() == [conversation, *below]
        assert shown()[: len(replied)] == stored()[: len(replied)]


# --- the overview ------------------------------------------------------------------------------


def test_the_heartbeat_age_ticks_and_the_sync_latency_chart_fills(tab: Tab, master: Master) -> None:
    page = tab.page
    cell = page.locator("tr[data-worker=worker2] .col-heartbeat")
    expect(cell).not_to_have_text(NOTHING)
    first = seconds_shown(cell.inner_text())
    read_at = time.monotonic()
    # No event about worker2 comes meanwhile: the age grows with the clock alone.
    wait_until(lambda: seconds_shown(cell.inner_text()) >= first + 2, 10, "the age growing")
    elapsed = time.monotonic() - read_at
    assert seconds_shown(cell.inner_text()) <= first + elapsed + 1.5

    latency = page.locator("#sync-latency")
    expect(latency.locator("rect").first).to_be_attached(timeout=10_000)
    expect(latency.locator(".chart-now")).to_have_text(re.compile(r"^\d"))
    expect(latency.locator("figcaption")).to_contain_text(re.compile(r"peak [\d.,]+ ms"))
    expect(page.locator("#items-rate .chart-now")).to_have_text(re.compile(r"^[1-9]"))
