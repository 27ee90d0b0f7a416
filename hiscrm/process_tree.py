"""Walking and killing a tree of processes through /proc (Linux; standard library only).

A worker uses this to end every process it started, those that left its process group
(``setsid``, ``setpgid``) included, even from a signal handler: nothing here imports,
logs or takes a lock, and it reads /proc with plain ``os`` calls. The master uses it for
what a dead worker left behind.

Children are read from ``/proc/<pid>/task/<tid>/children`` (one file per thread, as a
child belongs to the thread that forked it); on kernels without that file, from the
parent pid of every process in /proc.
"""

import os
import signal

_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")
MAX_KILL_PASSES = 100  # each pass finds what was forked before the previous one's kills


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None if the
    process is gone."""
    try:
        data = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].split()


def children(pid: int) -> list[int]:
    """The children of ``pid`` now (zombies included); empty if it is gone."""
    if not _CHILDREN_FILES:
        return _children_by_scan(pid)
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tasks:
        try:
            found += [int(child) for child in _read(f"/proc/{pid}/task/{tid}/children").split()]
        except OSError:  # the thread ended
            continue
    return found


def _children_by_scan(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None and len(fields) > 1 and int(fields[1]) == pid:
                found.append(int(name))
    return found


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` now, parents before their children."""
    found: list[int] = []
    seen = {pid}
    queue = [pid]
    while queue:
        for child in children(queue.pop(0)):
            if child not in seen:
                seen.add(child)
                found.append(child)
                queue.append(child)
    return found


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[:1] == [b"Z"]


def session_of(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[3]) if fields is not None and len(fields) > 3 else None


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (tells a reused pid apart)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def kill_descendants(pid: int, *, including_root: bool = False) -> list[int]:
    """SIGKILL every descendant of ``pid`` (and ``pid`` itself if ``including_root``), in
    whatever group or session each is, and look again until a pass finds nothing new (a
    process may fork while the walk runs; once killed, it forks no more). Returns the
    pids signalled.

    Orphans of a killed process go to the nearest child subreaper: a worker that kills its
    own descendants finds them again in the next pass; otherwise they are the
    subreaper's to find."""
    killed: list[int] = []
    done: set[int] = set()
    for _ in range(MAX_KILL_PASSES):
        found = descendants(pid)
        if including_root and pid not in done:
            found.insert(0, pid)
        fresh = [p for p in found if p not in done]
        if not fresh:
            break
        for child in fresh:
            done.add(child)
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(child)
    return killed
