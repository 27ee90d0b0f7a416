"""The dashboard in a real headless Chromium against a real master: signing in with the
one-time link, the overview, a worker killed while the page watches, an account added in
the page, a message arriving live, a reply sent, and the refusals (a stale cookie, a
write without the CSRF token). Every tab's console is checked for errors, and each page
is photographed (into docs/screenshots with HISCRM_UPDATE_SCREENSHOTS=1).

One master and one browser serve the module; each test opens its own tab (its own
cookies) and leaves the master as the next test expects it (both workers running).
"""

import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from browser import PHONE, Tab, new_tab, root_of, screenshot, sign_in_link, signed_in
from conftest import MasterFactory, make_config
from harness import Master, metric, wait_until
from pg_server import free_port
from playwright.sync_api import Browser, expect
from test_ctl import CTL, ctl

from hiscrm.items import epoch_ms
from hiscrm.master.api.sessions import Sessions

pytestmark = pytest.mark.timeout(60)

WORKERS = ["worker1", "worker2"]
# acc-1 has one conversation and talks often: a new inbound message there within a second.
ACCOUNTS = [
    {"id": "acc-1", "platform": "demo", "options": {"rate": 5.0, "seed": 1, "conversations": 1}},
    *(
        {"id": f"acc-{n}", "platform": "demo", "options": {"rate": 1.0, "seed": n}}
        for n in (2, 3, 4)
    ),
]
THREAD = "#/conversations/acc-1/messages/conv-0"


@pytest.fixture(scope="module")
def master(start_module_master: MasterFactory) -> Master:
    # A browser beside the master on a busy machine: no restarts for a slow heartbeat.
    # A fixed port: the page follows the master across a restart on the same address.
    started = start_module_master(
        make_config(
            ACCOUNTS,
            supervision={"heartbeat_interval_s": 1, "heartbeat_timeout_s": 20},
            api={"port": free_port()},
        )
    )
    started.wait_all_running(WORKERS)
    return started


def api_workers(master: Master) -> dict[str, dict[str, object]]:
    with master.http() as http:
        return {w["id"]: w for w in http.get("/workers").json()["items"]}


def mark_page(tab: Tab) -> None:
    """A mark that a reload (or a navigation) would wipe: see still_same_page."""
    tab.page.evaluate("() => { window.testMark = 'not reloaded'; }")


def still_same_page(tab: Tab) -> None:
    assert tab.page.evaluate("() => window.testMark") == "not reloaded", "the page was reloaded"


def test_the_one_time_link_signs_in_once_and_the_overview_shows_both_workers_running(
    chromium: Browser, master: Master, tmp_path: Path
) -> None:
    link = sign_in_link(master)
    assert link["url"].startswith(root_of(master) + "/ui/sign-in?code=")
    tab = new_tab(chromium)
    tab.page.goto(link["url"])
    tab.page.wait_for_url(root_of(master) + "/")
    page = tab.page
    expect(page.locator("#connection")).to_have_text("live")
    cookies = tab.context.cookies()
    assert len(cookies) == 1, cookies
    assert cookies[0]["httpOnly"]
    assert cookies[0]["sameSite"] == "Strict"
    assert time.time() < cookies[0]["expires"] <= time.time() + 12 * 3600 + 60

    workers = api_workers(master)
    for worker in WORKERS:
        row = page.locator(f"tr[data-worker={worker}]")
        expect(row.locator(".col-state")).to_have_text("running")
        expect(row.locator(".col-pid")).to_have_text(str(workers[worker]["pid"]))
    expect(page.locator("#health .badge").first).to_have_text("ok")
    expect(page.locator("#accounts-by-state li[data-state=running] strong")).to_have_text("4")
    # The charts fill from the events, a bar a second.
    expect(page.locator("#items-rate rect").first).to_be_attached(timeout=5000)
    screenshot(page, "overview", tmp_path)
    tab.no_console_errors()
    tab.close()

    # The same link again signs nobody in.
    again = new_tab(chromium)
    answer = again.page.goto(link["url"])
    assert answer is not None
    assert answer.status == 401
    expect(again.page.locator("main")).to_contain_text("used already")
    assert not again.context.cookies()
    again.close()

    # Keyboard: the pages are links in the tab order; Enter opens one.
    signed = signed_in(chromium, master)
    for _ in range(3):  # the name, Overview, Workers
        signed.page.keyboard.press("Tab")
    expect(signed.page.locator(":focus")).to_have_text("Workers")
    signed.page.keyboard.press("Enter")
    expect(signed.page.locator("h1")).to_have_text("Workers")
    signed.close()
    signed.no_console_errors()

    # Phone width: the same overview, one column.
    phone = signed_in(chromium, master, PHONE)
    expect(phone.page.locator("tr[data-worker=worker1] .col-state")).to_have_text("running")
    screenshot(phone.page, "overview-phone", tmp_path)
    pages = {
        "#/": "tr[data-worker]",
        "#/workers/worker1": 'dd[data-fact="PID"]',
        "#/accounts": "tr[data-account=acc-1]",
        THREAD: "ol.messages li",
    }
    for route, shown in pages.items():
        phone.goto_hash(route)
        phone.page.locator(shown).first.wait_for()
        width = phone.page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], (
            f"{route} is {width} px wide on a {PHONE['width']} px screen"
        )
    phone.close()
    phone.no_console_errors()


def test_hiscrmctl_open_prints_a_link_and_opens_it_in_a_browser(
    chromium: Browser, master: Master, tmp_path: Path
) -> None:
    printed = ctl(master, "open")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.splitlines()[0].startswith(root_of(master) + "/ui/sign-in?code=")
    assert "good once, for 60 s" in printed.stdout
    # --browser: the browser named by $BROWSER (here a script that writes the link down).
    opened = tmp_path / "opened"
    fake = tmp_path / "browser.sh"
    fake.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    fake.chmod(0o755)
    made = subprocess.run(
        [*CTL, "--state-dir", str(master.state_dir), "open", "--browser"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BROWSER": str(fake)},
    )
    assert made.returncode == 0, made.stderr
    url = opened.read_text()
    assert url == made.stdout.splitlines()[0]
    tab = new_tab(chromium)
    tab.page.goto(url)
    expect(tab.page.locator("#connection")).to_have_text("live")
    tab.close()
    tab.no_console_errors()


def test_a_worker_killed_shows_its_exit_and_its_new_pid_without_a_reload(
    tab: Tab, master: Master, tmp_path: Path
) -> None:
    page = tab.page
    old_pid = int(str(api_workers(master)["worker1"]["pid"]))
    tab.goto_hash("#/workers/worker1")
    pid = page.locator('.worker-detail dd[data-fact="PID"]')
    expect(pid).to_have_text(str(old_pid))
    expect(page.get_by_label("worker1 log")).to_contain_text("registered")
    mark_page(tab)
    after = master.mark()

    os.kill(old_pid, signal.SIGKILL)
    new_pid = master.wait_running("worker1", after=after)
    assert new_pid != old_pid
    expect(pid).to_have_text(str(new_pid))
    exit_ = page.locator(".worker-detail .exit")
    expect(exit_).to_contain_text("signal SIGKILL")
    expect(exit_.locator(".badge")).to_have_text("killed")
    expect(page.locator('.worker-detail dd[data-fact="Restarts"]')).to_contain_text("killed 1")
    screenshot(page, "workers", tmp_path)

    tab.goto_hash("#/")
    row = page.locator("tr[data-worker=worker1]")
    expect(row.locator(".col-pid")).to_have_text(str(new_pid))
    expect(page.locator("ol.notable")).to_contain_text(
        f"pid {old_pid} exited (killed, signal SIGKILL)"
    )
    still_same_page(tab)


def test_an_account_added_in_the_page_shows_its_items_and_is_deleted_after_a_confirmation(
    tab: Tab, master: Master, tmp_path: Path
) -> None:
    page = tab.page
    tab.goto_hash("#/accounts")
    page.get_by_text("Add an account").click()
    page.get_by_label("Id").fill("web-1")
    page.get_by_label("Options (JSON)").fill('{"rate": 5, "seed": 7}')
    page.get_by_role("button", name="Add account").click()
    row = page.locator("tr[data-account=web-1]")
    expect(row.locator(".col-state .badge").first).to_have_text("running")
    expect(row.locator(".col-account")).to_contain_text("api")
    with master.http() as http:
        made = http.get("/accounts/web-1").json()
    assert (made["source"], made["options"]) == ("api", {"rate": 5, "seed": 7})
    expect(page.get_by_label("enabled")).to_be_checked()  # the form is ready for the next
    screenshot(page, "accounts", tmp_path)

    # Its items come in as the page watches: conversations, then messages in them.
    tab.goto_hash("#/conversations/web-1/messages")
    threads = page.locator("ul.threads li[data-id]")
    expect(threads).to_have_count(5)
    expect(page.locator("ul.threads")).to_contain_text("unread")  # an inbound message came
    still_count = page.locator("ul.threads li[data-id]").count()
    assert still_count == 5

    # Deleting it asks first, naming the account and what it holds.
    tab.goto_hash("#/accounts")
    row.get_by_role("button", name="Delete…").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("Delete account web-1?")
    expect(dialog).to_contain_text(re.compile(r"It holds \d+ conversations, \d+ messages"))
    dialog.get_by_label(re.compile("also delete its data")).check()
    dialog.get_by_role("button", name="Delete web-1").click()
    expect(row).to_have_count(0)
    expect(page.locator("#notice")).to_contain_text("web-1 deleted; its data removed")
    with master.http() as http:
        assert http.get("/accounts/web-1").status_code == 404


def test_an_inbound_message_appears_live_in_the_conversation(tab: Tab, master: Master) -> None:
    page = tab.page
    tab.goto_hash(THREAD)
    messages = page.locator("ol.messages li.msg[data-id]")
    expect(messages.first).to_be_attached()
    shown = set(messages.evaluate_all("rows => rows.map(r => r.dataset.id)"))
    mark_page(tab)

    last_inbound = page.locator("ol.messages li.msg.inbound[data-id]").last
    wait_until(
        lambda: last_inbound.get_attribute("data-id") not in shown, 15, "a new inbound message"
    )
    message_id = last_inbound.get_attribute("data-id")
    new_inbound = page.locator(f'ol.messages li.msg[data-id="{message_id}"]')
    with master.http() as http:
        stored = http.get(f"/accounts/acc-1/messages/{message_id}").json()
    assert stored["direction"] == "inbound"
    expect(new_inbound.locator(".text")).to_have_text(stored["text"])
    still_same_page(tab)

    # Shown in the open conversation, so marked read through the API.
    def read() -> bool:
        with master.http() as http:
            return bool(http.get(f"/accounts/acc-1/messages/{message_id}").json()["is_read"])

    wait_until(read, 10, f"{message_id} marked read")


def test_a_reply_is_sent_and_comes_back_as_the_outbound_message(
    tab: Tab, master: Master, tmp_path: Path
) -> None:
    page = tab.page
    tab.goto_hash(THREAD)
    text = f"On its way today ({uuid.uuid4().hex[:8]})"
    box = page.get_by_placeholder("Write a reply")
    box.fill(text)
    box.press("Control+Enter")
    pending = page.locator("ol.messages li[data-request-id]").last
    expect(pending).to_contain_text(text)
    request_id = pending.get_attribute("data-request-id")
    assert request_id is not None
    assert request_id.startswith("ui-")

    sent = page.locator(f'ol.messages li.outbound[data-id="out-{request_id}"]')
    expect(sent.locator(".reply-state")).to_have_text("sent")
    expect(sent.locator(".text")).to_have_text(text)
    expect(page.locator(f'ol.messages li[data-request-id="{request_id}"]')).to_have_count(1)
    with master.http() as http:
        entry = http.get(f"/accounts/acc-1/outbox/{request_id}").json()
    assert (entry["state"], entry["item_id"], entry["text"]) == ("sent", f"out-{request_id}", text)
    screenshot(page, "conversations", tmp_path)


def test_a_stale_cookie_and_a_write_without_the_csrf_token_are_refused(
    chromium: Browser, master: Master
) -> None:
    root = root_of(master)
    sessions = Sessions(master.token, 3600)
    now = epoch_ms()
    expired = sessions.new_session(now - 3_600_000 - 1000).cookie
    foreign = Sessions("another-token", 3600).new_session(now).cookie
    for cookie, why in ((expired, "the session has expired"), (foreign, "not valid")):
        # The page and the API both refuse it, and say how to sign in again.
        with httpx.Client(base_url=root, cookies={sessions.cookie_name: cookie}) as http:
            page = http.get("/")
            assert page.status_code == 401
            assert why in page.text
            assert "hiscrmctl open" in page.text
            answer = http.get("/api/v1/status")
            assert answer.status_code == 401
            assert why in answer.json()["error"]
        stale = new_tab(chromium)
        stale.context.add_cookies([{"name": sessions.cookie_name, "value": cookie, "url": root}])
        shown = stale.page.goto(root + "/")
        assert shown is not None
        assert shown.status == 401
        expect(stale.page.locator("main")).to_contain_text(why)
        stale.close()

    # Signed in: a write without the CSRF token is refused; with it, it goes through.
    tab = signed_in(chromium, master)
    results = tab.page.evaluate(
        """async () => {
            const write = (headers) => fetch("/api/v1/accounts/acc-2/sync",
                {method: "POST", headers, credentials: "same-origin"});
            const session = await (await fetch("/api/v1/session")).json();
            const without = await write({});
            const wrong = await write({"X-CSRF-Token": "x" + session.csrf_token});
            const right = await write({"X-CSRF-Token": session.csrf_token});
            return {auth: session.auth, without: [without.status, (await without.json()).error],
                    wrong: wrong.status, right: right.status};
        }"""
    )
    tab.close()
    assert results["auth"] == "session"
    assert results["without"][0] == 403
    assert "CSRF" in results["without"][1]
    assert results["wrong"] == 403
    assert results["right"] == 202, results
    # The browser reports each refused request in its console: those two, nothing else.
    assert [("403" in e) for e in tab.errors] == [True, True], tab.errors
    # The bearer token works as before, for scripts; the refusals are counted.
    with master.http() as http:
        assert http.get("/session").json()["auth"] == "token"
        metrics = http.get("/metrics").text
    refusals = "hiscrm_ui_session_refusals_total"
    assert metric(metrics, f'{refusals}{{reason="expired"}}') >= 3
    assert metric(metrics, f'{refusals}{{reason="bad_signature"}}') >= 3
    assert metric(metrics, f'{refusals}{{reason="csrf"}}') >= 2
    assert metric(metrics, 'hiscrm_ui_sign_ins_total{result="refused"}') >= 1  # the used link


def test_the_page_follows_the_master_across_a_restart(tab: Tab, master: Master) -> None:
    """Last in the module: it restarts the master. The session survives (its cookie is
    signed with a key from the token); the page reconnects and reads the state again."""
    page = tab.page
    before = api_workers(master)
    expect(page.locator("tr[data-worker=worker1] .col-pid")).to_have_text(
        str(before["worker1"]["pid"])
    )
    mark_page(tab)
    assert master.stop() == 0
    expect(page.locator("#connection")).to_contain_text("reconnecting")
    mark = master.mark()
    master.start()
    after = {w: master.wait_running(w, after=mark) for w in WORKERS}
    expect(page.locator("#connection")).to_have_text("live", timeout=30_000)
    for worker in WORKERS:
        expect(page.locator(f"tr[data-worker={worker}] .col-pid")).to_have_text(str(after[worker]))
    still_same_page(tab)
    # While the master was away, the browser said so of what it could not reach (the
    # stream cut at the shutdown, its reconnection refused); nothing else.
    down = ("net::ERR_CONNECTION_REFUSED", "net::ERR_INCOMPLETE_CHUNKED_ENCODING")
    assert [e for e in tab.errors if not any(d in e for d in down)] == []
    assert all("/api/v1/events" in e for e in tab.errors), tab.errors
    tab.errors.clear()
