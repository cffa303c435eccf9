"""Chaos on real Ray: ``cellsched serve`` (its own local Ray) killed with SIGKILL, SIGTERM or
SIGINT at random moments of a workload of gangs with retries and ``after`` chains, restarted
ten times per database, then one last daemon runs the work to the end. No two attempts of a
job may ever overlap, no result may be lost, no GPU-second charged twice, and nothing (job
process, Ray process, placement group) may be left. See ``chaos_harness.py`` for the
workload, the driver and how each check is made.

The two databases run side by side, each with its own daemon, local Ray, work dir and
``/proc`` scanner (every process is told apart by its run id): the runs mostly wait on Ray
starting and on daemons stopping, so together they take little longer than one, and the
daemons of one run meet a machine kept busy by the other.

The seed is fixed per database (``CELLSCHED_CHAOS_SEED`` overrides it, to replay or explore).
A failure prints which job overlapped, with its stamps, and every round's signal and timing.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from chaos_harness import ChaosConfig, report, run_chaos

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROUNDS = 10
SEEDS = {"sqlite": 11, "postgres": 12}


# About 2.5 minutes for both databases on an idle 2-core machine (a local Ray starts in
# 4-10 s per round). The harness starts no round after DEADLINE_S (the test then fails,
# saying so); the timeout only guards against a hang, and leaves room for the final round.
DEADLINE_S = 420


@pytest.mark.timeout(DEADLINE_S + 360)
def test_daemon_killed_and_restarted_ten_times_runs_every_job_once(ledger_urls: dict[str, str], tmp_path: Path) -> None:
    def one(db: str) -> dict[str, Any]:
        seed = int(os.environ.get("CELLSCHED_CHAOS_SEED", SEEDS[db]))
        return run_chaos(ChaosConfig(rounds=ROUNDS, seed=seed, db_url=ledger_urls[db], workdir=tmp_path / f"chaos-{db}",
                                     deadline_s=DEADLINE_S, final_timeout_s=120, say=lambda s: print(f"{db}: {s}")))

    with ThreadPoolExecutor(len(ledger_urls)) as pool:
        results = dict(zip(ledger_urls, pool.map(one, ledger_urls)))
    for res in results.values():
        print(report(res))
    for res in results.values():
        found = {k: res[k] for k in ("overlaps", "lost_results", "double_charged", "leaked_groups", "leaked_processes")}
        assert res["rounds"] == ROUNDS, report(res)
        assert found == dict.fromkeys(found, 0), report(res)
