"""Is the code a process runs still the code on disk? For status, metrics and --watch.

Workers report their fingerprint at registration; the master fingerprints itself at
start. Checks are cached for a second per fingerprint (the files a process imported, as
they were), so a status of many workers on the same code costs one ``stat`` per file.
The master's ``code_version`` is that of its workers on the same code
(``source_version``), whatever each imported.
"""

import time
from collections.abc import Iterable

from hiscrm.code_fingerprint import CodeFile, DiskCheck, loaded_files, source_version

CHECK_TTL_S = 1.0
MAX_CACHED = 256

Fingerprint = tuple[tuple[str, int, int, str], ...]


class CodeStatus:
    def __init__(self, packages: list[str], platform_specs: Iterable[str] = ()) -> None:
        self._disk = DiskCheck()
        self._checked: dict[Fingerprint, tuple[float, list[str]]] = {}
        self.master_files = loaded_files(packages)
        self.master_version = source_version(platform_specs, packages)

    def changed(self, version: str, files: list[CodeFile]) -> list[str]:
        """Files of this fingerprint that no longer match the disk. (``version`` names
        the code, not what a process imported of it.)"""
        now = time.monotonic()
        key = tuple((f.path, f.size, f.mtime_ns, f.sha256) for f in files)
        cached = self._checked.get(key)
        if cached is None or now - cached[0] > CHECK_TTL_S:
            cached = (now, self._disk.changed(files))
            if len(self._checked) >= MAX_CACHED:  # fingerprints of processes long gone
                self._checked = {
                    k: v for k, v in self._checked.items() if now - v[0] <= CHECK_TTL_S
                }
            self._checked[key] = cached
        return cached[1]

    def master_changed(self) -> list[str]:
        return self.changed(self.master_version, self.master_files)
