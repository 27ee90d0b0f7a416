"""``python -m hiscrm.master``: command line, configuration, state directory, then the loop.

A bad configuration exits 2 with one line naming the file, the key and the problem,
before any process is started.
"""

import argparse
import asyncio
import sys
from pathlib import Path

from hiscrm import __version__
from hiscrm.config import ConfigError, load_config
from hiscrm.exit_codes import ExitCode
from hiscrm.log_config import configure_master_logging, get_logger
from hiscrm.logfile import RotatingLogFile
from hiscrm.master.api.auth import load_or_create_token
from hiscrm.master.api.server import bind
from hiscrm.master.app import run_master
from hiscrm.master.state_dir import StateDir, StateDirError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hiscrm.master",
        description="Run the hiscrm master and its workers in the foreground.",
    )
    parser.add_argument("--config", type=Path, help="TOML file (default: the embedded demo)")
    parser.add_argument(
        "--workers", type=_positive_int, help="number of workers (overrides the file)"
    )
    parser.add_argument("--state-dir", type=Path, help="state directory (overrides the file)")
    parser.add_argument(
        "--watch",
        action="store_true",
        help="development: reload the workers when a file of their code changes",
    )
    parser.add_argument("--version", action="version", version=f"hiscrm {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, workers=args.workers, state_dir=args.state_dir)
    except ConfigError as exc:
        print(f"hiscrm: config error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    state = StateDir(config.state_dir)
    try:
        state.prepare()
    except StateDirError as exc:
        print(f"hiscrm: {exc}", file=sys.stderr)
        return ExitCode.CRASHED
    try:
        api_socket = bind(config.api.host, config.api.port)
    except OSError as exc:
        print(
            f"hiscrm: cannot listen on {config.api.host}:{config.api.port}: {exc.strerror}",
            file=sys.stderr,
        )
        state.release()
        return ExitCode.CRASHED
    master_log = RotatingLogFile(state.master_log, config.logs.max_bytes, config.logs.backups)
    master_log.open()
    configure_master_logging(master_log)
    log = get_logger()
    try:
        token = load_or_create_token(state.root, log) if config.api.auth else None
        port = api_socket.getsockname()[1]  # the real one, when the config says 0
        state.write_master_json(config.api.model_copy(update={"port": port}).url)
        return asyncio.run(run_master(config, api_socket, token, log, watch=args.watch))
    except BaseException as exc:
        log.critical("master failed", exc_info=exc)
        raise
    finally:
        api_socket.close()
        state.release()
        master_log.close()
