"""Benchmark: `cellsched report` over a ledger of 100,000 grants must render in under 10 s.

Builds a SQLite ledger (in a temporary directory) with N grants over a year on four pools and
eight teams: each with its project row, most with a job run, some cancelled or released
early, a few breached; plus a granted event per grant and some refusals. Then times the
report as the CLI runs it: load the snapshot, compute, and render all three ways (terminal,
JSON, HTML with every chart; PNGs too with --png). Prints one JSON object (wall and CPU
time, and the load average, since a busy shared machine inflates wall time); exits 1 if the
whole report takes longer than the budget of wall time.

    python benchmarks/report.py                 # 100,000 grants
    python benchmarks/report.py --grants 10000 --png

Events are bulk-inserted with placeholder hashes (the report does not read the chain), so the
benchmark ledger does not pass `cellsched audit`; everything else is what the service writes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

BUDGET_S = 10.0
DAY, H = 86400, 3600
T0 = 1_790_812_800  # 2026-10-01T00:00:00Z
SPAN = 365 * DAY

CLUSTER = """
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 1024
[[pools]]
name = "h200"
gpu_type = "H200"
gpus = 512
[[pools]]
name = "a100"
gpu_type = "A100"
gpus = 512
[[pools]]
name = "l40s"
gpu_type = "L40S"
gpus = 256
""" + "".join(
    f'[[teams]]\nname = "{t}"\nallowance_gpu_hours = {a}\nperiod = "{p}"\n'
    for t, a, p in [("interp", 40000, "month"), ("pretraining", 400000, "month"), ("evals", 20000, "month"),
                    ("rl", 60000, "month"), ("data", 10000, "month"), ("safety", 30000, "quarter"),
                    ("vision", 50000, "month"), ("infra", 5000, "year")]
)
TEAMS = ["interp", "pretraining", "evals", "rl", "data", "safety", "vision", "infra"]
POOLS = ["h100", "h200", "a100", "l40s"]
REASONS = ["over_allowance", "no_capacity_in_window", "wider_than_pool", "deadline_passed"]


def build(db: str, n: int, seed: int = 7) -> None:
    from sqlalchemy import insert

    from cellsched.ledger.db import Ledger
    from cellsched.ledger.tables import EventRow, GrantRow, JobRunRow, ProjectRow

    rng = random.Random(seed)
    projects, grants, runs, events = [], [], [], []
    seq = 0
    for i in range(1, n + 1):
        team, pool = rng.choice(TEAMS), rng.choice(POOLS)
        width = rng.choice((1, 2, 4, 8, 8, 16, 32))
        start = T0 + rng.randrange(SPAN)
        end = start + rng.randrange(H, 72 * H)
        created = start - rng.randrange(0, 5 * DAY)
        pid = f"p{i}@{i:012x}"
        digest = f"{i:064x}"
        projects.append({"id": pid, "name": f"p{i}", "digest": digest, "team": team, "owner": "o", "submitted_by": "o",
                         "spec_json": "{}", "created_at": created, "replaces": None})
        cut, state, ended = end, "expired", None
        roll = rng.random()
        if roll < 0.1:  # cancelled, maybe before it started
            cut = min(max(created + rng.randrange(1, 3 * DAY), start), end)
            state, ended = "cancelled", created + 1
            ended = max(ended, min(cut, end))
        elif roll < 0.5:  # finished early
            cut = start + (end - start) * rng.randrange(40, 100) // 100
            state, ended = "completed", cut
        started = start + rng.randrange(0, 300) if cut > start else None
        grants.append({"id": i, "project_id": pid, "project": f"p{i}", "digest": digest, "team": team, "pool": pool,
                       "width": width, "start": start, "end": cut, "promised_start": start, "promised_end": end,
                       "charged_gs": width * (end - start), "refunded_gs": width * (end - cut), "state": state,
                       "created_at": created, "started_at": started, "ended_at": ended,
                       "breach_gs": width * 600 if rng.random() < 0.005 else 0, "receipt": "", "report_json": None})
        if started is not None and rng.random() < 0.8:
            r_end = started + (cut - started) * rng.randrange(50, 100) // 100
            runs.append({"grant_id": i, "job": "main", "attempt": 1, "state": "succeeded", "gpus": width,
                         "started_at": started, "ended_at": r_end, "gpu_seconds": width * (r_end - started),
                         "exit_codes": "[]"})
        seq += 1
        events.append({"seq": seq, "at": created, "kind": "granted", "subject": pid, "actor": "o",
                       "data": json.dumps({"team": team}), "prev_hash": "0" * 64, "hash": "0" * 64})
        if rng.random() < 0.2:
            seq += 1
            events.append({"seq": seq, "at": created, "kind": "refused", "subject": f"r{i}@x", "actor": "o",
                           "data": json.dumps({"team": team, "reason": rng.choice(REASONS)}),
                           "prev_hash": "0" * 64, "hash": "0" * 64})
    ledger = Ledger(db)
    ledger.ensure_schema()
    with ledger.write() as s:
        conn = s.connection()
        for table, rows in ((ProjectRow, projects), (GrantRow, grants), (JobRunRow, runs), (EventRow, events)):
            for k in range(0, len(rows), 20_000):
                conn.execute(insert(table.__table__), rows[k:k + 20_000])  # type: ignore[attr-defined]
    ledger.dispose()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grants", type=int, default=100_000)
    ap.add_argument("--png", action="store_true", help="also write every chart as PNG")
    ap.add_argument("--keep", type=Path, help="write the HTML report here instead of a temporary file")
    args = ap.parse_args()

    from cellsched.spec.load import load_cluster

    with tempfile.TemporaryDirectory() as tmp:
        cluster_path = Path(tmp) / "cluster.toml"
        cluster_path.write_text(CLUSTER)
        cluster = load_cluster(cluster_path)
        db = f"sqlite:///{Path(tmp) / 'bench.db'}"
        t = time.perf_counter()
        build(db, args.grants)
        build_s = time.perf_counter() - t

        from cellsched.ledger.db import Ledger

        ledger = Ledger(db)
        ledger.ensure_schema()
        since, until, now = T0, T0 + SPAN, T0 + SPAN - 30 * DAY
        timings: dict[str, float] = {}
        t_all = time.perf_counter()
        cpu_all = time.process_time()

        t = time.perf_counter()
        from cellsched.report import compute, snapshot

        snap = snapshot.load(ledger, cluster, since, until)
        timings["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        data = compute.build(snap, cluster, since, until, now)
        timings["compute_s"] = time.perf_counter() - t
        t = time.perf_counter()
        text = json.dumps(data, default=str)
        timings["json_s"] = time.perf_counter() - t
        t = time.perf_counter()
        from cellsched.report.terminal import print_report

        with contextlib.redirect_stdout(io.StringIO()):
            print_report(data)
        timings["terminal_s"] = time.perf_counter() - t
        t = time.perf_counter()
        from cellsched.report import render_html

        charts = render_html.report_charts(data)
        page = render_html.report_page(data, charts)
        out = args.keep or Path(tmp) / "report.html"
        out.write_text(page, encoding="utf-8")
        timings["html_with_charts_s"] = time.perf_counter() - t
        if args.png:
            t = time.perf_counter()
            for c in charts:
                (Path(tmp) / f"{c.name}.png").write_bytes(c.png())
            timings["png_s"] = time.perf_counter() - t
        for c in charts:
            c.close()
        total = time.perf_counter() - t_all
        cpu = time.process_time() - cpu_all
        ledger.dispose()

    result = {
        "benchmark": "report",
        "grants": len(snap.grants), "job_runs": len(snap.runs), "events": len(snap.events),
        "period_days": SPAN // DAY,
        "total_s": round(total, 3), "cpu_s": round(cpu, 3), "budget_s": BUDGET_S, "ok": total < BUDGET_S,
        "load_average_1m": round(os.getloadavg()[0], 1),
        **{k: round(v, 3) for k, v in timings.items()},
        "charts": len(charts), "html_bytes": len(page.encode()), "json_bytes": len(text),
        "build_ledger_s": round(build_s, 1),
        "used_gpu_hours": round(data["used_gpu_hours"], 1),
        "utilisation": round(data["utilisation"]["used_over_capacity"], 4),
        "python": sys.version.split()[0], "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
