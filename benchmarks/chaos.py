"""Chaos benchmark: ``cellsched serve`` (its own local Ray) killed with SIGKILL, SIGTERM or
SIGINT at random moments of a workload of gangs with retries and ``after`` chains, restarted
``--rounds`` times, then run to the end; prints one JSON object.

    python benchmarks/chaos.py                       # 50 rounds on SQLite, seed 0
    python benchmarks/chaos.py --db postgres --rounds 50 --seed 7
    python benchmarks/chaos.py --details             # also every finding and every round

Figures: ``chaos_rounds``, ``overlaps`` (two attempts of one job proven alive at once, from
per-pid ``/proc`` read stamps and the ranks' own stamps; must be 0), ``undecided`` (a rank
killed without an end stamp that may have lived into the next attempt, not proven; shown,
not counted),
``lost_results`` (0), ``double_charged`` (0), ``leaked_groups`` (0), ``leaked_processes`` (0),
``seconds``. The workload, the driver and the checks are ``tests/runtime/chaos_harness.py``
(shared with ``tests/runtime/test_chaos.py``). A 2-core machine takes 12-20 s a round (a
local Ray starts in 5-10 s). Exit 1 if any finding is not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))

from chaos_harness import ChaosConfig, fresh_pg_url, report, run_chaos

FINDINGS = ("overlaps", "lost_results", "double_charged", "leaked_groups", "leaked_processes")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a new temp dir)")
    ap.add_argument("--details", action="store_true", help="print the findings and rounds to stderr")
    ap.add_argument("--quiet", action="store_true", help="no per-round progress on stderr")
    a = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    def say(s: str) -> None:
        if not a.quiet:
            print(time.strftime("%H:%M:%S"), s, file=sys.stderr, flush=True)

    with fresh_pg_url() if a.db == "postgres" else nullcontext(None) as url:
        # windows outlast the whole run, so every job can finish whatever the kills did
        res = run_chaos(ChaosConfig(rounds=a.rounds, seed=a.seed, db_url=url, workdir=a.workdir, say=say,
                                    window_s=max(900, 30 * a.rounds + 300)))
    if a.details:
        print(report(res), file=sys.stderr)
    out = {"chaos_rounds": res["rounds"], **{k: res[k] for k in FINDINGS}, "undecided": res["undecided"],
           "seconds": res["seconds"],
           "db": a.db, "seed": a.seed, "waves": res["waves"], "attempts": res["attempts_recorded"],
           "unrecorded_completions": res["unrecorded_completions"], "workdir": res["workdir"]}
    print(json.dumps(out))
    return 1 if any(res[k] for k in FINDINGS) else 0


if __name__ == "__main__":
    sys.exit(main())
