"""Takeover benchmark: a leader ``cellsched serve`` (its own local Ray) and a ``--standby``
(its own local Ray, connected and waiting) on one ledger; the leader's whole session is
SIGKILLed (as if its host died); ``takeover_s`` = the kill → the standby's first reconcile
pass. Default lease timings (10 s lease, 2 s renew, 1 s retry) unless ``--lease-s``.

    python benchmarks/takeover.py                  # 3 runs on SQLite, prints JSON
    python benchmarks/takeover.py --runs 5 --db postgresql+psycopg://postgres@127.0.0.1:5432/test
    python benchmarks/takeover.py --check          # exit 1 if the median misses 15 s

Expected: lease duration minus the time since the leader's last heartbeat (0 to one renew
period), plus up to one retry period, plus the first pass: 8-11 s. Each run starts two local
Rays (20-30 s a run on 2 cores). The helpers are ``tests/runtime/test_two_daemons.py``'s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "runtime"))

from test_two_daemons import clean_up, takeover, write_cluster  # noqa: E402

TARGET_S = 15.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--db", default=None, help="ledger URL (default: a new SQLite file); a PostgreSQL "
                    "database is used as is, its cs_ tables created if missing")
    ap.add_argument("--lease-s", type=float, default=None, help="CELLSCHED_LEASE_S for both serves")
    ap.add_argument("--check", action="store_true", help=f"exit 1 if the median exceeds {TARGET_S:g} s")
    args = ap.parse_args()
    runs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cluster = write_cluster(Path(tmp))
        url = args.db or f"sqlite:///{tmp}/cellsched.db"
        for i in range(args.runs):
            run_id = uuid.uuid4().hex
            res = takeover(cluster, url, args.lease_s, run_id)
            res["standby"].kill_all()  # the next run's leader waits for this lease (--standby)
            clean_up(run_id)
            runs.append(round(res["takeover_s"], 2))
            print(f"run {i + 1}: takeover {res['takeover_s']:.2f} s (lease taken after "
                  f"{res['lease_taken_s']:.2f} s, epoch {res['epoch']})", file=sys.stderr, flush=True)
    med = statistics.median(runs)
    print(json.dumps({"takeover_s": med, "takeover_runs_s": runs, "target_s": TARGET_S,
                      "lease_s": args.lease_s or 10, "db": url.split(":")[0]}))
    return 1 if args.check and med > TARGET_S else 0


if __name__ == "__main__":
    sys.exit(main())
