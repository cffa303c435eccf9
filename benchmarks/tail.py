"""Tail waits (issue 15, point 1): EASY against cellsched's pull-forward rules on itp.csv.

    python benchmarks/tail.py                            # every configuration, EASY + default rule
    python benchmarks/tail.py --rules start_now hold_oldest --configs 1100:1.5
    python benchmarks/tail.py --configs 1100:1.0 --per-node 0   # one node (the flat calendar)

A configuration is ``GPUS:FACTOR`` (nodes of ``--per-node`` GPUs, 8 by default, as
``examples/sim-cluster.toml``; requested run time = duration x FACTOR). For each it replays
EASY once and cellsched once per rule, and prints one JSON object: per configuration and
policy the utilisation, mean / p99 wait (hours), promise_kept and the replay's CPU seconds,
and per rule whether the issue's targets hold there (``meets``, with what misses by how
much). The targets: p99 <= EASY's, utilisation >= EASY's - 0.005, promise_kept 100%, mean
<= 0.6 x EASY's at factor >= 1.5 and <= 1,100 GPUs, else <= EASY's. A full itp.csv replay
takes 10-40 CPU s per policy: run it one configuration at a time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cellsched.sim.run import replay
from cellsched.sim.setup import build_setup
from cellsched.sim.trace import load_trace
from cellsched.spec.cluster import ClusterConfig, Policy, Pool

ITP = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "itp.csv"
CONFIGS = ["1000:1.5", "1100:1.5", "1200:1.5", "1100:1.0", "1100:3.0"]


def targets(gpus: int, factor: float, easy: dict, ours: dict) -> list[str]:
    """What misses the issue's point 1 at this configuration (empty: every target holds)."""
    miss = []
    if ours["promise_kept"] != 1.0:
        miss.append(f"promise_kept {ours['promise_kept']}")
    if ours["p99_h"] > easy["p99_h"]:
        miss.append(f"p99 +{ours['p99_h'] - easy['p99_h']:.1f} h")
    du = ours["utilisation"] - easy["utilisation"] + 0.005
    if du < -1e-9:
        miss.append(f"util {ours['utilisation'] - easy['utilisation']:+.4f}")
    bound = 0.6 if factor >= 1.5 and gpus <= 1100 else 1.0
    if ours["mean_h"] > bound * easy["mean_h"]:
        miss.append(f"mean {ours['mean_h'] / easy['mean_h']:.2f} x EASY (target {bound})")
    return miss


def run_one(trace_path: Path, gpus: int, factor: float, per_node: int, policy: str, rule: str) -> dict:
    pool = Pool.model_construct(name="main", gpu_type="gpu", gpus=gpus, gpus_per_node=per_node or gpus)
    cluster = ClusterConfig.model_construct(pools=(pool,), teams=(), admins=(),
                                            policy=Policy.model_construct(**{**Policy().__dict__, "pull_forward": rule}))
    setup = build_setup(load_trace(trace_path, factor), cluster)
    t0 = time.process_time()
    m = replay(setup, policy).metrics
    return {
        "utilisation": round(float(m["utilisation"]), 4),
        "utilisation_arriving": round(float(m["utilisation_arriving"]), 4),
        "mean_h": round(float(m["wait_mean_s"]) / 3600, 2),
        "p99_h": round(float(m["wait_p99_s"]) / 3600, 1),
        "promise_kept": m["promise_kept"],
        "cpu_s": round(time.process_time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=ITP)
    ap.add_argument("--configs", nargs="+", default=CONFIGS, help="GPUS:FACTOR ...")
    ap.add_argument("--rules", nargs="+", default=[Policy().pull_forward])
    ap.add_argument("--per-node", type=int, default=8, help="GPUs per node (0: one node, the flat calendar)")
    ap.add_argument("--no-easy", action="store_true", help="skip EASY (its figures are then not compared)")
    args = ap.parse_args()
    out: dict[str, dict] = {}
    for c in args.configs:
        g, f = c.split(":")
        gpus, factor = int(g), float(f)
        row: dict[str, dict] = {}
        if not args.no_easy:
            row["easy"] = run_one(args.trace, gpus, factor, args.per_node, "easy", "start_now")
            print(c, "easy", row["easy"], file=sys.stderr, flush=True)
        for r in args.rules:
            row[r] = run_one(args.trace, gpus, factor, args.per_node, "cellsched", r)
            if "easy" in row:
                miss = targets(gpus, factor, row["easy"], row[r])
                row[r]["meets"] = not miss
                row[r]["misses"] = miss
            print(c, r, row[r], file=sys.stderr, flush=True)
        out[c] = row
    print(json.dumps({"trace": args.trace.name, "gpus_per_node": args.per_node or "one node",
                      "results": out}, indent=2))


if __name__ == "__main__":
    main()
