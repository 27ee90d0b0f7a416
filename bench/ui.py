"""The dashboard's figures, through the real page in headless Chromium (Debian's
``chromium``, driven by Playwright; its own browser download is never used).

1. Committed inbound message -> its row rendered in the open conversation: a customer
   (``benchplatforms:Customer``) writes a new message every ``--interval`` seconds into the
   conversation the page has open; a MutationObserver in the page notes when each
   message's row is inserted, and the next animation frame (the row is painted then).
   Measured from the item's ``synced_at`` (set just before its commit; 1 ms steps) and
   from the platform's upsert (the message's text). Beside it, the reference measured in
   the same run on the same events: a plain SSE client (httpx) following
   ``item.message`` of the same account, as bench/events.py does; and, to tell the
   browser's share from the page's, when the event is dispatched to the page's
   EventSource (a listener added before the page's own).
2. The page's transfer size: one load in a fresh browser (nothing cached), from the
   browser's resource timing: the page and its files (``/`` and ``/ui/…``, as sent, gzip
   where it pays), apart from the data the page then reads from the API.

    python bench/ui.py [--samples 50] [--interval 0.1]
"""

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from common import api_of, machine, running_master, summary
from events import sse_events
from playwright.sync_api import Page, sync_playwright
from sync import BASE, accounts_toml

CHROMIUM = os.environ.get("HISCRM_CHROMIUM", "/usr/bin/chromium")
ACCOUNT = "chat"
THREAD = f"#/conversations/{ACCOUNT}/messages/conv-0"

# Before the page's scripts: every EventSource the page makes notes when each new
# message's event is dispatched to it (this listener is the first, so before the page's).
HEAR = """
window.benchHeard = {};
window.EventSource = class extends window.EventSource {
    constructor(...args) {
        super(...args);
        this.addEventListener("item.message", (event) => {
            const at = performance.timeOrigin + performance.now();
            const item = JSON.parse(event.data);
            const heard = window.benchHeard;
            if (item.version === 1 && !(item.id in heard)) heard[item.id] = at;
        });
    }
};
"""

# Notes when each message row is inserted, and the animation frame after it.
OBSERVE = """() => {
    window.benchRows = {};
    const list = document.querySelector("ol.messages");
    new MutationObserver((records) => {
        const inserted = performance.timeOrigin + performance.now();
        const ids = [];
        for (const record of records) {
            for (const node of record.addedNodes) {
                if (node.dataset && node.dataset.id && !(node.dataset.id in window.benchRows)) {
                    ids.push(node.dataset.id);
                    window.benchRows[node.dataset.id] = [inserted, null];
                }
            }
        }
        if (ids.length) requestAnimationFrame(() => {
            const frame = performance.timeOrigin + performance.now();
            for (const id of ids) window.benchRows[id][1] = frame;
        });
    }).observe(list, {childList: true});
}"""

# What the first load transferred: the page and its files, and the API's data.
TRANSFER = """() => {
    const entries = [...performance.getEntriesByType("navigation"),
                     ...performance.getEntriesByType("resource")];
    return entries.map((e) => ({url: e.name, transfer: e.transferSize,
                                encoded: e.encodedBodySize, decoded: e.decodedBodySize}));
}"""


class SseFollower(threading.Thread):
    """The reference: a plain SSE client noting when each new message arrives."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.response = sse_events(url, token, {"types": "item.message", "account": ACCOUNT})
        self.arrived: dict[str, tuple[float, dict[str, Any]]] = {}
        self.error: Exception | None = None
        self.stopping = False

    def run(self) -> None:
        try:
            for line in self.response.iter_lines():
                if line.startswith("data: "):
                    now = time.time() * 1000
                    item = json.loads(line[6:])
                    if item["version"] == 1:
                        self.arrived.setdefault(item["id"], (now, item))
        except Exception as exc:  # closing the stream ends it with an error; else reported
            if not self.stopping:
                self.error = exc

    def stop(self) -> None:
        self.stopping = True
        self.response.close()
        self.join(5)


def sign_in(page: Page, url: str, token: str) -> None:
    made = httpx.post(f"{url}/session/codes", headers={"Authorization": f"Bearer {token}"})
    made.raise_for_status()
    page.goto(url.removesuffix("/api/v1") + made.json()["path"])
    page.wait_for_url(url.removesuffix("/api/v1") + "/")
    page.locator(".connection-live").wait_for()


def transfer(entries: list[dict[str, Any]], root: str) -> dict[str, dict[str, int]]:
    groups: dict[str, dict[str, int]] = {}
    for entry in entries:
        path = entry["url"].removeprefix(root)
        if path == "/" or (path.startswith("/ui/") and not path.startswith("/ui/sign-in")):
            group = "page"
        elif path.startswith("/api/v1/"):
            group = "data"
        else:
            continue
        sums = groups.setdefault(group, {"files": 0, "transfer": 0, "encoded": 0, "decoded": 0})
        sums["files"] += 1
        for key in ("transfer", "encoded", "decoded"):
            sums[key] += int(entry[key])
    return groups


def measure(samples: int, interval: float) -> None:
    accounts = [(ACCOUNT, "benchplatforms:Customer", {"interval_s": interval})]
    with running_master(BASE.format(workers=1) + accounts_toml(accounts)) as (_, state, log):
        log.wait(event="account assigned", account_id=ACCOUNT)
        url, token = api_of(state)
        root = url.removesuffix("/api/v1")
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(HEAR)
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            sign_in(page, url, token)
            page.locator("tr[data-worker]").first.wait_for()
            page.wait_for_load_state("networkidle")
            sizes = transfer(page.evaluate(TRANSFER), root)

            page.evaluate("route => { location.hash = route; }", THREAD)
            page.locator("ol.messages li[data-id]").first.wait_for()
            time.sleep(1.0)  # the thread's first read done: from now on rows come live
            page.evaluate(OBSERVE)
            follower = SseFollower(url, token)
            follower.start()
            deadline = time.monotonic() + 30 + samples * interval * 4
            rows: dict[str, list[float | None]] = {}
            while time.monotonic() < deadline:
                rows = page.evaluate("() => window.benchRows")
                both = [i for i, r in rows.items() if r[1] is not None and i in follower.arrived]
                if len(both) >= samples + 1:
                    break
                time.sleep(0.2)
            heard: dict[str, float] = page.evaluate("() => window.benchHeard")
            follower.stop()
            if follower.error is not None:
                raise follower.error
            browser.close()

    # The first message may have been on its way when the observer started: left out.
    ids = sorted(i for i, r in rows.items() if r[1] is not None and i in follower.arrived)[1:]
    ids = ids[:samples]
    if len(ids) < samples:
        raise SystemExit(f"only {len(ids)} messages were both rendered and streamed")
    committed = {i: follower.arrived[i][1]["synced_at"] for i in ids}
    upserted = {i: float(follower.arrived[i][1]["text"]) * 1000 for i in ids}
    sse = [follower.arrived[i][0] - committed[i] for i in ids]
    in_browser = [heard[i] - committed[i] for i in ids if i in heard]
    inserted = [float(rows[i][0] or 0) - committed[i] for i in ids]
    painted = [float(rows[i][1] or 0) - committed[i] for i in ids]
    from_upsert = [float(rows[i][1] or 0) - upserted[i] for i in ids]

    print(f"machine: {machine()}")
    print(f"browser: {CHROMIUM}, headless; a new message every {interval * 1000:.0f} ms")
    print(summary("commit -> SSE client (reference)", sse))
    print(summary("commit -> event dispatched in the page", in_browser))
    print(summary("commit -> row inserted in the page", inserted))
    print(summary("commit -> row painted (next frame)", painted))
    print(summary("upsert -> row painted (next frame)", from_upsert))
    p50 = statistics.median(painted)
    print(f"rendered / SSE client, p50: {p50 / statistics.median(sse):.2f}x")
    for group in ("page", "data"):
        s = sizes.get(group, {"files": 0, "transfer": 0, "encoded": 0, "decoded": 0})
        print(
            f"first load, {group:<4}: {s['files']} requests, {s['transfer'] / 1000:.1f} kB "
            f"transferred ({s['encoded'] / 1000:.1f} kB bodies as sent, "
            f"{s['decoded'] / 1000:.1f} kB unpacked)"
        )
    if errors:
        raise SystemExit(f"the page reported errors: {errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between messages")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: install Debian's chromium (.ci/install-chromium)")
    measure(args.samples, args.interval)


if __name__ == "__main__":
    main()
