"""A job's sealed Python requirements: one virtual environment per lock file and node.

A spec's ``code.requirements`` names a hash-pinned lock file inside the code snapshot
(``spec/code.lock_problem`` refused anything less at submit). On each node that runs the
job, ``ensure`` makes ``<node_dir>/envs/<key>``: a venv of the worker's own Python with its
site packages visible (Ray and whatever the node has), into which the worker's pip
(``pip --python <venv> install --require-hashes -r <lock>``) installs exactly what the lock
pins. ``key`` is
the lock file's SHA-256 and the Python version, so every job with the same lock on the
node shares one environment. The job then runs with that venv's ``bin`` first on ``PATH``
and ``VIRTUAL_ENV`` set: ``python`` in its command is the environment's.

The node needs a package index it can reach (or a ``--find-links`` in the lock file): the
hashes say what may be installed, not where it comes from. pip's output goes to the job's
log. Building runs under an exclusive lock (one rank per node builds, the others wait), in
the final directory, and is marked complete only at the end (a venv cannot be moved): an
incomplete one left by a crash is removed and built again. Standard library only.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys

from . import _nodecache

COMPLETE = ".cellsched-complete"
PIP_TIMEOUT_S = 1800


class EnvError(Exception):
    """The environment could not be made (the message says why; pip's output is in the log)."""


def key_for(lock: bytes) -> str:
    v = sys.version_info
    return f"{hashlib.sha256(lock).hexdigest()[:32]}-py{v.major}{v.minor}"


def ready(envs: str, key: str) -> str | None:
    if not key:
        return None
    path = os.path.join(envs, key)
    return path if os.path.exists(os.path.join(path, COMPLETE)) else None


def ensure(code_dir: str, lock_rel: str, envs: str, log: str) -> tuple[str, str]:
    """The environment for the lock file ``lock_rel`` of the snapshot at ``code_dir``, and
    ``"cached"`` or ``"built"``. Raises :class:`EnvError`."""
    lock_file = os.path.join(code_dir, *lock_rel.split("/"))
    try:
        with open(lock_file, "rb") as f:
            key = key_for(f.read())
    except OSError as e:
        raise EnvError(f"code.requirements: cannot read {lock_rel} in the snapshot ({e.strerror})") from None
    done = ready(envs, key)
    if done is not None:
        return done, "cached"
    os.makedirs(envs, exist_ok=True)
    with open(_nodecache.lock_path(envs, key), "a") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        done = ready(envs, key)
        if done is not None:
            return done, "cached"
        path = os.path.join(envs, key)
        shutil.rmtree(path, ignore_errors=True)  # a crashed build's remains
        os.makedirs(os.path.dirname(log) or ".", exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"cellsched: making the Python environment for {lock_rel} ({key})\n".encode())
            out.flush()
            # The worker's own pip installs into the venv (``--python``): no pip is copied
            # into every environment, which takes seconds.
            steps = (
                [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", path],
                [sys.executable, "-m", "pip", "--python", os.path.join(path, "bin", "python"), "install",
                 "--require-hashes", "--no-input", "--disable-pip-version-check", "-r", lock_file],
            )
            for argv in steps:
                try:
                    code = subprocess.run(argv, cwd=code_dir, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, timeout=PIP_TIMEOUT_S, check=False,
                                          env=_build_env()).returncode
                except (OSError, subprocess.TimeoutExpired) as e:
                    shutil.rmtree(path, ignore_errors=True)
                    raise EnvError(f"code.requirements: {argv[2]} failed: {e}") from None
                if code != 0:
                    shutil.rmtree(path, ignore_errors=True)
                    raise EnvError(f"code.requirements: `{' '.join(argv[1:3])}` exited {code} "
                                   "(its output is above in this log)")
        _see_worker_packages(path)
        with open(os.path.join(path, COMPLETE), "w"):
            pass
    return path, "built"


def _see_worker_packages(path: str) -> None:
    """Let the environment see the worker's own packages (Ray, and whatever the node has)
    after its own: ``--system-site-packages`` shows only the base interpreter's, and a worker
    that runs in a virtualenv has them there. Written after the install, so the lock's pins
    are always installed in the environment itself and come first on ``sys.path``."""
    import site
    import sysconfig

    mine = sysconfig.get_path("purelib", vars={"base": path, "platbase": path})
    dirs = [d for d in dict.fromkeys([*site.getsitepackages(), sysconfig.get_path("purelib")])
            if os.path.isdir(d) and os.path.realpath(d) != os.path.realpath(mine)]
    if dirs and os.path.isdir(mine):
        with open(os.path.join(mine, "_cellsched_worker.pth"), "w") as f:
            f.write("".join(d + "\n" for d in dirs))


def _build_env() -> dict[str, str]:
    """pip's environment: the worker's, without a virtualenv or PYTHONPATH of its own that
    would send the install elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_USER")}
    env["PIP_NO_INPUT"] = "1"
    return env


def activate(env: dict[str, str], path: str) -> None:
    """Make ``python`` in the job's command the environment's."""
    env["VIRTUAL_ENV"] = path
    env["PATH"] = os.path.join(path, "bin") + os.pathsep + env.get("PATH", os.defpath)
