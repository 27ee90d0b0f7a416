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
    # accounts
    "disabled": "dim",
    "unassigned": "yellow",
    "down": "red",
    "failed": "red",
    "quarantined": "magenta",
    # replies
    "queued": "cyan",
    "sending": "yellow",
    "sent": "green",
    "unknown": "magenta",
    "expired": "dim",
    "cancelled": "dim",
}
# Account states whose reason ``hiscrmctl accounts`` shows under the table.
EXPLAINED = frozenset({"unassigned", "down", "failed", "quarantined"})
HEALTH_STYLES = {"ok": "green", "degraded": "yellow", "failing": "red"}


def _styled(state: str) -> str:
    style = STATE_STYLES.get(state, "")
    return f"[{style}]{state}[/]" if style else state


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
    health = status.get("health", "-")
    by_state = ", ".join(f"{n} {s}" for s, n in status.get("accounts", {}).items() if n)
    parts = [
        f"hiscrm {status['version']}",
        f"[{HEALTH_STYLES.get(health, '')}]{health}[/]",
        f"master pid {status['pid']}",
        f"up {_seconds(status['uptime_s'])}",
        f"workers {running}/{status['workers_total']} running",
        f"accounts {status['accounts_assigned']}/{status['accounts_total']} running"
        + (f" ({by_state})" if by_state else ""),
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
        table.add_row(
            w["id"],
            _styled(w["state"]),
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


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def _counts(by: dict[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(by.items()) if n) or "none"


def worker(console: Console, w: dict[str, Any]) -> None:
    """One worker in detail (``hiscrmctl status WORKER``)."""
    pid = f"pid {w['pid']}" if w["pid"] else "no process"
    code = (w["code_version"] or "-") + (" [red]stale[/]" if w["stale_code"] else "")
    console.print(
        f"{w['id']}: {_styled(w['state'])}, {pid}, up {_seconds(w['uptime_s'])}, code {code}"
    )
    for path in w["stale_files"][:5]:
        console.print(f"  changed on disk: {path}", markup=False)
    console.print(f"  accounts ({len(w['accounts'])}): {', '.join(w['accounts']) or '-'}")
    lag = w["loop_lag_ms"]
    cpu = f"{w['cpu_percent']:.1f}%" if w["cpu_percent"] is not None else "-"
    console.print(
        f"  heartbeat {_seconds(w['heartbeat_age_s'])} ago, loop lag "
        f"{'-' if lag is None else f'{lag:.1f} ms'}, cpu {cpu} "
        f"({_seconds(w['cpu_seconds'])} in all)"
    )
    limit = w["max_memory_bytes"]
    tree = "not measured yet"
    if w["tree_rss_bytes"] is not None:
        tree = f"rss {_mib(w['tree_rss_bytes'])}, PSS not read yet"
    if w["tree_memory_bytes"] is not None:
        tree = (
            f"{_mib(w['tree_memory_bytes'])} {w['tree_memory_kind']} in "
            f"{w['tree_processes']} process{'' if w['tree_processes'] == 1 else 'es'} "
            f"(rss {_mib(w['tree_rss_bytes'])}), "
            f"measured {_age(w['tree_memory_at'])}"
        )
    console.print(
        f"  memory: rss {_mib(w['rss_bytes'])}; process tree {tree}; "
        f"limit {_mib(limit) if limit else 'none'}"
    )
    console.print(f"  restarts {w['restarts']} ({_counts(w['restarts_by_reason'])})")
    console.print(
        f"  errors {w['errors_total']}, protocol errors {w['protocol_errors']}"
        + (f" ({_counts(w['protocol_errors_by_kind'])})" if w["protocol_errors"] else "")
        + f"; sync: {_counts(w['sync'])}"
    )
    last = w["last_exit"]
    if not last:
        console.print("  last exit: none")
        return
    how = f"signal {last['signal']}" if last["signal"] else f"code {last['code']}"
    console.print(
        f"  last exit: {last['reason']} ({how}) {_age(last['at'])}, after "
        f"{_seconds(last['uptime_s'])}: {last['detail']}"
    )
    for line in last["log_tail"][-10:]:
        console.print(f"    | {line}", markup=False, highlight=False)


def accounts(console: Console, accounts: list[dict[str, Any]]) -> None:
    # A NODE column only when the accounts run on several masters (a cluster).
    nodes = len({a.get("node") for a in accounts}) > 1
    table = _table(
        "ACCOUNT",
        "PLATFORM",
        "STATE",
        "SINCE",
        *(["NODE"] if nodes else []),
        "WORKER",
        "PROGRESS",
        "LAST ITEM",
        "LAST SYNC",
        "RESTARTS",
        "ERRORS",
        "LAST ERROR",
    )
    for a in accounts:
        state = _styled(a["state"]) + (" [red]stale[/]" if a["stale"] else "")
        last_error = a.get("last_error")
        table.add_row(
            a["id"],
            a["platform"],
            state,
            _age(a["state_since_at"]),
            *([a.get("node") or "-"] if nodes else []),
            a["worker"] or "-",
            _age(a["progress_at"]),
            _age(a["last_item_at"]),
            _age(a["last_sync_at"]),
            str(a["task_restarts"]),
            str(a["errors_total"]),
            (last_error["message"][:60] + f" ({_age(last_error['at'])})") if last_error else "-",
        )
    console.print(table)
    # Why accounts are not running where that is not an error of theirs, one line a reason.
    why: dict[tuple[str, str], list[str]] = {}
    for a in accounts:
        if a["state"] in EXPLAINED and a.get("reason"):
            why.setdefault((a["state"], a["reason"]), []).append(a["id"])
    for (state, reason), ids in why.items():
        console.print(f"{_styled(state)} ({reason}): {', '.join(ids)}")


NODE_STYLES = {"ok": "green", "lagging": "yellow", "lost": "red", "leaving": "dim"}


def cluster(console: Console, c: dict[str, Any]) -> None:
    """The masters sharing the store, and this one's lease keeping."""
    if not c["clustered"]:
        console.print(
            f"{c['node_id']}: one master on SQLite, owning every account ({c['held']} enabled)"
        )
        return
    console.print(
        f"cluster seen from {c['node_id']}: {c['enabled']} enabled accounts, {c['free']} "
        f"without a master; leases last {c['lease_ttl_s']:g} s, renewed every "
        f"{c['lease_renew_s']:g} s"
    )
    table = _table("NODE", "STATE", "LEASES", "CAPACITY", "RENEWED", "STARTED", "PID", "API")
    for n in c["nodes"]:
        style = NODE_STYLES.get(n["state"], "")
        table.add_row(
            n["node_id"] + (" (this)" if n["me"] else ""),
            f"[{style}]{n['state']}[/]" if style else n["state"],
            str(n["leases"]),
            str(n["capacity"]),
            f"{n['renewed_age_s']:.1f} s ago",
            _age(n["started_at"]),
            str(n["pid"] or "-"),
            n["api_url"] or "-",
        )
    console.print(table)
    line = (
        f"this master: {c['held']} leases, renewed {_age(c['last_renewal_at'])}, "
        f"{c['renewals']} renewals ({c['renewal_failures']} failed), claimed {c['claimed']}, "
        f"handed back {c['handed_back']}, lost {c['lost']}"
    )
    console.print(line)
    if c["last_error"]:
        console.print(f"[red]renewal failing: {c['last_error']}[/]")


def account(console: Console, a: dict[str, Any]) -> None:
    """One account in detail."""
    console.print(
        f"{a['id']} ({a['platform']}): {_styled(a['state'])} since {_age(a['state_since_at'])}"
    )
    console.print(f"  why: {a['reason'] or '-'}")
    console.print(
        f"  worker {a['worker'] or '-'}, home {a['home'] or '-'}, task {a['task_state'] or '-'}"
        f", task restarts {a['task_restarts']}"
    )
    console.print(
        f"  progress {_age(a['progress_at'])}, last item {_age(a['last_item_at'])}, "
        f"last sync {_age(a['last_sync_at'])}{'  [red]stale[/]' if a['stale'] else ''}"
    )
    if a.get("max_memory_mb") is not None:
        console.print(f"  memory limit {a['max_memory_mb']} MB when it runs alone")
    if a.get("failed"):
        console.print(f"  [red]cannot run[/]: {a['failed'].strip().splitlines()[-1]}")
    error = a.get("last_error")
    if error:
        console.print(f"  errors {a['errors_total']}, last {_age(error['at'])}: {error['message']}")


def update(console: Console, result: dict[str, Any]) -> None:
    """What ``hiscrmctl update`` changed."""
    accounts = result["accounts"]
    parts = [f"{len(accounts[k])} {k}" for k in ("added", "changed", "removed") if accounts[k]]
    console.print(f"updated from {result['source']}: accounts {', '.join(parts) or 'unchanged'}")
    for key in ("added", "changed", "removed"):
        if accounts[key]:
            console.print(f"  accounts {key}: {', '.join(accounts[key])}")
    for account_id in accounts["conflicts"]:
        console.print(
            f"  [red]conflict[/]: {account_id} was made through the API; the file's "
            "declaration is left out"
        )
    for change in result["settings"]:
        console.print(
            f"  {change['key']}: {change['old']} -> {change['new']} ({change['applies']})"
        )
    if result["restart_needed"]:
        keys = ", ".join(result["restart_needed"])
        console.print(f"[yellow]restart the master to apply: {keys}[/]")


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in columns:
        table.add_column(column)
    return table


def outbox(console: Console, entries: list[dict[str, Any]]) -> None:
    """An account's replies, newest first."""
    table = _table("REQUEST", "KIND", "TO", "STATE", "MADE", "ATTEMPTS", "ITEM", "TEXT / ERROR")
    for e in entries:
        target = e.get("conversation_id") or e.get("content_id") or "-"
        if e.get("parent_id"):
            target += f" > {e['parent_id']}"
        said = e["error"] if e["state"] in ("failed", "unknown", "expired") else e["text"]
        table.add_row(
            e["request_id"],
            e["kind"],
            target,
            _styled(e["state"]),
            _age(e["created_at"]),
            str(e["attempts"]),
            e["item_id"] or "-",
            (said or "-").replace("\n", " ")[:60],
        )
    console.print(table)


def reply_line(e: dict[str, Any]) -> str:
    """One reply in a line, after it was sent for, cancelled or queued again."""
    target = e.get("conversation_id") or e.get("content_id")
    line = f"{e['account_id']} {e['kind']} to {target}: {e['state']} (request {e['request_id']})"
    if e.get("item_id"):
        line += f", item {e['item_id']}"
    if e.get("error"):
        line += f": {e['error']}"
    return line
