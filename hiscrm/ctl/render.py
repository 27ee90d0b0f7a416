"""Tables and lines for people (rich); ``--json`` output bypasses this."""

import time
from typing import Any

from rich.console import Console
from rich.table import Table

STATE_STYLES = {
    "running": "green",
    "starting": "cyan",
    "stopping": "yellow",
    "backoff": "yellow",
    "boot_failed": "red",
    "stopped": "dim",
    "exited": "red",
}


def _age(ms: int | None) -> str:
    if not ms:
        return "-"
    seconds = time.time() - ms / 1000
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    return f"{value / 3600:.1f}h" if value >= 7200 else f"{value / 60:.0f}m"


def status(console: Console, status: dict[str, Any], workers: list[dict[str, Any]]) -> None:
    running = status["workers"].get("running", 0)
    parts = [
        f"hiscrm {status['version']}",
        f"master pid {status['pid']}",
        f"up {_seconds(status['uptime_s'])}",
        f"workers {running}/{status['workers_total']} running",
        f"accounts {status['accounts_assigned']}/{status['accounts_total']} assigned",
        f"stale {status['sync']['stale_accounts']}",
    ]
    if status["shutting_down"]:
        parts.append("[yellow]shutting down[/]")
    console.print("  ".join(parts))
    table = _table(
        "WORKER",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "HEARTBEAT",
        "RSS",
        "CODE",
        "ACCOUNTS",
        "LAST EXIT",
    )
    for w in workers:
        last = w["last_exit"]
        exit_text = "-"
        if last:
            how = f"signal {last['signal']}" if last["signal"] else f"code {last['code']}"
            exit_text = f"{last['reason']} ({how}) {_age(last['at'])}"
        style = STATE_STYLES.get(w["state"], "")
        table.add_row(
            w["id"],
            f"[{style}]{w['state']}[/]" if style else w["state"],
            str(w["pid"] or "-"),
            _seconds(w["uptime_s"]),
            str(w["restarts"]),
            _seconds(w["heartbeat_age_s"]),
            f"{w['rss_bytes'] / 2**20:.0f} MiB" if w["rss_bytes"] else "-",
            (w["code_version"] or "-") + (" [red]stale[/]" if w["stale_code"] else ""),
            ",".join(w["accounts"]) or "-",
            exit_text,
        )
    console.print(table)
    if status["stale_code"]:
        console.print(
            "[red]the master's own code changed on disk: restart the master to load it[/]"
        )
    if status["stale_workers"]:
        console.print(
            f"[yellow]{status['stale_workers']} worker(s) run stale code: hiscrmctl reload[/]"
        )
    items = ", ".join(f"{n} {name}" for name, n in status["store"]["items"].items())
    console.print(
        f"store: {items}; syncs {status['sync']['syncs']}, errors {status['sync']['errors']}"
    )


def accounts(console: Console, accounts: list[dict[str, Any]]) -> None:
    table = _table(
        "ACCOUNT", "PLATFORM", "WORKER", "STATE", "LAST SYNC", "STALE", "SYNCS", "ITEMS", "ERRORS"
    )
    for a in accounts:
        table.add_row(
            a["id"],
            a["platform"],
            a["worker"] or "-",
            a["state"] or "-",
            _age(a["last_sync_at"]),
            "[red]stale[/]" if a["stale"] else "no",
            str(a["syncs"]),
            str(a["items_synced"]),
            str(sum(a["sync_errors"].values())),
        )
    console.print(table)


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column)
    return table
