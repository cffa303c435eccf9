"""Code shipping benchmark: a 50 MB code snapshot run by a 1-GPU grant on a worker node of
a real multi-node Ray; prints one JSON object.

    python benchmarks/ship.py            # ray.cluster_utils.Cluster on this host
    python benchmarks/ship.py --local    # one local Ray (as benchmarks/executor.py), one node
    python benchmarks/ship.py --check    # exit 1 if a figure misses its target

The cluster: a GPU-less head (the driver, as the daemon) and one worker node with 1 GPU, its
own node directory (so its own code cache) and no cellsched on its Python path (the rank
code is shipped as ``py_modules``, so each rank worker starts with a runtime_env: that
start dominates a grant's start here). ``--local``: a local Ray the driver starts (8 GPUs,
the daemon's own node, no ``py_modules``), with a fresh node directory. The tree is ``benchmarks/code_snapshot.py``'s (half
source-like text, half random bytes), packed by ``_codepack.pack`` before the clock starts.

Figures (seconds; median of ``--rounds`` rounds, 3; each round a fresh reservation):

- ``ship_s_first``: ``reserve`` of a 1-GPU grant → its rank's job process running, with a
  snapshot new to everyone (a fresh digest per round): ``ray.put`` of the bytes in the
  driver, the rank fetches them to its node, checks the digest, unpacks, makes it read-only.
- ``ship_s_cached``: the same with a snapshot the executor holds and the node has unpacked
  (the launch passes no bytes, the rank fetches nothing).
- ``ship_s_nocode``: the same for a gang without code (the baseline both include).
- ``launch_to_running_first_s`` / ``_cached_s``: from ``launch`` on the ready group to the
  job running: the code's own share.
- ``packed_mib``, ``content_mib``, ``pack_s`` (not in the figures above).

Targets (issue 12): ``ship_s_first`` ≤ 10, ``ship_s_cached`` ≤ 1. ``start_latency_p50_s``
for a project without code is ``benchmarks/executor.py``'s (single-host Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGETS = {"ship_s_first": 10.0, "ship_s_cached": 1.0}


def first_running(ex: Any, name: str, timeout: float = 60.0) -> float:
    """The job's own start (rank worker clock, same host) once its process runs."""
    import ray

    deadline = time.monotonic() + timeout
    h = ex._ranks(name)[0]
    while time.monotonic() < deadline:
        recs = ray.get(h.snapshot.remote())["records"]
        if recs and recs[0]["pid"] is not None:
            return float(recs[0]["started_at"])
        if recs and recs[0]["ended_at"] is not None:
            raise RuntimeError(f"the job ended without running: {recs[0]}")
        time.sleep(0.005)
    raise TimeoutError(name)


def one(ex: Any, logs: str, digest: str | None, blob: bytes | None) -> tuple[float, float]:
    from cellsched.executor import GangSpec

    name = f"cellsched/ship/{uuid.uuid4().hex[:8]}"
    t0 = time.time()
    ex.reserve(name, 1)
    while ex.reservation_state(name) != "ready":
        time.sleep(0.002)
    t1 = time.time()
    ex.launch(GangSpec(name, "p", "j", 0, ["sleep", "30"], [0], logs,
                       code_digest=digest, code_blob=blob))
    started = first_running(ex, name)
    ex.release(name)
    return started - t0, started - t1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--local", action="store_true", help="one local Ray instead of a head + worker")
    ap.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = ap.parse_args()

    from code_snapshot import make_tree

    from cellsched.executor import RayExecutor, _codepack
    from cellsched.executor.testing import start_labelled_ray

    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        cluster = None
        try:
            if args.local:
                os.environ["CELLSCHED_NODE_DIR"] = str(root / "node")  # the workers inherit it
                ex = RayExecutor(address="local", ray_init={
                    "include_dashboard": False, "log_to_driver": False, "num_cpus": 2, "num_gpus": 8})
            else:
                cluster, _ = start_labelled_ray([(1, {})], root / "nodes")
                ex = RayExecutor(ship=True)
            logs = str(root / "logs")
            tree = root / "tree"
            make_tree(tree, args.mib)
            one(ex, logs, None, None)  # warm-up: the shipped package, the first worker
            nocode = [one(ex, logs, None, None) for _ in range(args.rounds)]
            first, cached, pack_s = [], [], []
            for i in range(args.rounds):
                (tree / "round.txt").write_text(f"{uuid.uuid4()}\n")  # a new digest
                t = time.perf_counter()
                p = _codepack.pack_entries(_codepack.walk(tree))
                pack_s.append(time.perf_counter() - t)
                first.append(one(ex, logs, p.digest, p.blob))
                assert ex.has_code(p.digest)
                cached.append(one(ex, logs, p.digest, None))
            figures: dict[str, Any] = {
                "mib": args.mib,
                "rounds": args.rounds,
                "content_mib": round(p.content_bytes / 2**20, 1),
                "packed_mib": round(len(p.blob) / 2**20, 1),
                "pack_s": round(statistics.median(pack_s), 3),
                "ship_s_first": round(statistics.median(f[0] for f in first), 3),
                "ship_s_cached": round(statistics.median(c[0] for c in cached), 3),
                "ship_s_nocode": round(statistics.median(n[0] for n in nocode), 3),
                "launch_to_running_first_s": round(statistics.median(f[1] for f in first), 3),
                "launch_to_running_cached_s": round(statistics.median(c[1] for c in cached), 3),
                "launch_to_running_nocode_s": round(statistics.median(n[1] for n in nocode), 3),
                "code_puts": ex.code_puts,
                "cluster": "local" if args.local else "head + 1 worker node (py_modules)",
                "cpus": os.cpu_count(),
                "load_avg": round(os.getloadavg()[0], 2),
            }
        finally:
            import ray

            ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            for d, dirs, _ in os.walk(root):  # the code caches are read-only
                for n in dirs:
                    if not os.path.islink(os.path.join(d, n)):
                        os.chmod(os.path.join(d, n), 0o755)
    missed = {k: (figures[k], v) for k, v in TARGETS.items() if figures[k] > v}
    figures["targets_missed"] = missed
    print(json.dumps(figures))
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
