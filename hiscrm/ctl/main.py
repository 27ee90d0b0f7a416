"""hiscrmctl: status, stop/start/restart, reload, logs, accounts, sync.

Exit codes: 0 done, 1 failed (master not running, refused, the action did not reach
its goal), 2 usage.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console

from hiscrm.config import ConfigError, load_config
from hiscrm.ctl import render
from hiscrm.ctl.client import CtlError, MasterClient
from hiscrm.exit_codes import ExitCode

# What each action must end in to count as done.
EXPECTED = {"restart": "running", "start": "running", "stop": "stopped"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hiscrmctl", description="Control a running hiscrm master."
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--state-dir",
        type=Path,
        help="the master's state directory (default: $HISCRM_STATE_DIR or ./var)",
    )
    where.add_argument("--config", type=Path, help="take the state directory from this config file")
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait for the master (default 120)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", help="master, workers and store at a glance")
    for action in ("restart", "stop", "start"):
        sub = commands.add_parser(action, help=f"{action} a worker and wait until it has")
        sub.add_argument("worker")
    commands.add_parser("reload", help="restart every worker, one at a time")
    logs = commands.add_parser("logs", help="a worker's log (also after it died)")
    logs.add_argument("worker")
    logs.add_argument(
        "-n", "--lines", type=int, default=50, help="how many last lines (default 50)"
    )
    logs.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C to stop)"
    )
    commands.add_parser("accounts", help="accounts, their workers and sync health")
    sync = commands.add_parser("sync", help="ask an account's worker to sync now")
    sync.add_argument("account")
    sync.add_argument(
        "--from-seq", type=int, help="send again every item changed after this sequence number"
    )
    for sub in commands.choices.values():  # --json after the command too
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )
    return parser.parse_args(argv)


def state_dir(args: argparse.Namespace) -> Path:
    if args.config is not None:
        try:
            return load_config(args.config).state_dir
        except ConfigError as exc:
            raise CtlError(f"config error: {exc}") from None
    if args.state_dir is not None:
        return Path(args.state_dir).resolve()
    return Path(os.environ.get("HISCRM_STATE_DIR", "var")).resolve()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Piped output is not cut at 80 columns; a terminal gets its own width.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    try:
        client = MasterClient(state_dir(args), args.timeout)
        return run(args, client, console)
    except CtlError as exc:
        print(f"hiscrmctl: {exc}", file=sys.stderr)
        return ExitCode.CRASHED
    except KeyboardInterrupt:
        return ExitCode.OK


def emit(args: argparse.Namespace, data: Any) -> None:
    print(json.dumps(data, indent=2))


def run(args: argparse.Namespace, client: MasterClient, console: Console) -> int:
    match args.command:
        case "status":
            status = client.request("GET", "/status")
            workers = client.all_pages("/workers")
            if args.json:
                emit(args, {"status": status, "workers": workers})
            else:
                render.status(console, status, workers)
            return ExitCode.OK
        case "restart" | "stop" | "start":
            result = client.request(
                "POST", f"/workers/{quote(args.worker, safe='')}/{args.command}"
            )
            worker = result["worker"]
            if args.json:
                emit(args, result)
            else:
                pids = f"pid {result['previous_pid'] or '-'} -> {worker['pid'] or '-'}"
                took = f"took {result['took_s']:.2f} s"
                console.print(
                    f"{worker['id']}: {args.command} done, {worker['state']}, {pids}, {took}"
                )
            return ExitCode.OK if worker["state"] == EXPECTED[args.command] else ExitCode.CRASHED
        case "reload":
            result = client.request("POST", "/reload")
            if args.json:
                emit(args, result)
            else:
                for step in result["steps"]:
                    pids = f"pid {step['old_pid']} -> {step['new_pid']}"
                    gap = step["max_gap_ms"]
                    handed = f"{step['accounts']} accounts" + (
                        f", longest gap {gap:.0f} ms" if gap else ""
                    )
                    took = f"in {step['took_s']:.2f} s"
                    console.print(f"{step['worker']}: {pids} ({step['state']}) {took}, {handed}")
                outcome = "complete" if result["complete"] else f"stopped: {result['error']}"
                console.print(f"reload {outcome} after {result['took_s']:.2f} s")
            return ExitCode.OK if result["complete"] else ExitCode.CRASHED
        case "logs":
            if args.follow:
                for chunk in client.stream(
                    f"/workers/{quote(args.worker, safe='')}/logs", tail=args.lines, follow="true"
                ):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                return ExitCode.OK
            result = client.request(
                "GET", f"/workers/{quote(args.worker, safe='')}/logs", tail=args.lines
            )
            if args.json:
                emit(args, result)
            else:
                for line in result["lines"]:
                    print(line)
            return ExitCode.OK
        case "accounts":
            accounts = client.all_pages("/accounts")
            if args.json:
                emit(args, accounts)
            else:
                render.accounts(console, accounts)
            return ExitCode.OK
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
