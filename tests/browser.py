"""A real headless Chromium for the dashboard's tests: Debian's ``chromium`` driven by
Playwright (its own browser download is never used), signed in with ``hiscrmctl open``.

The browser carries a test marker in its environment like the masters do; when it is
closed, anything still carrying the marker (a renderer, a GPU process) is a leftover, and
so is Playwright's driver process if it outlives ``stop``.
"""

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from harness import MARKER, REPO, Master, kill_leftovers, marked_processes
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)
from test_ctl import ctl

REQUIRE_ENV = "HISCRM_REQUIRE_BROWSER"
CHROMIUM = Path(os.environ.get("HISCRM_CHROMIUM", "/usr/bin/chromium"))
UPDATE_SCREENSHOTS_ENV = "HISCRM_UPDATE_SCREENSHOTS"
SCREENSHOTS = REPO / "docs" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000
# What the page shows may take a while on a busy machine (two cores, a browser, a master).
expect.set_options(timeout=TIMEOUT_MS)


class BrowserUnavailable(Exception):
    pass


@contextmanager
def running_browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise BrowserUnavailable(
            f"{CHROMIUM} is not installed (install Debian's chromium: .ci/install-chromium, "
            "as root; or set HISCRM_CHROMIUM)"
        )
    marker = f"browser-{os.getpid()}-{time.monotonic_ns()}"
    playwright = sync_playwright().start()
    drivers = [p for p in psutil.Process().children() if _is_driver(p)]
    try:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            env={**os.environ, MARKER: marker},
        )
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (
            any(True for _ in marked_processes(marker)) or any(d.is_running() for d in drivers)
        ):
            time.sleep(0.05)
        left = kill_leftovers(marker)
        for driver in drivers:
            if driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{driver.pid} playwright driver")
                driver.kill()
        assert not left, f"browser processes left behind: {left}"


def _is_driver(process: psutil.Process) -> bool:
    """Playwright's driver (``node … cli.js run-driver``), a child of this process."""
    try:
        return "run-driver" in process.cmdline()
    except psutil.Error:
        return False


@dataclass
class Tab:
    """A page of its own browser context (its own cookies), with what its console said."""

    context: BrowserContext
    page: Page
    errors: list[str] = field(default_factory=list)

    def goto_hash(self, route: str) -> None:
        """Another page of the dashboard, without reloading it."""
        self.page.evaluate("route => { location.hash = route; }", route)

    def no_console_errors(self) -> None:
        assert not self.errors, f"the page reported errors: {self.errors}"

    def close(self) -> None:
        self.context.close()


def new_tab(browser: Browser, viewport: dict[str, int] = DESKTOP) -> Tab:
    context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    tab = Tab(context, page)

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            tab.errors.append(f"console: {message.text} ({message.location})")

    page.on("console", console)
    page.on("pageerror", lambda error: tab.errors.append(f"page error: {error}"))
    return tab


def root_of(master: Master) -> str:
    """The master's address without the API's prefix (where the page is served)."""
    return master.api_url().removesuffix("/api/v1")


def sign_in_link(master: Master) -> dict[str, Any]:
    made = ctl(master, "--json", "open")
    assert made.returncode == 0, made.stderr
    return dict(json.loads(made.stdout))


def signed_in(browser: Browser, master: Master, viewport: dict[str, int] = DESKTOP) -> Tab:
    """A tab signed in with a fresh one-time link, on the overview with the state read."""
    tab = new_tab(browser, viewport)
    tab.page.goto(sign_in_link(master)["url"])
    tab.page.wait_for_url(master.api_url().removesuffix("/api/v1") + "/")
    tab.page.locator(".connection-live").wait_for()
    tab.page.locator("tr[data-worker]").first.wait_for()
    return tab


def screenshot(page: Page, name: str, tmp_path: Path) -> Path:
    """A screenshot of what the page shows; into docs/screenshots with
    HISCRM_UPDATE_SCREENSHOTS=1 (how the README's pictures are made), else beside the
    test's files."""
    folder = SCREENSHOTS if os.environ.get(UPDATE_SCREENSHOTS_ENV) == "1" else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled", caret="hide", full_page=True)
    assert path.stat().st_size > 10_000, f"{path} looks empty"
    return path
