"""Schedule digests: one sha256 per replay over every job's decisions, to show that a change
to the simulator or the admission core left every schedule as it was.

    python benchmarks/sim_digest.py > before.json      # on the code before
    python benchmarks/sim_digest.py > after.json       # on the code after; then diff the two
    python benchmarks/sim_digest.py --only bench-hold_when_busy itp-compact

Each digest covers, per job in submission order, (seq, start, end, promised start, refusal
reason, placed nodes), as the engine recorded them (-1 / None when a job never ran, was
promised nothing or was not refused). Eight replays of the ``cellsched`` policy:

- ``bench-<rule>``: the 30,000-job trace of ``benchmarks/simulate.py`` (same seed, 1,000 GPUs,
  nodes of 8, load 0.9) under the pull-forward rules ``hold_when_busy``, ``start_now`` and
  ``hold_oldest``; ``bench-one-node``: the same trace with the pool as one node
  (``--per-node 0``), under the default rule;
- ``itp-<rule>``: the first 20,000 jobs of ``../shared/traces/itp.csv`` on
  ``examples/sim-cluster.toml`` at 1,100 GPUs, set up as ``cellsched simulate --gpus 1100``
  sets itself up (estimate factor 1.5), under the same three rules; ``itp-compact``: its
  first 5,000 jobs under ``compact``.

With ``--expect-every N`` (default 0: off) the itp replays also measure the expected start
of every N-th waiting job, as ``cellsched simulate`` does by default (20), and a second
digest covers those estimates. Prints one JSON object: per replay its digest, jobs and CPU
seconds (``time.process_time``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from simulate import ITP, make_trace, pool_of_jobs  # noqa: E402

from cellsched.sim.run import replay  # noqa: E402
from cellsched.sim.setup import SimSetup, build_setup  # noqa: E402
from cellsched.sim.trace import Trace, load_trace  # noqa: E402
from cellsched.spec.cluster import ClusterConfig, Policy, Pool  # noqa: E402
from cellsched.spec.load import load_cluster  # noqa: E402

RULES = ("hold_when_busy", "start_now", "hold_oldest")
CLUSTER = HERE.parent / "examples" / "sim-cluster.toml"
NAMES = (*(f"bench-{r}" for r in RULES), "bench-one-node", *(f"itp-{r}" for r in RULES), "itp-compact")


def bench_setup(n: int, rule: str, per_node: int, gpus: int = 1000, load: float = 0.9, seed: int = 1) -> SimSetup:
    """The setup ``benchmarks/simulate.py`` replays (its defaults), under ``rule``."""
    _, source = pool_of_jobs(seed)
    per = per_node or gpus
    pool = Pool.model_construct(name="main", gpu_type="gpu", gpus=gpus, gpus_per_node=per)
    cluster = ClusterConfig.model_construct(pools=(pool,), teams=(), admins=(), policy=Policy(pull_forward=rule))
    return build_setup(make_trace(n, gpus, load, seed, source), cluster)


def itp_setup(n: int, rule: str, expect_every: int, gpus: int = 1100) -> SimSetup:
    """The first ``n`` jobs of itp.csv as ``cellsched simulate --cluster examples/sim-cluster.toml
    --gpus 1100 --pull-forward RULE`` replays them."""
    config = load_cluster(CLUSTER)
    config = config.model_copy(update={"policy": config.policy.model_copy(update={"pull_forward": rule})})
    tr = load_trace(ITP, 1.5)
    tr = Trace(tr.source, tr.jobs[:n], tr.bad_rows, tr.estimate_factor, tr.requested_column)
    return build_setup(tr, config, gpus, 1.0, expect_every)


def setup_of(name: str, expect_every: int) -> SimSetup:
    kind, _, rule = name.partition("-")
    if kind == "bench":
        return bench_setup(30_000, "hold_when_busy", 0) if rule == "one-node" else bench_setup(30_000, rule, 8)
    return itp_setup(5_000 if rule == "compact" else 20_000, rule, expect_every)


def digest(setup: SimSetup) -> dict[str, object]:
    t0 = time.process_time()
    r = replay(setup, "cellsched")
    seconds = time.process_time() - t0
    e = r.engine
    rows = [(i, e.start[i], e.end[i], e.promised[i], e.refused.get(i), list(e.placed.get(i, ())))
            for i in range(len(e.jobs))]
    out: dict[str, object] = {
        "sha256": hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest(),
        "jobs": len(rows),
        "cpu_s": round(seconds, 2),
    }
    expected = getattr(e.policy, "expected", None)
    if setup.expect_every and expected:
        rows_x = sorted(expected.items())
        out["expected_sha256"] = hashlib.sha256(json.dumps(rows_x, separators=(",", ":")).encode()).hexdigest()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES), help="replays to run (default: all eight)")
    ap.add_argument("--expect-every", type=int, default=0,
                    help="itp replays: measure the expected start of every N-th waiting job (0: off)")
    args = ap.parse_args()
    if not ITP.exists():
        sys.exit(f"sim_digest: {ITP} is needed (the itp replays and the benchmark's trace read it)")
    out = {}
    for name in args.only:
        out[name] = digest(setup_of(name, args.expect_every))
        print(f"{name:>22}: {out[name]['sha256'][:16]}  {out[name]['cpu_s']:7.2f} s CPU", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
