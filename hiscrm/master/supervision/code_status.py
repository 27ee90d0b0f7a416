"""Is the code a process runs still the code on disk? For status, metrics and --watch.

Workers report their fingerprint at registration; the master fingerprints itself at
start. Checks are cached for a second per code version, so a status of many workers on
the same code costs one ``stat`` per file.
"""

import time

from hiscrm.code_fingerprint import CodeFile, DiskCheck, code_version, loaded_files

CHECK_TTL_S = 1.0


class CodeStatus:
    def __init__(self, packages: list[str]) -> None:
        self._disk = DiskCheck()
        self._checked: dict[str, tuple[float, list[str]]] = {}
        self.master_files = loaded_files(packages)
        self.master_version = code_version(self.master_files)

    def changed(self, version: str, files: list[CodeFile]) -> list[str]:
        """Files of this code version that no longer match the disk."""
        now = time.monotonic()
        cached = self._checked.get(version)
        if cached is None or now - cached[0] > CHECK_TTL_S:
            cached = (now, self._disk.changed(files))
            self._checked[version] = cached
        return cached[1]

    def master_changed(self) -> list[str]:
        return self.changed(self.master_version, self.master_files)
