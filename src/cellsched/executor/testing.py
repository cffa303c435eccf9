"""Pytest fixtures for tests that need a real local Ray (imports pytest; tests only).

Reuse from any test package by importing the fixtures into its ``conftest.py``::

    from cellsched.executor.testing import ray_cluster, ray_leak_check  # noqa: F401

and mark the tests ``@pytest.mark.ray`` and use ``ray_leak_check`` (or ``ray_cluster``).
One local Ray is started per test process (≈5–7 s), shared by every conftest that imports
these fixtures, and shut down at exit. ``ray_leak_check`` fails a test that leaves any GPU
reserved, polling because ``available_resources()`` is eventually consistent (settles in
tens of ms).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest

T = TypeVar("T")

GPUS = 8
CPUS = 2
NAMESPACE = "cellsched"
LEAK_DEADLINE_S = 10.0


def start_local_ray() -> Any:
    """Start (once per process) the local Ray used by tests; returns the ray module."""
    # Ray 2.60 enables token auth by default and writes a token under the home directory.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if not ray.is_initialized():
        ray.init(
            # "local": always a new cluster of our own. Without it ray.init attaches to any
            # cluster another process started on this machine (ray start, or a test's
            # ray.cluster_utils.Cluster) and refuses num_cpus/num_gpus.
            address="local",
            num_cpus=CPUS,
            num_gpus=GPUS,
            include_dashboard=False,
            log_to_driver=False,
            namespace=NAMESPACE,
        )
        atexit.register(ray.shutdown)
    return ray


def start_two_node_ray(gpus_per_node: int = 4) -> tuple[Any, list[Any]]:
    """A ``ray.cluster_utils.Cluster`` of a GPU-less head and two nodes of ``gpus_per_node``
    GPUs, joined by ``ray.init``; returns (cluster, [node, node]). Health checks are tuned so
    that a crashed node is declared dead in ~2 s instead of ~15 s. For node-loss tests, each
    in a subprocess of its own (the session's Ray stays untouched)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=gpus_per_node) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    return cluster, nodes


def no_cellsched_dir(root: Path) -> Path:
    """A directory holding a ``cellsched`` package whose import fails: put first on a Ray
    node's ``PYTHONPATH``, it makes that node one where cellsched is not installed (any import
    of it that does not come from the package the daemon ships fails loudly)."""
    pkg = root / "no-cellsched" / "cellsched"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(
        'raise ImportError("cellsched is not installed on this node")\n')
    return pkg.parent


def start_labelled_ray(
    nodes: list[tuple[int, dict[str, str]]], root: Path, *, bare: bool = True,
) -> tuple[Any, list[Any]]:
    """A ``ray.cluster_utils.Cluster``: a GPU-less head (health checks tuned as in
    ``start_two_node_ray``) and one node per ``(gpus, labels)`` of ``nodes``, joined by
    ``ray.init``. Each node gets its own node-local directory ``root/node-<i>``
    (``CELLSCHED_NODE_DIR``) and, with ``bare``, a ``PYTHONPATH`` on which cellsched cannot be
    imported (``no_cellsched_dir``): only Ray is "installed" there. Returns (cluster, nodes)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "num_gpus": 0,
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 3}})
    poison = str(no_cellsched_dir(root)) if bare else None
    added = []
    for i, (gpus, labels) in enumerate(nodes):
        env = {"CELLSCHED_NODE_DIR": str(root / f"node-{i}")}
        if poison:
            env["PYTHONPATH"] = poison
        added.append(cluster.add_node(num_cpus=1, num_gpus=gpus, labels=dict(labels),
                                      env_vars=env))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
    return cluster, added


def run_cluster_script(script: str, *args: str, timeout: float = 240) -> dict[str, Any]:
    """Run ``script`` (Python source that builds a cluster, e.g. with ``start_labelled_ray``,
    and prints one line ``RESULT <json>``) in a subprocess of its own, so the session's Ray
    is untouched; returns the decoded JSON (fails with the script's stderr if it failed)."""
    import json

    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    p = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                       check=False, timeout=timeout, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    (line,) = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    out: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return out


def wait_gpus_free(ray: Any, expected: float = GPUS, deadline_s: float = LEAK_DEADLINE_S) -> float:
    """Poll until ``available_resources()["GPU"] == expected``; returns the last value seen."""
    end = time.monotonic() + deadline_s
    while True:
        free = ray.available_resources().get("GPU", 0.0)
        if free == expected or time.monotonic() > end:
            return free
        time.sleep(0.02)


def until(fn: Callable[[], T], timeout: float = 15.0, every: float = 0.01) -> T:
    """Poll ``fn`` until it returns something truthy; fail after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > end:
            assert v, f"timed out after {timeout}s"
            return v
        time.sleep(every)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or gone between open and read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# A job whose grandchild escapes every process group: it calls setsid(), double-forks,
# ignores SIGTERM and writes its pid to argv[1]; the job's main process ignores SIGTERM too.
ESCAPING_JOB = """
import os, signal, sys, time
pidfile = sys.argv[1]
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        tmp = f"{pidfile}.{os.getpid()}.tmp"  # one per grandchild: every rank runs this job
        with open(tmp, "w") as f:
            f.write(str(os.getpid()))
        os.rename(tmp, pidfile)
        while True:
            time.sleep(0.05)
    os._exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
while True:
    time.sleep(0.05)
"""


def escaping_job(tmp: Path) -> tuple[list[str], Path]:
    """``ESCAPING_JOB`` written under ``tmp``: (argv to run it, where its grandchild's pid goes)."""
    script = tmp / "escape.py"
    script.write_text(ESCAPING_JOB)
    pidfile = tmp / "grandchild.pid"
    return [sys.executable, str(script), str(pidfile)], pidfile


def grandchild_pid(pidfile: Path) -> int:
    """The escaping grandchild's pid, once it has written it."""
    until(lambda: pidfile.exists())
    return int(pidfile.read_text())


@contextlib.contextmanager
def lock_held(path: Path) -> Iterator[int]:
    """Another process holds ``flock(LOCK_EX)`` on ``path`` (created) until the block ends;
    yields its pid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    code = (f"import fcntl, os, time\nfd = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """The session's local Ray (8 logical GPUs, 2 CPUs, namespace "cellsched")."""
    yield start_local_ray()


@pytest.fixture
def ray_leak_check(ray_cluster: Any) -> Iterator[Any]:
    """Yields ray; after the test, fails unless every GPU is free again."""
    yield ray_cluster
    free = wait_gpus_free(ray_cluster)
    assert free == GPUS, f"GPU leak: {free} of {GPUS} GPUs free after the test"
