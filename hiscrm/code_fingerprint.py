"""Which source files a process runs, and whether the disk still holds the same code.

A process lists the files of every module it has imported from the project and from
platform packages (the standard library and site-packages are left out, except ``hiscrm``
itself and packages named in ``code.packages``), each with its size, mtime and a content
hash; ``code_version`` is a short hash over the set. Comparing with the disk costs a
``stat`` per file; a file is read and hashed again only when its size or mtime moved.
"""

import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class CodeFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int
    mtime_ns: int
    sha256: str


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(os.path.join(os.path.realpath(root), "") for root in roots)


def _hash(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def describe(path: str) -> CodeFile:
    """The file as it is on disk now (OSError if it cannot be read)."""
    stat = os.stat(path)
    return CodeFile(path=path, size=stat.st_size, mtime_ns=stat.st_mtime_ns, sha256=_hash(path))


def loaded_files(extra_packages: Iterable[str] = ()) -> list[CodeFile]:
    """The project's and platforms' source files this process has imported."""
    roots = _library_roots()
    wanted = {"hiscrm", *extra_packages}
    paths: set[str] = set()
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = os.path.realpath(file)
        if name.partition(".")[0] in wanted or not path.startswith(roots):
            paths.add(path)
    files = []
    for path in sorted(paths):
        try:
            files.append(describe(path))
        except OSError:  # a module loaded from a file that is gone: it cannot match the disk
            files.append(CodeFile(path=path, size=-1, mtime_ns=-1, sha256="missing"))
    return files


def code_version(files: Iterable[CodeFile]) -> str:
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.path):
        digest.update(f"{file.path}\0{file.sha256}\n".encode())
    return digest.hexdigest()[:12]


class DiskCheck:
    """Compares fingerprints with the disk; remembers hashes by (path, size, mtime)."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[str, int, int], str] = {}

    def changed(self, files: Iterable[CodeFile]) -> list[str]:
        """The files whose content on disk differs from the fingerprint (or are gone)."""
        out = []
        for file in files:
            try:
                stat = os.stat(file.path)
            except OSError:
                out.append(file.path)
                continue
            if (stat.st_size, stat.st_mtime_ns) == (file.size, file.mtime_ns):
                continue
            key = (file.path, stat.st_size, stat.st_mtime_ns)
            if key not in self._hashes:
                try:
                    self._hashes[key] = _hash(file.path)
                except OSError:
                    out.append(file.path)
                    continue
            if self._hashes[key] != file.sha256:
                out.append(file.path)
        return out
