"""Simulator speed: jobs replayed per second, per policy, and how time grows with trace size.

    python benchmarks/simulate.py                 # 10k, 30k, 100k jobs on 1,000 GPUs
    python benchmarks/simulate.py --sizes 10000 --policies easy cellsched

Traces are drawn from ``../shared/traces/itp.csv`` when it is there (jobs resampled with a
fixed seed: real widths, durations and teams), else from a seeded synthetic mix with the same
shape. Arrivals are Poisson at a rate that offers ``--load`` (default 0.9) of the GPUs, so the
queue neither empties nor grows without bound: the trace's size, not its congestion, is what
changes between sizes. Prints one JSON object: ``jobs_per_s`` per policy (at the largest
size), seconds per size, and the fitted exponent of time against size (1.0 is linear; n log n
over 10k..100k fits about 1.1; n^2 would be 2). ``cellsched`` uses the default pull-forward
rule (``hold_when_busy``); ``--pull-forward start_now``, ``hold_oldest`` or ``compact`` measures another. Every policy places
jobs on nodes of ``--per-node`` GPUs (default 8); ``--per-node 0`` makes the pool one node,
the flat calendar.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path

from cellsched.sim.run import replay
from cellsched.sim.setup import build_setup
from cellsched.sim.trace import Trace, TraceJob, load_trace
from cellsched.spec.cluster import PULL_FORWARD_RULES, ClusterConfig, Policy, Pool

ITP = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "itp.csv"


def pool_of_jobs(seed: int) -> tuple[str, list[tuple[int, int, str]]]:
    """(source, [(duration, gpus, team)]) to draw from."""
    if ITP.exists():
        tr = load_trace(ITP)
        return "itp.csv resampled", [(j.duration, j.gpus, j.team) for j in tr.jobs]
    rnd = random.Random(seed)
    widths = [1] * 830 + [2] * 20 + [4] * 35 + [8] * 100 + [16] * 10 + [32] * 4 + [64] * 1
    out = []
    for _ in range(50_000):
        d = max(600, int(rnd.lognormvariate(8.3, 1.6)))
        out.append((min(d, 30 * 86400), rnd.choice(widths), f"team{rnd.randint(1, 10):02d}"))
    return "synthetic", out


def make_trace(n: int, gpus: int, load: float, seed: int, source: list[tuple[int, int, str]]) -> Trace:
    rnd = random.Random(seed * 1_000_003 + n)
    picks = [source[rnd.randrange(len(source))] for _ in range(n)]
    mean_gs = sum(d * g for d, g, _ in picks) / n
    rate = load * gpus / mean_gs  # jobs per second
    t = 0.0
    jobs = []
    for i, (d, g, team) in enumerate(picks):
        t += rnd.expovariate(rate)
        jobs.append(TraceJob(i, f"b{i}", int(t), d, min(g, gpus), team, math.ceil(d * 1.5)))
    return Trace(f"bench-{n}", jobs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000])
    ap.add_argument("--policies", nargs="+", default=["easy", "fifo", "quota", "cellsched"])
    ap.add_argument("--gpus", type=int, default=1000)
    ap.add_argument("--load", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pull-forward", choices=PULL_FORWARD_RULES,
                    default="hold_when_busy")
    ap.add_argument("--per-node", type=int, default=8, help="GPUs per node (0: one node, the flat calendar)")
    args = ap.parse_args()

    source, jobs = pool_of_jobs(args.seed)
    per_node = args.per_node or args.gpus
    # One node of more than 1,024 GPUs is past what a cluster file accepts: built directly.
    pool = Pool.model_construct(name="main", gpu_type="gpu", gpus=args.gpus, gpus_per_node=per_node)
    cluster = ClusterConfig.model_construct(pools=(pool,), teams=(), admins=(),
                                            policy=Policy(pull_forward=args.pull_forward))
    seconds: dict[str, dict[str, float]] = {p: {} for p in args.policies}
    quality: dict[str, dict[str, object]] = {p: {} for p in args.policies}
    for n in args.sizes:
        setup = build_setup(make_trace(n, args.gpus, args.load, args.seed, jobs), cluster)
        for p in args.policies:
            t0 = time.process_time()
            r = replay(setup, p)
            dt = time.process_time() - t0
            seconds[p][str(n)] = round(dt, 2)
            m = r.metrics
            quality[p][str(n)] = {k: m[k] for k in ("utilisation", "wait_mean_s", "promise_kept", "refused")}
            print(f"{p:>9} {n:>7,} jobs: {dt:7.2f} s CPU", file=sys.stderr, flush=True)
    big = str(max(args.sizes))
    small = str(min(args.sizes))
    out = {
        "machine": f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}",
        "trace": source,
        "gpus": args.gpus,
        "offered_load": args.load,
        "gpus_per_node": per_node,
        "pull_forward": args.pull_forward,
        "sizes": args.sizes,
        "jobs_per_s": {p: round(int(big) / max(seconds[p][big], 1e-9)) for p in args.policies},
        "seconds": seconds,
        "growth_exponent": {
            p: (round(math.log(seconds[p][big] / seconds[p][small]) / math.log(int(big) / int(small)), 2)
                if big != small and seconds[p][small] > 0 else None)
            for p in args.policies
        },
        "quality": quality,
        "timing": "process CPU seconds (time.process_time), so other load on the machine counts less",
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
