"""Eight OS processes submit at once through the real ledger (SQLite and PostgreSQL); the
ledger rows are then recounted: no pool instant, team width or allowance over-committed.

The processes are forked from a fork server that has imported cellsched once (each opens its
own ledger after the fork): eight spawned interpreters importing it side by side took 10-15 s
of a 2-core machine before the first submit."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
from collections import Counter
from pathlib import Path

from sqlmodel import col, select

from cellsched.ledger.tables import EventRow, GrantRow, ProjectRow
from submit_worker import plan, work

WORKERS = 8
CAPACITY = {"h100": 16}
TEAMS = {"interp": (1500 * 3600, None), "evals": (100 * 3600, 8), "pretraining": (20000 * 3600, None)}


def month_of(t: int) -> tuple[int, int]:
    d = dt.datetime.fromtimestamp(t, dt.timezone.utc)
    return d.year, d.month


def charged_by_month(rows: list[GrantRow], team: str) -> Counter[tuple[int, int]]:
    """GPU-seconds per (year, month), second by second's month the slow but obvious way:
    windows here are hours long, so stepping an hour at a time with an exact last step is fine."""
    out: Counter[tuple[int, int]] = Counter()
    for r in rows:
        if r.team != team:
            continue
        t = r.start
        while t < r.end:
            step = min(r.end, t + 3600)
            if month_of(t) != month_of(step - 1):  # an hour crossing a month: split it exactly
                step = int(dt.datetime(*month_of(step - 1), 1, tzinfo=dt.timezone.utc).timestamp())
            out[month_of(t)] += r.width * (step - t)
            t = step
    return out


def test_concurrent_submits_never_overcommit(env, cluster_file: Path, ledger_url: str) -> None:  # type: ignore[no-untyped-def]
    env.ledger.ensure_schema()
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["cellsched.service", "submit_worker"])  # if it is not running yet
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=work, args=(str(cluster_file), ledger_url, w, barrier, results))
             for w in range(WORKERS)]
    for p in procs:
        p.start()
    got = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [(w, e) for w, _, e in got if e]
    assert not errors, errors

    outcomes = [kind for _, done, _ in got for _, kind in done]
    submissions = sum(len(plan(w)) for w in range(WORKERS))
    kinds = Counter(outcomes)
    assert kinds["granted"] + kinds["existing"] + kinds["refused"] == submissions
    assert kinds["granted"] >= 2 and kinds["refused"] >= 1 and kinds["cancelled"] >= 1, kinds

    with env.ledger.read() as s:
        rows = list(s.exec(select(GrantRow).order_by(col(GrantRow.id))).all())
        events = list(s.exec(select(EventRow).order_by(col(EventRow.seq))).all())
        projects = list(s.exec(select(ProjectRow)).all())
    ev = Counter(e.kind for e in events)
    # Every decision left exactly one event; every grant one row; the shared digest one grant.
    assert ev["granted"] == kinds["granted"] == len(rows)
    assert ev["refused"] == kinds["refused"] and ev["cancelled"] == kinds["cancelled"]
    assert len(projects) == len({p.digest for p in projects}) == len(rows)
    assert sum(1 for r in rows if r.project == "shared") == 1
    assert kinds["existing"] == WORKERS - 1
    assert [e.seq for e in events] == list(range(1, len(events) + 1))

    windows = [r for r in rows if r.end > r.start]
    points = sorted({r.start for r in windows})
    for t in points:
        for pool, cap in CAPACITY.items():
            assert sum(r.width for r in windows if r.pool == pool and r.start <= t < r.end) <= cap, (pool, t)
        for team, (_, max_gpus) in TEAMS.items():
            if max_gpus is not None:
                assert sum(r.width for r in windows if r.team == team and r.start <= t < r.end) <= max_gpus
    for team, (allowance, _) in TEAMS.items():
        for month, gs in charged_by_month(windows, team).items():
            assert gs <= allowance, (team, month, gs)
    for r in rows:  # charged in full when granted, the rest refunded exactly on cancel
        assert r.start >= r.promised_start - 0 and r.start <= r.promised_start
        assert r.width * (r.end - r.start) + r.refunded_gs == r.charged_gs
        if r.state == "cancelled":
            assert json.loads(next(e.data for e in events if e.kind == "cancelled" and e.subject == r.project_id))[
                "refunded_gpu_seconds"] == r.refunded_gs
