"""Lending idle GPUs to best-effort work (issue 16): utilisation with and without lending.

    python benchmarks/lending.py                          # itp.csv, 1,100 GPUs on nodes of 8, share 0.3
    python benchmarks/lending.py --jobs 5000 --verify     # a prefix, and check the guaranteed starts

Two replays of the same trace through the ``cellsched`` policy, on the cluster of
``examples/sim-cluster.toml`` (1,100 GPUs, nodes of 8; ``--gpus`` to resize):

- **all guaranteed**: every job a one-job project with a window (the ordinary replay);
- **lending**: a seeded share of the jobs (``--share``, ``--seed``) best-effort, the rest
  guaranteed; the best-effort jobs run on idle GPUs and are preempted when a guaranteed job
  needs them, under each ``--checkpoints`` interval (one guaranteed replay, lent under each).

Both also report what happened **within the trace's span** (first to last submission, the
59.9 days of itp.csv; the tail after it is the backlog draining on an idle cluster):
utilisation, GPU-hours of work completed, and of it the work of the jobs that are
best-effort in the lending replay (in the all-guaranteed one, the same jobs as guaranteed
ones), with that share by job width.

``--verify`` also replays the trace with the best-effort rows removed, read back from a CSV
file, and checks every guaranteed job starts (and is promised, and placed) exactly as in the
lending replay. Prints one JSON object; CPU seconds by ``time.process_time``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from cellsched.sim.engine import Engine
from cellsched.sim.lending import lend
from cellsched.sim.metrics import summarise_lending
from cellsched.sim.policies import make
from cellsched.sim.run import replay
from cellsched.sim.setup import build_setup
from cellsched.sim.trace import load_trace, mark_best_effort
from cellsched.spec.load import load_cluster

REPO = Path(__file__).resolve().parents[1]
ITP = REPO.parent / "shared" / "traces" / "itp.csv"
CLUSTER = REPO / "examples" / "sim-cluster.toml"
KEYS = ("utilisation", "utilisation_guaranteed", "useful_utilisation", "makespan_s", "done", "refused",
        "wait_mean_s", "wait_p50_s", "wait_p95_s", "wait_p99_s", "promise_kept", "guarantee_breaches",
        "best_effort_jobs", "best_effort_done", "best_effort_completed_gpu_hours", "best_effort_held_gpu_hours",
        "lost_gpu_hours", "preemptions", "preempted_jobs", "best_effort_wait_mean_s", "best_effort_wait_p50_s",
        "best_effort_wait_p95_s", "best_effort_turnaround_p50_s", "best_effort_turnaround_p95_s")


def pick(m: dict[str, object]) -> dict[str, object]:
    return {k: m[k] for k in KEYS if k in m}


def in_span(engine: Engine, runs: list[tuple[int, int, int]], done: list[tuple[int, int, int, bool]],
            lo: int, hi: int) -> dict[str, object]:
    """Within [lo, hi): utilisation of ``engine``'s guaranteed jobs plus ``runs`` (gpus, start,
    stop) of best-effort work; GPU-hours completed by ``hi`` of the guaranteed jobs and of
    ``done`` (gpus, work, end, marked); the marked jobs' completed share by width."""
    def clip(a: int, b: int) -> int:
        return max(0, min(b, hi) - max(a, lo))

    jobs = engine.jobs
    g_held = sum(j.gpus * clip(engine.start[j.seq], engine.end[j.seq]) for j in jobs if engine.start[j.seq] >= 0)
    b_held = sum(g * clip(a, b) for g, a, b in runs)
    cap = engine.capacity * (hi - lo)
    total = sum(g * w for g, w, end, _ in done if 0 <= end <= hi)
    marked = [(g, w, end) for g, w, end, m in done if m]
    by_width: dict[int, list[int]] = {}
    for g, w, end in marked:
        x = by_width.setdefault(g, [0, 0])
        x[0] += g * w
        x[1] += g * w if 0 <= end <= hi else 0
    return {
        "span_s": hi - lo,
        "utilisation": round((g_held + b_held) / cap, 4),
        "utilisation_guaranteed": round(g_held / cap, 4),
        "completed_gpu_hours": round(total / 3600),
        "marked_completed_gpu_hours": round(sum(g * w for g, w, end in marked if 0 <= end <= hi) / 3600),
        "marked_gpu_hours": round(sum(g * w for g, w, _ in marked) / 3600),
        "marked_completed_share_by_width": {str(g): round(x[1] / x[0], 3) for g, x in sorted(by_width.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=ITP)
    ap.add_argument("--cluster", type=Path, default=CLUSTER)
    ap.add_argument("--gpus", type=int, default=None, help="one pool of N GPUs (default: the cluster file's)")
    ap.add_argument("--jobs", type=int, default=0, help="only the first N jobs of the trace (0: all)")
    ap.add_argument("--share", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--widest", type=int, default=None, help="draw the best-effort jobs among those of at most "
                                                              "this many GPUs (default: all jobs)")
    ap.add_argument("--skip-all-guaranteed", action="store_true", help="only the lending replay")
    ap.add_argument("--checkpoints", type=int, nargs="+", default=[0, 1800], help="checkpoint intervals, s (0: none)")
    ap.add_argument("--verify", action="store_true", help="check the guaranteed starts against the trace without "
                                                          "the best-effort rows (one more replay)")
    args = ap.parse_args()

    tr = load_trace(args.trace)
    if args.jobs:
        tr.jobs = tr.jobs[:args.jobs]
    config = load_cluster(args.cluster)
    out: dict[str, object] = {
        "machine": f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}",
        "trace": args.trace.name + (f" (first {len(tr.jobs):,} jobs)" if args.jobs else ""),
        "jobs": len(tr.jobs),
        "best_effort_share": args.share,
        "seed": args.seed,
        "best_effort_widest": args.widest,
    }

    lo, hi = tr.jobs[0].submit, tr.jobs[-1].submit
    mixed = mark_best_effort(tr, args.share, args.seed, args.widest)
    marked = {j.job_id for j in mixed.jobs if j.best_effort}
    base = build_setup(tr, config, args.gpus)
    out["gpus"] = base.gpus
    out["gpus_per_node"] = base.nodes.pools[0][3]
    if not args.skip_all_guaranteed:
        t0 = time.process_time()
        r = replay(base, "cellsched")
        out["all_guaranteed"] = {**pick(r.metrics), "cpu_s": round(time.process_time() - t0, 2)}
        e = r.engine
        out["all_guaranteed"]["in_trace_span"] = in_span(
            e, [], [(j.gpus, j.run, e.end[j.seq], j.job_id in marked) for j in e.jobs], lo, hi)
        print(f"all guaranteed: {out['all_guaranteed']['cpu_s']} s CPU", file=sys.stderr, flush=True)

    g = build_setup(mixed, config, args.gpus).guaranteed()
    t0 = time.process_time()
    engine = Engine(g.trace.jobs, g.gpus, make("cellsched", g), g.nodes)
    engine.run()
    g_cpu = time.process_time() - t0
    print(f"guaranteed share: {g_cpu:.2f} s CPU", file=sys.stderr, flush=True)
    be = mixed.best_effort_jobs()
    lending = {}
    for c in args.checkpoints:
        t0 = time.process_time()
        lent = lend(engine, be, g.nodes, c)
        cpu = time.process_time() - t0
        runs = [(lent.jobs[i].gpus, a, b) for i, a, b, _, _ in lent.segments]
        done = [(j.gpus, j.run, engine.end[j.seq], False) for j in engine.jobs]
        done += [(j.gpus, j.run, lent.done_at[i], True) for i, j in enumerate(lent.jobs)]
        lending[str(c)] = {**pick(summarise_lending(engine, g, lent, 0.0)), "guaranteed_cpu_s": round(g_cpu, 2),
                           "lending_cpu_s": round(cpu, 2), "in_trace_span": in_span(engine, runs, done, lo, hi)}
        print(f"lent, checkpoint {c} s: {cpu:.2f} s CPU", file=sys.stderr, flush=True)
    out["lending_by_checkpoint_interval_s"] = lending

    if args.verify:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "guaranteed.csv"
            with path.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["job_id", "submit_s", "duration_s", "gpus", "team", "requested_s"])
                for j in mixed.jobs:
                    if not j.best_effort:
                        w.writerow([j.job_id, j.submit, j.duration, j.gpus, j.team, j.requested])
            alone = replay(build_setup(load_trace(path), config, args.gpus), "cellsched").engine
        same = ([j.job_id for j in alone.jobs] == [j.job_id for j in engine.jobs] and alone.start == engine.start
                and alone.promised == engine.promised and alone.placed == engine.placed)
        out["verified_guaranteed_starts"] = {"jobs": len(alone.jobs), "identical": same}
        print(f"verify: {len(alone.jobs):,} guaranteed jobs, identical = {same}", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
