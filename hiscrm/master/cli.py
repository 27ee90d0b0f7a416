"""``python -m hiscrm.master``: command line, configuration, state directory, then the loop.

A bad configuration exits 2 with one line naming the file, the key and the problem,
before any process is started. Everything else the master needs before it can run (a
writable state directory and logs directory, its log file, a usable API token, its port,
``master.json``) is checked in turn; a failure is one line on stderr and exit 1, never a
master that starts half-working.
"""

import argparse
import asyncio
import io
import ipaddress
import os
import socket
import sys
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from hiscrm import __version__, process_title
from hiscrm.config import ConfigError, check_override, load_config
from hiscrm.exit_codes import ExitCode
from hiscrm.log_config import configure_master_logging, get_logger
from hiscrm.logfile import RotatingLogFile
from hiscrm.master.api.auth import Token, TokenError, TokenOrigin, load_or_create_token
from hiscrm.master.api.listen import bind
from hiscrm.master.data.store import StoreError
from hiscrm.master.state_dir import StateDir, StateDirError
from hiscrm.master.supervision.early_template import boot_early_template
from hiscrm.master.supervision.template_spawn import StartedTemplate


class StartupError(Exception):
    """Something the master needs before it can run is missing; the message says what."""


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    try:
        return int(check_override("workers", value))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _directory(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if "\0" in text:
        raise argparse.ArgumentTypeError("must not contain a NUL character")
    return Path(text)


def _program() -> str:
    """How the master was started, for usage lines: the script or ``python -m``."""
    if sys.argv and Path(sys.argv[0]).name == "hiscrm-master":
        return "hiscrm-master"
    return "python -m hiscrm.master"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=_program(),
        description="Run the hiscrm master and its workers in the foreground.",
    )
    parser.add_argument("--config", type=_directory, help="TOML file (default: the embedded demo)")
    parser.add_argument("--workers", type=_workers, help="number of workers (overrides the file)")
    parser.add_argument("--state-dir", type=_directory, help="state directory (overrides the file)")
    parser.add_argument(
        "--watch",
        action="store_true",
        help="development: reload the workers when a file of their code changes",
    )
    parser.add_argument("--version", action="version", version=f"hiscrm {__version__}")
    return parser.parse_args(argv)


def local_url(sock: socket.socket) -> str:
    """The API's URL as the bound socket has it, for ``master.json``: an address, not a
    name, and loopback when the master listens on every address."""
    host = str(sock.getsockname()[0])
    address = ipaddress.ip_address(host)
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    port = sock.getsockname()[1]
    netloc = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{netloc}:{port}/api/v1"


def _log_token(token: Token, log: FilteringBoundLogger) -> None:
    path = str(token.path)
    match token.origin:
        case TokenOrigin.CREATED:
            log.info("API token created", path=path)
        case TokenOrigin.MODE_FIXED:
            mode = oct(token.old_mode or 0)
            log.warning(
                "API token file was readable by others; made it owner-only", path=path, mode=mode
            )
        case TokenOrigin.EMPTY_REPLACED:
            log.error("API token file was empty; wrote a new token into it", path=path)
        case TokenOrigin.READ:
            pass


def _open_master_log(state: StateDir, max_bytes: int, backups: int) -> RotatingLogFile:
    master_log = RotatingLogFile(state.master_log, max_bytes, backups)
    try:
        master_log.open()
    except OSError as exc:
        raise StartupError(
            f"{state.master_log}: cannot open the master log: {exc.strerror}"
        ) from exc
    return master_log


def main(
    argv: list[str] | None = None,
    early: StartedTemplate | None = None,
    notify_socket: str | None = None,
) -> int:
    """``early``: a fork template ``launch`` started before this was imported;
    ``notify_socket``: the service manager's, which ``launch`` took out of the
    environment."""
    if notify_socket is None:  # not started by ``launch``: taken out of the environment here
        notify_socket = os.environ.pop("NOTIFY_SOCKET", None)
    try:
        return _main(argv, early, notify_socket)
    finally:
        if early is not None and not early.adopted:
            early.abandon()


def _main(argv: list[str] | None, early: StartedTemplate | None, notify_socket: str | None) -> int:
    args = parse_args(argv)
    process_title.set_title(process_title.MASTER)
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
    api_socket: socket.socket | None = None
    master_log: RotatingLogFile | None = None
    try:
        master_log = _open_master_log(state, config.logs.max_bytes, config.logs.backups)
        # The token before logging starts: its failure is one line, like the others.
        token = load_or_create_token(state.root) if config.api.auth else None
        try:
            api_socket = bind(config.api.host, config.api.port)
        except OSError as exc:
            where = f"{config.api.host}:{config.api.port}"
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
        try:
            state.write_master_json(local_url(api_socket), auth=token is not None)
        except OSError as exc:
            raise StartupError(f"{state.master_json}: cannot write: {exc.strerror}") from exc
    except (StartupError, TokenError) as exc:
        print(f"hiscrm: {exc}", file=sys.stderr)
        if api_socket is not None:
            api_socket.close()
        if master_log is not None:  # master.log says it too (the console already has it)
            configure_master_logging(master_log, console=io.StringIO())
            get_logger().error("master cannot start", error=str(exc))
            master_log.close()
        state.release()
        return ExitCode.CRASHED
    configure_master_logging(master_log)
    log = get_logger()
    try:
        if early is not None:  # told what to load now, while the master imports the rest
            early = boot_early_template(early, config, log)
        from hiscrm.master.app import run_master

        if token is not None:
            _log_token(token, log)
        return asyncio.run(
            run_master(
                config,
                api_socket,
                token.value if token else None,
                log,
                watch=args.watch,
                config_path=args.config,
                overrides={"workers": args.workers, "state_dir": args.state_dir},
                early_template=early,
                notify_socket=notify_socket,
            )
        )
    except StoreError as exc:  # before any worker started: one line, like the others
        print(f"hiscrm: {exc}", file=sys.stderr)
        configure_master_logging(master_log, console=io.StringIO())  # said on the console
        get_logger().error("master cannot start", error=str(exc))
        return ExitCode.CRASHED
    except BaseException as exc:
        log.critical("master failed", exc_info=exc)
        raise
    finally:
        api_socket.close()
        state.release()
        master_log.close()
