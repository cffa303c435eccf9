"""A node's caches of unpacked code snapshots and Python environments: use and eviction.

Each cache is a directory of entries ``<cache>/<name>/`` (a snapshot's digest, or an
environment's key), each with two hidden files beside it: ``.<name>.lock``, which the
builder holds exclusively while making the entry and every job running in it holds shared
(``hold``), and ``.<name>.used``, whose mtime is the entry's last use (``touch``).

``evict`` removes least recently used entries until the cache is under its cap. An entry
a job is running in is never removed: its lock cannot be taken exclusively. The cap is
``$CELLSCHED_NODE_CACHE_GIB`` of the Ray node (default 20 GiB, per cache), read where the
rank runs. Standard library only: imported by Ray workers.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import time

DEFAULT_CAP_GIB = 20.0


def cap_bytes() -> int:
    try:
        gib = float(os.environ.get("CELLSCHED_NODE_CACHE_GIB", DEFAULT_CAP_GIB))
    except ValueError:
        gib = DEFAULT_CAP_GIB
    return int(gib * (1 << 30))


def lock_path(cache: str, name: str) -> str:
    return os.path.join(cache, f".{name}.lock")


def touch(cache: str, name: str) -> None:
    """Record a use of ``name`` now."""
    used = os.path.join(cache, f".{name}.used")
    try:
        with open(used, "a"):
            pass
        os.utime(used)
    except OSError:
        pass


def hold(cache: str, name: str) -> int | None:
    """Hold ``name`` against eviction (a shared lock) until ``os.close`` of the returned
    descriptor; also records the use. None if the lock file cannot be opened."""
    touch(cache, name)
    try:
        fd = os.open(lock_path(cache, name), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    return fd


def size_of(path: str) -> int:
    total = 0
    for d, _dirs, files in os.walk(path):
        for n in files:
            try:
                total += os.lstat(os.path.join(d, n)).st_size
            except OSError:
                pass
    return total


def _last_use(cache: str, name: str) -> float:
    for p in (os.path.join(cache, f".{name}.used"), os.path.join(cache, name)):
        try:
            return os.stat(p).st_mtime
        except OSError:
            continue
    return 0.0


def _writable(path: str) -> None:
    """Give back the write bits a read-only snapshot had taken off, so it can be removed."""
    for d, dirs, _files in os.walk(path):
        for n in dirs:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IRWXU)
    os.chmod(path, stat.S_IRWXU)


def evict(cache: str, cap: int | None = None, keep: str | None = None) -> list[str]:
    """Remove least recently used entries of ``cache`` until it holds at most ``cap`` bytes
    (default ``cap_bytes()``); never ``keep`` nor an entry in use. Returns the names removed."""
    cap = cap_bytes() if cap is None else cap
    try:
        names = [n for n in os.listdir(cache) if not n.startswith(".") and os.path.isdir(os.path.join(cache, n))]
    except OSError:
        return []
    sizes = {n: size_of(os.path.join(cache, n)) for n in names}
    total = sum(sizes.values())
    removed: list[str] = []
    for name in sorted(names, key=lambda n: _last_use(cache, n)):
        if total <= cap:
            break
        if name == keep:
            continue
        try:
            fd = os.open(lock_path(cache, name), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a job runs in it (or it is being built)
            path = os.path.join(cache, name)
            # Renamed away first: a rank looking for it now sees it absent and builds anew.
            gone = os.path.join(cache, f".evicted-{name}-{time.monotonic_ns()}")
            try:
                os.rename(path, gone)
            except OSError:
                continue
            _writable(gone)
            shutil.rmtree(gone, ignore_errors=True)
            for extra in (f".{name}.used",):
                try:
                    os.unlink(os.path.join(cache, extra))
                except OSError:
                    pass
            total -= sizes[name]
            removed.append(name)
        finally:
            os.close(fd)
    return removed
