"""The master's state directory: its layout, the single-master lock and ``master.json``.

Everything the master needs of the directory is checked before anything starts: a
directory it cannot write is one clear error at start, not a crash later.
"""

import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hiscrm import __version__
from hiscrm.items import epoch_ms


class StateDirError(Exception):
    pass


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.master_json = root / "master.json"
        self.master_log = self.logs / "master.log"
        self._lock_path = root / "master.lock"
        self._lock_fd: int | None = None

    def prepare(self) -> None:
        """Create the directories and take the lock that keeps a second master out."""
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateDirError(f"{self.root}: cannot use as state directory: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = self.read_master_json().get("pid", "unknown")
            raise StateDirError(
                f"{self.root}: another master (pid {other}) is running with this state directory"
            ) from None
        self._lock_fd = fd
        try:
            for directory in (self.root, self.logs):
                _check_writable(directory)
        except StateDirError:
            self.release()
            raise

    def read_master_json(self) -> dict[str, Any]:
        try:
            data = json.loads(self.master_json.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_master_json(self, api_url: str, *, auth: bool) -> None:
        """Tell hiscrmctl where the API is and whether it needs the token; OSError if it
        cannot be written."""
        info = {
            "pid": os.getpid(),
            "api_url": api_url,
            "auth": auth,
            "state_dir": str(self.root),
            "version": __version__,
            "started_at": epoch_ms(),
        }
        tmp = self.master_json.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.master_json)

    def release(self) -> None:
        """Remove ``master.json`` (ours, or left by a master that died: we hold the lock)
        and let the lock go."""
        if self._lock_fd is not None:
            self.master_json.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None


def _check_writable(directory: Path) -> None:
    """Create and remove a file in ``directory``: the one sure test (permissions, a
    read-only mount, ACLs, quotas and root all answer it the same way)."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check-")
    except OSError as exc:
        raise StateDirError(f"{directory}: cannot write there: {exc.strerror or exc}") from exc
    os.close(fd)
    os.unlink(probe)
