"""hiscrmctl: status, stop/start/restart, reload, logs, accounts, cluster, events, replies,
sync, shutdown, open (the dashboard).

Exit codes: 0 done, 1 failed (master not running, refused, the action did not reach
its goal), 2 usage (also a config file that ``update`` refuses). With ``--json`` a
failure is a JSON object on stdout too (``{"error": "...", ...}``), with the same exit
code.
"""

import argparse
import json
import math
import os
import sys
import time
import webbrowser
from http import HTTPStatus
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from rich.console import Console

from hiscrm.config import ConfigError, load_config
from hiscrm.ctl import render
from hiscrm.ctl.client import MasterClient
from hiscrm.ctl.errors import CtlError
from hiscrm.ctl.events import print_events
from hiscrm.ctl.exit_watch import ExitWatch
from hiscrm.ctl.flags import count, directory, seconds
from hiscrm.exit_codes import ExitCode

# What each action must end in to count as done.
EXPECTED = {"restart": "running", "start": "running", "stop": "stopped"}
MAX_TIMEOUT_S = 24 * 3600.0
MAX_TAIL = 10_000  # the most lines the API gives at once
MAX_SEQ = 2**63 - 1
LOG_TAIL_NOTES = 10  # lines of a failed worker's log shown with the error


class UsageError(Exception):
    def __init__(self, message: str, prog: str, usage: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """Usage errors raised (not printed and exited), so ``--json`` can report them too.
    Subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog, self.format_usage())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="hiscrmctl", description="Control a running hiscrm master.")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--state-dir",
        type=directory,
        help="the master's state directory (default: $HISCRM_STATE_DIR or ./var)",
    )
    where.add_argument(
        "--config", type=directory, help="take the state directory from this config file"
    )
    parser.add_argument(
        "--timeout",
        type=seconds(MAX_TIMEOUT_S),
        default=120.0,
        help="seconds to wait for the master (default 120)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser(
        "status", help="master, workers and store at a glance; or one worker in detail"
    )
    status.add_argument("worker", nargs="?", help="show this worker in detail")
    for action in ("restart", "stop", "start"):
        sub = commands.add_parser(action, help=f"{action} a worker and wait until it has")
        sub.add_argument("worker", nargs="?" if action == "restart" else None)
    commands.choices["restart"].add_argument(
        "--all",
        action="store_true",
        help="every running worker, one at a time (each replaced before the next)",
    )
    commands.add_parser("reload", help="restart every worker, one at a time")
    commands.add_parser(
        "shutdown", help="stop every worker, then the master; wait until it has exited"
    )
    logs = commands.add_parser("logs", help="a worker's log (also after it died), or the master's")
    logs.add_argument("worker", help="a worker, or master")
    logs.add_argument(
        "-n",
        "--lines",
        type=count(0, MAX_TAIL),
        default=50,
        help=f"how many last lines (default 50, at most {MAX_TAIL})",
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C to stop)"
    )
    commands.add_parser("accounts", help="accounts: state, worker, progress, errors")
    commands.add_parser(
        "cluster", help="the masters sharing the store: capacity, leases, renewals, lost ones"
    )
    account = commands.add_parser("account", help="act on one account")
    account_commands = account.add_subparsers(dest="account_command", required=True)
    show = account_commands.add_parser("show", help="one account in detail")
    show.add_argument("account")
    release = account_commands.add_parser(
        "release", help="lift an account's quarantine (back to normal placement)"
    )
    release.add_argument("account")
    add = account_commands.add_parser("add", help="make an account (it starts at once)")
    add.add_argument("account")
    add.add_argument("--platform", default="demo", help="built-in name or module:Class")
    add.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="K=V",
        help="an option (V as JSON if it parses: numbers, true/false; else text); repeat",
    )
    add.add_argument("--disabled", action="store_true", help="make it disabled")
    add.add_argument(
        "--max-memory-mb",
        type=int,
        metavar="N",
        help="its own worker's memory limit while it is quarantined and runs alone "
        "(default: [supervision] max_memory_mb)",
    )
    remove = account_commands.add_parser("rm", help="delete an account (data kept)")
    remove.add_argument("account")
    remove.add_argument("--purge", action="store_true", help="delete its items and spool too")
    for toggle in ("enable", "disable"):
        sub = account_commands.add_parser(toggle, help=f"{toggle} an account")
        sub.add_argument("account")
    set_ = account_commands.add_parser(
        "set", help="change options (its task restarts with them); K= removes K"
    )
    set_.add_argument("account")
    set_.add_argument("options", nargs="+", metavar="K=V")
    limit = account_commands.add_parser(
        "limit",
        help="its own memory limit while it is quarantined and runs alone; none removes it",
    )
    limit.add_argument("account")
    limit.add_argument("megabytes", metavar="MB|none")
    for sub in account_commands.choices.values():
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    commands.add_parser(
        "update", help="read the config file again and apply it (accounts, workers, settings)"
    )
    open_ = commands.add_parser(
        "open", help="print a one-time sign-in link to the dashboard (good once, for 60 s)"
    )
    open_.add_argument("--browser", action="store_true", help="and open it in a web browser")
    events = commands.add_parser("events", help="the master's events (with -f: follow them)")
    events.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new events (Ctrl-C to stop)"
    )
    events.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="PREFIX",
        help="only events whose name starts so (item, item.message, worker, account, ...)",
    )
    events.add_argument("--account", help="only this account's events")
    events.add_argument(
        "-n", "--last", type=count(1, 1000), default=20, help="start with the last N (default 20)"
    )
    events.add_argument("--after", type=count(0, MAX_SEQ), help="start after this event id")
    send = commands.add_parser("send", help="reply in a conversation (through the outbox)")
    send.add_argument("account")
    send.add_argument("conversation")
    send.add_argument("text")
    send.add_argument("--request-id", help="yours, so that sending again sends nothing new")
    send.add_argument(
        "--wait", action="store_true", help="wait until it is sent, failed or given up"
    )
    outbox = commands.add_parser(
        "outbox",
        help="an account's replies: outbox ACCOUNT [--state S]; outbox retry|cancel ACCOUNT ID",
    )
    outbox.add_argument("words", nargs="+", metavar="ACCOUNT | retry|cancel ACCOUNT ID")
    outbox.add_argument(
        "--state",
        choices=["queued", "sending", "sent", "failed", "unknown", "expired", "cancelled"],
    )
    sync = commands.add_parser("sync", help="ask an account's worker to sync now")
    sync.add_argument("account")
    sync.add_argument(
        "--from-seq",
        type=count(0, MAX_SEQ),
        help="send again every item changed after this sequence number",
    )
    for sub in commands.choices.values():  # --json after the command too
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    args = parser.parse_args(argv)
    if args.command == "restart" and (args.worker is None) == (not args.all):
        commands.choices["restart"].error("name a WORKER, or give --all")
    return args


def parse_megabytes(text: str) -> int | None:
    """``MB|none`` of ``account limit``: a whole number of megabytes, or None."""
    if text == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise CtlError(
            f"memory limit {text!r}: write a whole number of MB, or none",
            exit_code=ExitCode.USAGE,
        ) from None


def parse_option(text: str) -> tuple[str, Any]:
    """``K=V``: V as JSON if it parses (numbers, true/false, lists), else as text. A
    number JSON cannot carry (NaN, Infinity, 1e999) is refused."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise CtlError(f"option {text!r}: write it as KEY=VALUE")
    try:
        parsed = json.loads(value, parse_constant=_not_finite, parse_float=_finite)
    except _NotFinite:
        raise CtlError(
            f"option {key!r}: {value!r} is not a finite number (JSON has none)",
            exit_code=ExitCode.USAGE,
        ) from None
    except ValueError:
        return key, value
    return key, parsed


class _NotFinite(Exception):
    pass


def _not_finite(text: str) -> float:
    raise _NotFinite(text)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):  # 1e999
        raise _NotFinite(text)
    return number


def state_dir(args: argparse.Namespace) -> Path:
    if args.config is not None:
        try:
            return load_config(args.config).state_dir
        except ConfigError as exc:
            raise CtlError(f"config error: {exc}", exit_code=ExitCode.USAGE) from None
    if args.state_dir is not None:
        return Path(args.state_dir).resolve()
    return Path(os.environ.get("HISCRM_STATE_DIR") or "var").resolve()


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit's flush does not fail again
        return ExitCode.CRASHED


def _main(argv: list[str]) -> int:
    as_json = "--json" in argv
    try:
        args = parse_args(argv)
    except UsageError as exc:
        if as_json:
            print(json.dumps({"error": str(exc), "usage": exc.usage.strip()}, indent=2))
        else:
            print(f"{exc.usage}{exc.prog}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    # Piped output is not cut at 80 columns; a terminal gets its own width.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    try:
        client = MasterClient(state_dir(args), args.timeout)
        return run(args, client, console)
    except CtlError as exc:
        if args.json:
            print(json.dumps(exc.as_json(), indent=2))
        else:
            print(f"hiscrmctl: {exc}", file=sys.stderr)
            for note in exc.notes:
                print(f"    | {note}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return ExitCode.OK


def wait_for_reply(
    client: MasterClient, account_path: str, request_id: str, timeout_s: float
) -> dict[str, Any]:
    """The reply once it is no longer queued or being sent (CtlError after the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        entry: dict[str, Any] = client.request(
            "GET", f"{account_path}/outbox/{quote(request_id, safe='')}"
        )
        if entry["state"] not in ("queued", "sending"):
            return entry
        if time.monotonic() > deadline:
            raise CtlError(f"still {entry['state']} after {timeout_s:g} s", answer=entry)
        time.sleep(0.1)


def outbox_command(args: argparse.Namespace, client: MasterClient, console: Console) -> int:
    words = args.words
    if words[0] in ("retry", "cancel"):
        if len(words) != 3:
            raise CtlError(
                f"usage: hiscrmctl outbox {words[0]} ACCOUNT REQUEST_ID", exit_code=ExitCode.USAGE
            )
        path = f"/accounts/{quote(words[1], safe='')}/outbox/{quote(words[2], safe='')}"
        if words[0] == "retry":
            result = client.request("POST", f"{path}/retry")
        else:
            result = client.request("DELETE", path)
        if args.json:
            emit(args, result)
        else:
            console.print(render.reply_line(result))
        return ExitCode.OK
    if len(words) != 1:
        raise CtlError("usage: hiscrmctl outbox ACCOUNT [--state S]", exit_code=ExitCode.USAGE)
    path = f"/accounts/{quote(words[0], safe='')}/outbox"
    # Every page, oldest first (a reply made meanwhile lands after the pages read, so
    # none is shown twice or missed), then shown newest first.
    entries = client.all_pages(path, state=args.state, order="asc")[::-1]
    if args.json:
        emit(args, entries)
    else:
        render.outbox(console, entries)
    return ExitCode.OK


def emit(args: argparse.Namespace, data: Any) -> None:
    print(json.dumps(data, indent=2))


def update(client: MasterClient) -> dict[str, Any]:
    """``POST /config/update``; a file the master refuses (422: nothing changed) is a
    configuration error, so exit 2 with the master's sentence."""
    try:
        result: dict[str, Any] = client.request("POST", "/config/update")
    except CtlError as exc:
        if exc.fields.get("status") == HTTPStatus.UNPROCESSABLE_ENTITY:
            raise CtlError(
                f"update refused: {exc.said}", exit_code=ExitCode.USAGE, answer=exc.fields
            ) from None
        raise
    return result


def action_failed(action: str, result: dict[str, Any]) -> CtlError:
    """A stop/start/restart that did not end where it should: what happened, and why."""
    worker = result["worker"]
    message = f"{action} failed: {worker['id']} is {worker['state']}"
    last = worker.get("last_exit") or {}
    if last.get("detail"):
        message += f": {last['detail']}"
    tail = list(last.get("log_tail") or [])[-LOG_TAIL_NOTES:]
    return CtlError(message, notes=tail, answer=result)


def reload_step_line(step: dict[str, Any]) -> str:
    old = f"pid {step['old_pid']}" if step["old_pid"] else "not running"
    new = f"pid {step['new_pid']}" if step["new_pid"] else "no new process"
    gap = step["max_gap_ms"]
    handed = f"{step['accounts']} accounts" + (f", longest gap {gap:.0f} ms" if gap else "")
    took = f"in {step['took_s']:.2f} s"
    return f"{step['worker']}: {old} -> {new} ({step['state']}) {took}, {handed}"


def restart_all(args: argparse.Namespace, client: MasterClient, console: Console) -> int:
    """Every running worker, one at a time: the rolling reload, which starts each
    replacement and hands the accounts over before the next worker's turn."""
    skipped = [
        {"id": w["id"], "state": w["state"]}
        for w in client.all_pages("/workers")
        if w["state"] != "running"
    ]
    result = client.request("POST", "/reload")
    if not args.json:
        for step in result["steps"]:
            console.print(reload_step_line(step))
        for worker in skipped:
            console.print(f"{worker['id']}: not restarted, it is {worker['state']}")
    if not result["complete"]:
        why = result.get("error") or "not every worker was restarted"
        raise CtlError(
            f"restart --all failed after {result['took_s']:.2f} s: {why}",
            answer={**result, "skipped": skipped},
        )
    if args.json:
        emit(args, {**result, "skipped": skipped})
    else:
        count = len(result["steps"])
        console.print(f"{count} workers restarted one at a time in {result['took_s']:.2f} s")
    return ExitCode.OK


def shutdown(args: argparse.Namespace, client: MasterClient, console: Console) -> int:
    """Ask the master to stop, then wait until its process has exited."""
    exited = ExitWatch(client.pid)
    began = time.monotonic()
    try:
        result = client.request("POST", "/shutdown")
        if not args.json:
            console.print(f"master pid {result['pid']}: stopping {result['workers']} workers")
        if not exited.wait(args.timeout):
            raise CtlError(
                f"the master (pid {result['pid']}) is still running after "
                f"{args.timeout:.0f} s; it is stopping its workers (hiscrmctl logs master)",
                answer=result,
            )
    finally:
        exited.close()
    took_s = round(time.monotonic() - began, 3)
    if args.json:
        emit(args, {**result, "exited": True, "took_s": took_s})
    else:
        console.print(f"master pid {result['pid']} exited after {took_s:.2f} s")
    return ExitCode.OK


def open_dashboard(args: argparse.Namespace, client: MasterClient, console: Console) -> int:
    """A one-time sign-in link to the dashboard (the master's root with a code that buys a
    session cookie); with ``--browser``, opened there too."""
    root = client.url.removesuffix("/api/v1")
    if client.auth is not False:
        made = client.request("POST", "/session/codes")
        url, expires_at = root + made["path"], made["expires_at"]
    else:  # the API takes no token: nothing to sign in to
        url, expires_at = root + "/", None
    opened = bool(args.browser) and webbrowser.open(url)
    if args.json:
        emit(args, {"url": url, "expires_at": expires_at, "opened": opened})
    else:
        print(url)
        if expires_at is not None:
            console.print("[dim]good once, for 60 s: it signs one browser in[/]")
    if args.browser and not opened:
        raise CtlError(f"no web browser could be started; open {url} yourself", url=url)
    return ExitCode.OK


def run(args: argparse.Namespace, client: MasterClient, console: Console) -> int:
    match args.command:
        case "status" if args.worker is not None:
            worker = client.request("GET", f"/workers/{quote(args.worker, safe='')}")
            if args.json:
                emit(args, worker)
            else:
                render.worker(console, worker)
            return ExitCode.OK
        case "status":
            status = client.request("GET", "/status")
            workers = client.all_pages("/workers")
            if args.json:
                emit(args, {"status": status, "workers": workers})
            else:
                render.status(console, status, workers)
            return ExitCode.OK
        case "restart" if args.all:
            return restart_all(args, client, console)
        case "restart" | "stop" | "start":
            result = client.request(
                "POST", f"/workers/{quote(args.worker, safe='')}/{args.command}"
            )
            worker = result["worker"]
            if worker["state"] != EXPECTED[args.command]:
                raise action_failed(args.command, result)
            if args.json:
                emit(args, result)
            else:
                pids = f"pid {result['previous_pid'] or '-'} -> {worker['pid'] or '-'}"
                took = f"took {result['took_s']:.2f} s"
                console.print(
                    f"{worker['id']}: {args.command} done, {worker['state']}, {pids}, {took}"
                )
            return ExitCode.OK
        case "reload":
            result = client.request("POST", "/reload")
            if not args.json:
                for step in result["steps"]:
                    console.print(reload_step_line(step))
            if not result["complete"]:
                why = result.get("error") or "not every worker was replaced"
                raise CtlError(
                    f"reload failed after {result['took_s']:.2f} s: {why}", answer=result
                )
            if args.json:
                emit(args, result)
            else:
                console.print(f"reload complete after {result['took_s']:.2f} s")
            return ExitCode.OK
        case "shutdown":
            return shutdown(args, client, console)
        case "logs":
            if args.worker == "master":
                path = "/master/logs"
            else:
                path = f"/workers/{quote(args.worker, safe='')}/logs"
            if args.follow:
                for chunk in client.stream(path, tail=args.lines, follow="true"):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                return ExitCode.OK
            result = client.request("GET", path, tail=args.lines)
            if args.json:
                emit(args, result)
            else:
                for line in result["lines"]:
                    print(line)
            return ExitCode.OK
        case "events":
            params: dict[str, Any] = {
                "types": ",".join(args.type) or None,
                "account": args.account,
            }
            if args.after is not None:
                params["after"] = args.after
            else:
                params["last"] = args.last
            folder = state_dir(args)
            print_events(lambda: MasterClient(folder, args.timeout), params, args.follow, args.json)
            return ExitCode.OK
        case "send":
            body = {"conversation_id": args.conversation, "text": args.text}
            if args.request_id:
                body["request_id"] = args.request_id
            path = f"/accounts/{quote(args.account, safe='')}"
            result = client.request("POST", f"{path}/messages", body)
            if args.wait:
                result = wait_for_reply(client, path, result["request_id"], args.timeout)
            if args.json:
                emit(args, result)
            else:
                console.print(render.reply_line(result))
            if result["state"] in ("failed", "unknown", "expired", "cancelled"):
                raise CtlError(render.reply_line(result), answer=result)
            return ExitCode.OK
        case "outbox":
            return outbox_command(args, client, console)
        case "cluster":
            cluster = client.request("GET", "/cluster")
            if args.json:
                emit(args, cluster)
            else:
                render.cluster(console, cluster)
            return ExitCode.OK
        case "accounts":
            accounts = client.all_pages("/accounts")
            if args.json:
                emit(args, accounts)
            else:
                render.accounts(console, accounts)
            return ExitCode.OK
        case "account":
            path = f"/accounts/{quote(args.account, safe='')}"
            match args.account_command:
                case "show":
                    result = client.request("GET", path)
                case "release":
                    result = client.request("POST", f"{path}/release")
                case "add":
                    body = {
                        "id": args.account,
                        "platform": args.platform,
                        "options": dict(parse_option(o) for o in args.option),
                        "enabled": not args.disabled,
                    }
                    if args.max_memory_mb is not None:
                        body["max_memory_mb"] = args.max_memory_mb
                    result = client.request("POST", "/accounts", body)
                case "rm":
                    result = client.request("DELETE", path, purge=str(args.purge).lower())
                    if not args.json:
                        kept = "its data removed" if result["purged"] else "its data kept"
                        console.print(f"{result['id']}: deleted, {kept}")
                        return ExitCode.OK
                case "enable" | "disable":
                    enabled = args.account_command == "enable"
                    result = client.request("PATCH", path, {"enabled": enabled})
                case "set":
                    options = dict(client.request("GET", path)["options"])
                    for key, value in (parse_option(o) for o in args.options):
                        if value == "":
                            options.pop(key, None)
                        else:
                            options[key] = value
                    result = client.request("PATCH", path, {"options": options})
                case "limit":
                    result = client.request(
                        "PATCH", path, {"max_memory_mb": parse_megabytes(args.megabytes)}
                    )
                case other:
                    raise CtlError(f"unknown account command {other!r}")
            if args.json:
                emit(args, result)
            else:
                render.account(console, result)
            return ExitCode.OK
        case "update":
            result = update(client)
            if args.json:
                emit(args, result)
            else:
                render.update(console, result)
            return ExitCode.OK
        case "open":
            return open_dashboard(args, client, console)
        case "sync":
            result = client.request(
                "POST", f"/accounts/{quote(args.account, safe='')}/sync", from_seq=args.from_seq
            )
            if args.json:
                emit(args, result)
            else:
                console.print(f"{result['account_id']}: sync requested from {result['worker']}")
            return ExitCode.OK
    raise CtlError(f"unknown command {args.command!r}")
