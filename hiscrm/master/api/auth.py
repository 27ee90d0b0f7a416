"""The API's bearer token: created at first start in ``<state_dir>/token`` (mode 0600),
compared in constant time.

A token file the master cannot use (a directory, a link to nothing, unreadable, not UTF-8
text, not a token) stops the start with a :class:`TokenError` naming the path and what to
do: the master never starts with a token clients cannot have. An empty file is the one
repair: a new token is written into it.
"""

import errno
import os
import re
import secrets
import stat
from enum import Enum
from pathlib import Path

import msgspec

TOKEN_BYTES = 32
MAX_TOKEN_FILE_BYTES = 4096
# What a bearer token may hold (RFC 6750 b64token, plus any other visible ASCII character
# an operator may have chosen): anything else cannot travel in an HTTP header.
TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")


class TokenError(Exception):
    """The token file cannot be used; the message names it and says what to do."""


class TokenOrigin(Enum):
    READ = "read"
    CREATED = "created"
    MODE_FIXED = "mode_fixed"  # it was readable by others; now owner-only
    EMPTY_REPLACED = "empty_replaced"  # it was empty; a new token was written


class Token(msgspec.Struct, frozen=True):
    value: str
    path: Path
    origin: TokenOrigin
    old_mode: int | None = None  # for MODE_FIXED


def load_or_create_token(state_dir: Path) -> Token:
    """The token in ``state_dir/token``, made on first use; readable by its owner only.
    The caller logs ``origin``."""
    path = state_dir / "token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # also a symlink, dangling or not
        return _read_existing(path)
    except OSError as exc:
        raise TokenError(f"{path}: cannot create the API token: {exc.strerror}") from exc
    return Token(_write_new(fd, path), path, TokenOrigin.CREATED)


def _read_existing(path: Path) -> Token:
    # O_NONBLOCK: a FIFO put there must not hang the start; fstat then refuses it.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TokenError(_open_problem(path, exc)) from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise TokenError(f"{path}: the API token path is a directory, not a file; remove it")
        if not stat.S_ISREG(info.st_mode):
            raise TokenError(f"{path}: the API token path is not a regular file; remove it")
        data = os.read(fd, MAX_TOKEN_FILE_BYTES + 1)
        if not data.strip():
            return _replace_empty(path)
        token = _token_of(data, path)
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            os.fchmod(fd, 0o600)
            return Token(token, path, TokenOrigin.MODE_FIXED, old_mode=mode)
        return Token(token, path, TokenOrigin.READ)
    except OSError as exc:
        raise TokenError(f"{path}: cannot read the API token: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _open_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ENOENT and path.is_symlink():
        target = os.readlink(path)
        return (
            f"{path}: the API token file is a symbolic link to {target}, which does not "
            "exist; create the token there or remove the link to have a new one made"
        )
    return f"{path}: cannot read the API token: {exc.strerror}"


def _token_of(data: bytes, path: Path) -> str:
    if len(data) > MAX_TOKEN_FILE_BYTES:
        raise TokenError(
            f"{path}: the API token file is over {MAX_TOKEN_FILE_BYTES} bytes: not a token; "
            "remove it to have a new one made"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError(
            f"{path}: the API token file is not UTF-8 text; remove it to have a new one made"
        ) from None
    token = text.strip()
    if not TOKEN_PATTERN.fullmatch(token):
        raise TokenError(
            f"{path}: the API token may hold visible ASCII characters only (no spaces or "
            "control characters); fix it or remove the file to have a new one made"
        )
    return token


def _replace_empty(path: Path) -> Token:
    """A new token written into the empty file (where a link points, if it is one)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TokenError(f"{path}: cannot write the API token: {exc.strerror}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise TokenError(f"{path}: the API token path is not a regular file; remove it")
        os.fchmod(fd, 0o600)
    except OSError as exc:
        os.close(fd)
        raise TokenError(f"{path}: cannot write the API token: {exc.strerror}") from exc
    except TokenError:
        os.close(fd)
        raise
    return Token(_write_new(fd, path), path, TokenOrigin.EMPTY_REPLACED)


def _write_new(fd: int, path: Path) -> str:
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
    except OSError as exc:
        raise TokenError(f"{path}: cannot write the API token: {exc.strerror}") from exc
    return token


def token_matches(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())
