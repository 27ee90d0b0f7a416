"""The API's bearer token: created at first start in ``<state_dir>/token`` (mode 0600),
compared in constant time."""

import os
import secrets
import stat
from pathlib import Path

from structlog.typing import FilteringBoundLogger

TOKEN_BYTES = 32


def load_or_create_token(state_dir: Path, log: FilteringBoundLogger) -> str:
    """The token in ``state_dir/token``, made on first use; readable by its owner only."""
    path = state_dir / "token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            log.warning(
                "API token file was readable by others; making it owner-only",
                path=str(path),
                mode=oct(mode),
            )
            path.chmod(0o600)
        token = path.read_text().strip()
        if token:
            return token
        log.error("API token file is empty; making a new token", path=str(path))
        path.unlink()
        return load_or_create_token(state_dir, log)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("API token created", path=str(path))
    return token


def token_matches(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode(), expected.encode())
