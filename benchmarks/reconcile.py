"""Reconciler benchmark: one steady-state pass over 1,000 live grants, and one observation
of 200 live groups on a real Ray; prints one JSON object.

    python benchmarks/reconcile.py                  # SQLite ledger
    python benchmarks/reconcile.py --db postgres    # a fresh schema on the test PostgreSQL
    python benchmarks/reconcile.py --no-ray         # skip the real-Ray figure
    python benchmarks/reconcile.py --no-reconcile   # only the real-Ray figure
    python benchmarks/reconcile.py --check          # exit 1 if a figure misses its target

Figures:

- ``reconcile_pass_ms_p50`` / ``_p95`` / ``_max``: wall time of ``Reconciler.tick(now)`` on
  the in-memory twin (``MemoryExecutor``, virtual clock) with 1,000 grants in the ledger: 500
  whose window has started (group ready, one 1-GPU job running that never ends by itself)
  and 500 queued behind them (start ~10 h later). The clock moves 1 s per pass, so the passes
  have nothing to do but observe (every 10th also sweeps for orphaned groups). ``--passes``
  passes (50) after the warm-up ticks that reserve, activate and launch everything.
- ``observe_200_groups_s``: on a fresh local Ray (200 logical GPUs), 200 one-GPU groups
  reserved through ``RayExecutor`` and ready; then the wall time of one observation round of
  all of them, as the daemon makes it: ``reservation_state``, ``running`` and ``poll`` per
  group (median of ``--observe-rounds`` rounds, 3; ``observe_200_groups_s_first`` is the first). All
  groups are released afterwards. 200 groups are 200 rank worker processes: expect a minute
  or two to start them on 2 cores, and ~100 MB of memory each.

Targets (issue 11): ``reconcile_pass_ms_p50`` ≤ 50, ``observe_200_groups_s`` ≤ 1.
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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))

TARGETS = {"reconcile_pass_ms_p50": 50.0, "observe_200_groups_s": 1.0}
T0 = 1_800_000_000  # a fixed instant (2027) on the virtual clock
WINDOW_S = 10 * 3600
USER = "bench"

CLUSTER = f"""
admins = ["{USER}"]
[policy]
grace_s = 5
max_grant_hours = 336
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = {{gpus}}
gpus_per_node = 8
[[teams]]
name = "bench"
members = ["{USER}"]
allowance_gpu_hours = 100000000
period = "none"
"""


def spec(i: int) -> Any:
    from cellsched.spec.models import ProjectSpec

    return ProjectSpec.model_validate({
        "name": f"p{i:04d}", "team": "bench", "owner": USER, "problem": f"Benchmark grant {i}.",
        "budget": {"gpu_hours": WINDOW_S / 3600, "gpus": 1, "pool": "h100"},
        "jobs": [{"name": "train", "gpus": 1, "run": "true"}],
    })


def reconcile_pass(url: str | None, live: int, future: int, passes: int, work: Path) -> dict[str, Any]:
    from cellsched import service
    from cellsched.executor import Behaviour, MemoryExecutor
    from cellsched.receipt import create_keys, key_paths
    from cellsched.runtime.reconciler import Reconciler, Settings

    cluster = work / "cluster.toml"
    cluster.write_text(CLUSTER.format(gpus=live))  # `live` GPUs: the rest queue behind them
    create_keys(*key_paths(cluster))
    env = service.open_env(cluster, url or f"sqlite:///{work / 'ledger.db'}")
    try:
        t = time.monotonic()
        started = 0
        for i in range(live + future):
            out = service.submit(env, spec(i), USER, T0)
            assert out.granted and out.grant is not None, out.refusal
            started += out.grant.start <= T0
        submit_s = time.monotonic() - t
        assert started == live, f"{started} grants start now, expected {live}"

        ex = MemoryExecutor(lambda gang: Behaviour(duration=None), now=T0)
        rec = Reconciler(env, ex, clock=lambda: int(ex.now),
                         settings=Settings(notify_in_background=False, logs_root=work / "logs"))
        now = T0
        t = time.monotonic()
        warm = 0
        while True:  # reserve, activate, launch: until a pass does nothing
            warm += 1
            res = rec.tick(now)
            if not res.actions and warm > 1:
                break
            assert warm < 20, res.actions[:5]
            now += 1
            ex.advance(now)
        warm_s = time.monotonic() - t
        running = sum(len(ex.running(n)) for n in ex.reservations())
        assert running == live, f"{running} jobs running, expected {live}"

        ms, busy = [], 0
        for _ in range(passes):
            now += 1
            ex.advance(now)
            t = time.perf_counter()
            res = rec.tick(now)
            ms.append((time.perf_counter() - t) * 1000)
            busy += bool(res.actions)
        return {
            "reconcile_pass_ms_p50": round(statistics.median(ms), 2),
            "reconcile_pass_ms_p95": round(statistics.quantiles(ms, n=20)[18], 2),
            "reconcile_pass_ms_max": round(max(ms), 2),
            "reconcile_passes": passes,
            "reconcile_passes_that_acted": busy,
            "reconcile_live_grants": live,
            "reconcile_future_grants": future,
            "reconcile_setup_submit_s": round(submit_s, 1),
            "reconcile_warmup_s": round(warm_s, 2),
            "reconcile_warmup_ticks": warm,
        }
    finally:
        env.ledger.dispose()


def mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def observe_groups(n: int, rounds: int, work: Path) -> dict[str, Any]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from cellsched.executor import RayExecutor

    t = time.monotonic()
    # Logical CPUs beyond the machine's only raise how many rank workers Ray starts at once.
    ex = RayExecutor(address="local", ray_init={"num_gpus": n, "num_cpus": 8, "include_dashboard": False,
                                                 "log_to_driver": False})
    ray_start_s = time.monotonic() - t
    names = [f"cellsched/bench-{uuid.uuid4().hex[:6]}/p{i:03d}/g{i}" for i in range(n)]
    try:
        t = time.monotonic()
        for name in names:
            ex.reserve(name, 1)
        pending = set(names)
        deadline = time.monotonic() + 600
        while pending:
            assert time.monotonic() < deadline, f"{len(pending)} of {n} groups not ready after 600 s"
            # every group is a rank worker process: stop before the machine runs out of memory
            assert mem_available_gb() > 1.5, f"under 1.5 GB of memory left with {n - len(pending)} groups ready"
            pending = {x for x in pending if ex.reservation_state(x) != "ready"}
            if pending:
                time.sleep(0.5)
        ready_s = time.monotonic() - t
        took = []
        for _ in range(rounds):
            t = time.perf_counter()
            for name in names:
                ex.reservation_state(name)
                ex.running(name)
                ex.poll(name)
            took.append(time.perf_counter() - t)
        return {
            f"observe_{n}_groups_s": round(statistics.median(took), 3),
            f"observe_{n}_groups_s_first": round(took[0], 3),
            "observe_ray_start_s": round(ray_start_s, 1),
            "observe_groups_ready_s": round(ready_s, 1),
        }
    finally:
        for name in names:
            try:
                ex.release(name, settle_s=0)
            except Exception as e:  # noqa: BLE001 - best effort; the local Ray goes away below
                print(f"release {name}: {e!r}", file=sys.stderr)
        ray.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--live", type=int, default=500, help="grants whose window has started (500)")
    ap.add_argument("--future", type=int, default=500, help="grants queued behind them (500)")
    ap.add_argument("--passes", type=int, default=50)
    ap.add_argument("--groups", type=int, default=200, help="live groups to observe on real Ray (200)")
    ap.add_argument("--observe-rounds", type=int, default=3)
    ap.add_argument("--no-ray", action="store_true", help="skip the real-Ray figure")
    ap.add_argument("--no-reconcile", action="store_true", help="only the real-Ray figure")
    ap.add_argument("--check", action="store_true", help="exit 1 if a figure misses its target")
    a = ap.parse_args()

    from chaos_harness import fresh_pg_url

    figures: dict[str, Any] = {"db": a.db}
    with tempfile.TemporaryDirectory(prefix="cellsched-bench-") as tmp:
        work = Path(tmp)
        if not a.no_reconcile:
            with fresh_pg_url() if a.db == "postgres" else nullcontext(None) as url:
                figures.update(reconcile_pass(url, a.live, a.future, a.passes, work))
        if not a.no_ray:
            figures.update(observe_groups(a.groups, a.observe_rounds, work))
    print(json.dumps(figures))
    if a.check:
        missed = [k for k, v in TARGETS.items() if k in figures and figures[k] > v]
        if missed:
            print(f"missed targets: {', '.join(f'{k} {figures[k]} > {TARGETS[k]}' for k in missed)}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
