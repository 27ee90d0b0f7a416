"""Which source files a process runs, and whether the disk still holds the same code.

A process lists the files of every module it has imported from the project and from
platform packages (the standard library and site-packages are left out, except ``hiscrm``
itself and packages named in ``code.packages``), each with its size, mtime and a content
hash: that tells whether it runs stale code. Comparing with the disk costs a ``stat`` per
file; a file is read and hashed again only when its size or mtime moved.

Its ``code_version`` does not come from that list, which differs by what each process
happened to import (the master imports its API, a template less than a worker, a worker
more as it runs): ``source_version`` hashes the files of the code itself, the same set
for every process of one master.
"""

import contextlib
import hashlib
import importlib.util
import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

import hiscrm

RACY_MARGIN_NS = 10_000_000  # file system timestamps can lag the clock by a tick


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
    cached: dict[str, str] = {}  # source path -> its bytecode cache
    real_dirs: dict[str, str] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = _realpath(file, real_dirs)
        if name.partition(".")[0] in wanted or not path.startswith(roots):
            paths.add(path)
            if isinstance(pyc := getattr(module, "__cached__", None), str):
                cached[path] = pyc
    files = []
    for path in sorted(paths):
        try:
            file = describe(path)
        except OSError:  # a module loaded from a file that is gone: it cannot match the disk
            file = CodeFile(path=path, size=-1, mtime_ns=-1, sha256="missing")
        if file.sha256 != "missing" and _racy(file, cached.get(path)):
            file = file.model_copy(update={"mtime_ns": -1, "sha256": "racy"})
        files.append(file)
    return files


def _realpath(file: str, real_dirs: dict[str, str]) -> str:
    """``os.path.realpath(file)``, each directory resolved once (``real_dirs``): a process
    has imported hundreds of modules from a few dozen directories."""
    directory, name = os.path.split(file)
    real_dir = real_dirs.get(directory)
    if real_dir is None:
        real_dir = real_dirs[directory] = os.path.realpath(directory)
    path = os.path.join(real_dir, name)
    return os.path.realpath(path) if os.path.islink(path) else path


def files_at(paths: Iterable[str]) -> list[CodeFile]:
    """Source files named by path, described as ``loaded_files`` describes them: for what a
    process tried to import and could not (a platform raising at import is not in
    ``sys.modules``, yet a change to its file must make the process stale). Files of the
    standard library and paths that are not ``.py`` files on disk are left out."""
    stdlib = _stdlib_roots()
    files = []
    for path in sorted({os.path.realpath(p) for p in paths if p.endswith(".py")}):
        if path.startswith(stdlib) or not os.path.isfile(path):
            continue
        try:
            file = describe(path)
        except OSError:  # gone since: it cannot match the disk
            file = CodeFile(path=path, size=-1, mtime_ns=-1, sha256="missing")
        if file.sha256 != "missing" and _racy(file, None):
            file = file.model_copy(update={"mtime_ns": -1, "sha256": "racy"})
        files.append(file)
    return files


def _stdlib_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib") if key in paths}
    return tuple(os.path.join(os.path.realpath(root), "") for root in roots)


def _racy(file: CodeFile, pyc: str | None) -> bool:
    """True if the process may run other code than the file holds now, so that the file
    must count as changed (the process is then stale, and replaced on the next start):
    the file was modified after the process began importing (it may have read the
    version before), or Python took a stale bytecode cache (``drop_stale_bytecode``)."""
    if file.mtime_ns >= hiscrm.IMPORTS_BEGAN_NS - RACY_MARGIN_NS:
        return True
    return pyc is not None and drop_stale_bytecode(file.path, pyc)


def drop_stale_bytecode(source: str, pyc: str | None = None) -> bool:
    """Remove the bytecode cache of ``source`` if Python would take it although it was
    written before the source's last change; True if it was there.

    A cache's header records the source's mtime in whole seconds and its size, so a
    same-size edit within the second of the previous one goes unnoticed by Python. The
    master calls this for every changed file before it starts a process on the new
    code; a process checks the files it imported (see ``_racy``)."""
    if pyc is None:
        try:
            pyc = importlib.util.cache_from_source(source)
        except (ValueError, NotImplementedError):
            return False
    try:
        with open(pyc, "rb") as f:
            header = f.read(16)
        pyc_mtime_ns = os.stat(pyc).st_mtime_ns
        stat = os.stat(source)
    except OSError:
        return False  # no cache (or no source): nothing stale to take
    if len(header) < 16 or int.from_bytes(header[4:8], "little") != 0:
        return False  # not a timestamp-checked cache
    recorded = (int.from_bytes(header[8:12], "little"), int.from_bytes(header[12:16], "little"))
    taken = recorded == (int(stat.st_mtime) & 0xFFFFFFFF, stat.st_size & 0xFFFFFFFF)
    if not (taken and pyc_mtime_ns < stat.st_mtime_ns):
        return False
    # Gone already (another process was first), or not ours to remove (read-only): then
    # processes keep counting the file as changed, which is the truth.
    with contextlib.suppress(OSError):
        os.unlink(pyc)
    return True


def code_roots(platform_specs: Iterable[str], packages: Iterable[str] = ()) -> dict[str, Path]:
    """What the code of a master and its workers is, by top-level name: hiscrm, the
    packages in ``code.packages`` and each platform's top-level package or module (as
    ``--watch`` watches them). Found on ``sys.path`` without importing anything."""
    names = {"hiscrm", *packages}
    names |= {spec.partition(":")[0].partition(".")[0] for spec in platform_specs if ":" in spec}
    roots = {"hiscrm": Path(hiscrm.__file__).resolve().parent}
    for name in sorted(names - {"hiscrm"}):
        try:
            spec = importlib.util.find_spec(name)  # a top-level name: nothing is imported
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        if spec.submodule_search_locations:
            for n, location in enumerate(spec.submodule_search_locations):
                roots[name if n == 0 else f"{name}#{n}"] = Path(location).resolve()
        elif spec.origin and spec.origin.endswith(".py"):
            roots[name] = Path(spec.origin).resolve()
    return roots


def source_version(platform_specs: Iterable[str], packages: Iterable[str] = ()) -> str:
    """A short hash of the source files of the code (``code_roots``): the same for every
    process on one checkout, however it started and whatever it imported; a change to any
    of those files gives a new one."""
    sources: dict[str, Path] = {}
    for name, root in code_roots(platform_specs, packages).items():
        if root.is_file():
            sources[f"{name}.py"] = root
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__pycache__")))
            for filename in filenames:
                if filename.endswith(".py"):
                    path = Path(dirpath, filename)
                    sources[f"{name}/{path.relative_to(root).as_posix()}"] = path
    digest = hashlib.sha256()
    for name, path in sorted(sources.items()):
        try:
            content = _hash(str(path))
        except OSError:  # gone since the walk, or unreadable: that too is what it is
            content = "missing"
        digest.update(f"{name}\0{content}\n".encode())
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
                if self._hashes[key] != file.sha256:  # newly seen to differ
                    drop_stale_bytecode(file.path)  # so the next process compiles it afresh
            if self._hashes[key] != file.sha256:
                out.append(file.path)
        return out
