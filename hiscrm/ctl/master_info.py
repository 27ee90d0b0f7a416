"""Finding the running master, and making sure it is one before the token goes anywhere.

``<state_dir>/master.json`` says where the master is, but anyone who can write there, or a
master that died and left the file behind, could make it point elsewhere. The token is
only sent once all of this holds:

* ``master.json`` is a regular file (not a link) owned by us (as root: by the master's user);
* its pid is a live process of that user that runs the hiscrm master;
* that process holds ``<state_dir>/master.lock`` open: it is the master of this directory;
* ``api_url`` is plain ``http`` to an IP address and port on which that process itself
  listens: so the URL is the one the master wrote, wherever it points.
"""

import errno
import ipaddress
import itertools
import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil

from hiscrm.ctl.errors import CtlError

MAX_INFO_BYTES = 64 * 1024
MAX_TOKEN_BYTES = 4096
WILDCARDS = {"0.0.0.0", "::"}


class MasterInfo(msgspec.Struct, frozen=True):
    pid: int
    url: str
    auth: bool | None  # None: a master that did not say (older versions)
    token_path: Path


def find_master(state_dir: Path) -> MasterInfo:
    """The verified master of ``state_dir``; CtlError says why there is none."""
    info_path = state_dir / "master.json"
    info, owner = _read_info(state_dir, info_path)
    pid = info.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise CtlError(f"{info_path} names no valid pid ({pid!r})", path=str(info_path))
    process = _live_master(pid, owner, info_path)
    _check_holds_lock(process, state_dir / "master.lock", info_path)
    url = _checked_url(info.get("api_url"), process, info_path)
    auth = info.get("auth")
    return MasterInfo(pid, url, auth if isinstance(auth, bool) else None, state_dir / "token")


def _read_info(state_dir: Path, info_path: Path) -> tuple[dict[str, Any], int]:
    try:
        fd = os.open(info_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CtlError(
            f"no master is running with state directory {state_dir} ({info_path.name} is missing)",
            path=str(info_path),
        ) from None
    except OSError as exc:
        why = "it is a symbolic link, not trusted" if exc.errno == errno.ELOOP else exc.strerror
        raise CtlError(f"cannot read {info_path}: {why}", path=str(info_path)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CtlError(f"{info_path} is not a regular file", path=str(info_path))
        if os.geteuid() != 0 and st.st_uid != os.geteuid():
            raise CtlError(
                f"{info_path} belongs to uid {st.st_uid}, not to you: not trusting it",
                path=str(info_path),
            )
        data = os.read(fd, MAX_INFO_BYTES + 1)
    except OSError as exc:
        raise CtlError(f"cannot read {info_path}: {exc.strerror}", path=str(info_path)) from None
    finally:
        os.close(fd)
    try:
        info = json.loads(data)
    except ValueError as exc:
        raise CtlError(f"cannot read {info_path}: {exc}", path=str(info_path)) from None
    if not isinstance(info, dict):
        raise CtlError(f"cannot read {info_path}: not a JSON object", path=str(info_path))
    return info, st.st_uid


def _live_master(pid: int, owner: int, info_path: Path) -> psutil.Process:
    dead = CtlError(
        f"{info_path} names pid {pid}, which is not running: the master has died",
        path=str(info_path),
        pid=pid,
    )
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            raise dead
        uid = process.uids().real
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        raise dead from None
    except psutil.AccessDenied:
        raise CtlError(
            f"{info_path} names pid {pid}, which you may not inspect: not sending the token",
            path=str(info_path),
            pid=pid,
        ) from None
    if uid != owner or (os.geteuid() != 0 and uid != os.geteuid()):
        raise CtlError(
            f"{info_path} names pid {pid}, which runs as uid {uid}, not as the owner of "
            f"{info_path.name}: not sending the token",
            path=str(info_path),
            pid=pid,
        )
    if not runs_hiscrm_master(cmdline):
        shown = " ".join(cmdline)[:120]
        raise CtlError(
            f"{info_path} names pid {pid}, which is not a hiscrm master ({shown!r}): "
            "the file is stale or forged; not sending the token",
            path=str(info_path),
            pid=pid,
        )
    return process


def runs_hiscrm_master(cmdline: list[str]) -> bool:
    """``python -m hiscrm.master …``, the ``hiscrm-master`` script, or its process title."""
    pairs = itertools.pairwise(cmdline)
    if "-mhiscrm.master" in cmdline or any(p == ("-m", "hiscrm.master") for p in pairs):
        return True
    if any(os.path.basename(arg) == "hiscrm-master" for arg in cmdline[:2]):
        return True
    return bool(cmdline) and cmdline[0].startswith("hiscrm: master")


def _check_holds_lock(process: psutil.Process, lock: Path, info_path: Path) -> None:
    try:
        files = process.open_files()
        held = any(_same_file(f.path, lock) for f in files if f.path.endswith(lock.name))
    except psutil.Error as exc:
        raise CtlError(f"cannot inspect pid {process.pid}: {exc}", pid=process.pid) from None
    if not held:
        raise CtlError(
            f"{info_path} names pid {process.pid}, which is not the master of this state "
            f"directory (it does not hold {lock}): not sending the token",
            path=str(info_path),
            pid=process.pid,
        )


def _same_file(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _checked_url(value: Any, process: psutil.Process, info_path: Path) -> str:
    def refuse(why: str) -> CtlError:
        return CtlError(
            f"{info_path}: api_url {value!r} {why}: not sending the token",
            path=str(info_path),
            pid=process.pid,
        )

    if not isinstance(value, str):
        raise refuse("is not a URL")
    try:
        url = httpx.URL(value)
        address = ipaddress.ip_address(url.host)
    except (httpx.InvalidURL, ValueError):
        raise refuse("is not http://<IP address>:<port>/…") from None
    if url.scheme != "http" or url.port is None or url.userinfo:
        raise refuse("is not http://<IP address>:<port>/…")
    try:
        listening = [
            c.laddr
            for c in process.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.laddr
        ]
    except psutil.Error as exc:
        raise CtlError(f"cannot inspect pid {process.pid}: {exc}", pid=process.pid) from None
    for laddr in listening:
        bound = ipaddress.ip_address(laddr.ip)
        if laddr.port == url.port and (bound == address or laddr.ip in WILDCARDS):
            return value
    raise refuse(f"is not where the master (pid {process.pid}) listens")


def read_token(path: Path, auth: bool | None) -> str | None:
    """The token to send, or None when the master runs without auth (or says nothing and
    there is no token file: the answer will tell)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if auth:
            raise CtlError(
                f"the API token file {path} is missing: it is made when the master starts; "
                "restart the master to make a new one",
                path=str(path),
            ) from None
        return None
    except OSError as exc:
        raise CtlError(
            f"cannot read the API token {path}: {exc.strerror}", path=str(path)
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise CtlError(f"the API token {path} is not a regular file", path=str(path))
        data = os.read(fd, MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise CtlError(
            f"cannot read the API token {path}: {exc.strerror}", path=str(path)
        ) from None
    finally:
        os.close(fd)
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CtlError(f"the API token {path} is not UTF-8 text", path=str(path)) from None
    if not token or len(data) > MAX_TOKEN_BYTES or not token.isascii() or not token.isprintable():
        raise CtlError(f"the API token {path} does not hold a token", path=str(path))
    if any(c.isspace() for c in token):
        raise CtlError(f"the API token {path} does not hold a token", path=str(path))
    return token
