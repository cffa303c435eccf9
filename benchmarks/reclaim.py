"""Reclaim on real Ray (issue 16): how long an owner waits for a borrower to give its GPU back.

    python benchmarks/reclaim.py                 # local Ray, 8 logical GPUs; 5 reclaims of each kind
    python benchmarks/reclaim.py --rounds 10

One grant of 2 GPUs (every other GPU held by a filler grant, so only the grant's own idle
GPU can be lent) runs a chain ``narrow → wide → narrow → wide …``: while a one-GPU ``narrow``
runs, the grant's second GPU idles and is lent to a best-effort task; when it ends, ``wide``
needs both. ``reclaim_s`` is measured from the tick that asks the borrower to leave (SIGTERM)
to the tick that launches ``wide`` (the borrower gone, the owner's rank worker started again
on that GPU): the owner's whole wait. Two borrowers: one that exits at SIGTERM
(``cooperative``) and one that ignores it (``stubborn``: SIGKILL at ``lend_grace_s``, 2 s
here). Prints one JSON object with p50/p95 per kind.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
LEND_GRACE = 2

CLUSTER = f"""
admins = ["root-admin"]
[policy]
grace_s = 2
lend_grace_s = {LEND_GRACE}
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 8
gpus_per_node = 8
[[teams]]
name = "interp"
members = ["alice"]
allowance_gpu_hours = 1000
[[teams]]
name = "evals"
members = ["carol"]
allowance_gpu_hours = 10
best_effort_gpu_hours = 100
"""


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def measure(kind: str, rounds: int, work: Path) -> list[float]:
    from sqlmodel import select

    from cellsched import service
    from cellsched.executor import RayExecutor
    from cellsched.ledger.tables import BestEffortTaskRow, JobRunRow
    from cellsched.receipt import create_keys, key_paths
    from cellsched.runtime.clock import now_s
    from cellsched.runtime.reconciler import Reconciler, Settings
    from cellsched.spec.models import ProjectSpec

    work.mkdir(parents=True)
    path = work / "cluster.toml"
    path.write_text(CLUSTER)
    create_keys(*key_paths(path))
    env = service.open_env(path, f"sqlite:///{work / 'ledger.db'}")
    ex = RayExecutor(peer_grace_s=1.0)
    rec = Reconciler(env, ex, settings=Settings(notify_in_background=False, logs_root=work / "logs", lend_min_run_s=1))
    now = now_s()

    def spec(data: dict) -> ProjectSpec:  # type: ignore[type-arg]
        return ProjectSpec.model_validate({"owner": "alice", "problem": "reclaim", **data})

    hold = [PY, "-c", "import time; time.sleep(600)"]
    jobs = []
    for i in range(rounds):
        jobs.append({"name": f"narrow{i}", "gpus": 1, "run": [PY, "-c", "import time; time.sleep(3)"],
                     "after": [f"wide{i - 1}"] if i else []})
        jobs.append({"name": f"wide{i}", "gpus": 2, "run": "true", "after": [f"narrow{i}"]})
    for name, width, js in (("filler", 6, [{"name": "hold", "gpus": 6, "run": hold}]), ("owner", 2, jobs)):
        out = service.submit(env, spec({"name": name, "team": "interp",
                                        "budget": {"gpu_hours": width * 0.5, "gpus": width, "pool": "h100"},
                                        "jobs": js}), "alice", now)
        assert out.granted, out.to_json()
    body = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
            if kind == "stubborn" else "import time; time.sleep(600)")
    out = service.submit(env, spec({"name": "sweep", "team": "evals", "owner": "carol", "kind": "best-effort",
                                    "budget": {"gpu_hours": 10, "gpus": 1, "pool": "h100"},
                                    "jobs": [{"name": "trial", "gpus": 1, "run": [PY, "-c", body],
                                              "count": rounds}]}), "carol", now)
    assert out.best_effort is not None
    waits: list[float] = []
    asked: float | None = None
    seen = 0
    deadline = time.monotonic() + 60 * rounds
    try:
        while seen < rounds and time.monotonic() < deadline:
            rec.tick()
            with env.ledger.read() as s:
                leaving = any(t.state == "preempting" for t in s.exec(select(BestEffortTaskRow)).all())
                wides = len(s.exec(select(JobRunRow).where(JobRunRow.job.startswith("wide"))).all())  # type: ignore[attr-defined]
            if leaving and asked is None:
                asked = time.monotonic()
            if wides > seen:
                if asked is not None:
                    waits.append(time.monotonic() - asked)
                asked, seen = None, wides
            time.sleep(0.05)
    finally:
        for name in ex.reservations():
            if name.startswith(rec.prefix):
                ex.release(name)
        env.ledger.dispose()
    return waits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from cellsched.executor.testing import start_local_ray

    if not ray.is_initialized():
        start_local_ray()
    out: dict = {"rounds": args.rounds, "lend_grace_s": LEND_GRACE}  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("cooperative", "stubborn"):
            waits = measure(kind, args.rounds, Path(tmp) / kind)
            out[kind] = {"reclaim_s_p50": round(statistics.median(waits), 2) if waits else None,
                         "reclaim_s_p95": round(pct(waits, 95), 2) if waits else None, "n": len(waits)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
