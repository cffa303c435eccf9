"""The report's identities (docs/report.md, "Identities") over random ledgers and periods.

Ledgers are written the way production writes them: submits, cancels and replacements through
the service layer, and the real reconciler over the in-memory executor for everything after
(starts, jobs that finish early and are refunded, windows that expire, and breaches on a fake
cluster with fewer GPUs than the config declares). Periods are random: before, inside, after
and straddling the windows, with edges on window boundaries and one second long. On SQLite
and PostgreSQL. ``CELLSCHED_IDENTITY_EXAMPLES`` sets the number of ledgers (default 25 per
database; each is checked against a few dozen periods)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import SQLModel, col, select

from cellsched import service
from cellsched.errors import CellschedError
from cellsched.executor import Behaviour, MemoryExecutor
from cellsched.ledger import events
from cellsched.ledger.tables import GrantRow
from cellsched.report import compute, snapshot
from cellsched.runtime.reconciler import Reconciler, Settings
from cellsched.service import Env, open_env
from cellsched.spec.models import ProjectSpec

H = 3600
T0 = 1_796_068_800  # 2026-11-30 20:00 UTC: windows cross into December, a new allowance period
EXAMPLES = int(os.environ.get("CELLSCHED_IDENTITY_EXAMPLES", "25"))
EPS = 1e-6  # GPU-hours: the figures are integer GPU-seconds / 3600

CLUSTER = """
admins = ["root-admin"]
[policy]
grace_s = 5
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 16
gpus_per_node = 8
[[pools]]
name = "a100"
gpu_type = "A100"
gpus = 8
gpus_per_node = 8
[[teams]]
name = "interp"
members = ["alice"]
allowance_gpu_hours = 150
[[teams]]
name = "evals"
members = ["carol"]
allowance_gpu_hours = 40
max_gpus = 8
[[teams]]
name = "pretraining"
members = ["dave"]
allowance_gpu_hours = 2000
"""
MEMBER = {"interp": "alice", "evals": "carol", "pretraining": "dave"}
GPU_HOUR_KEYS = ("granted_gpu_hours", "refunded_gpu_hours", "booked_gpu_hours", "reserved_gpu_hours", "held_gpu_hours",
                 "committed_gpu_hours", "used_gpu_hours", "idle_reserved_gpu_hours", "breach_gpu_hours")


# -- random ledgers ----------------------------------------------------------------------

@dataclass(frozen=True)
class Submit:
    team: str
    gpus: int
    quarter_hours: int  # window length
    pool: str
    job_minutes: int | None  # the job ends on its own after this long (early release); None: runs to the end
    not_before_min: int | None


@dataclass(frozen=True)
class Cancel:
    which: int  # index into the projects submitted so far


@dataclass(frozen=True)
class Replace:
    which: int
    gpus: int
    quarter_hours: int


submits = st.builds(Submit, st.sampled_from(("interp", "evals", "pretraining")), st.sampled_from((1, 2, 4, 8, 16)),
                    st.integers(1, 16), st.sampled_from(("h100", "a100")),
                    st.one_of(st.none(), st.integers(1, 120)), st.one_of(st.none(), st.integers(0, 240)))
ops = st.lists(st.tuples(st.integers(0, 90), st.one_of(
    submits, submits,
    st.builds(Cancel, st.integers(0, 15)),
    st.builds(Replace, st.integers(0, 15), st.sampled_from((1, 2, 4, 8)), st.integers(1, 12)),
)), min_size=1, max_size=10)


@dataclass
class World:
    env: Env
    rec: Reconciler
    ex: MemoryExecutor
    names: list[str] = field(default_factory=list)
    jobs: dict[str, Behaviour] = field(default_factory=dict)
    t: int = T0

    def run_until(self, t: int, step: int = 600) -> None:
        while self.t < t:
            self.t = min(t, self.t + step)
            self.ex.advance(self.t)
            self.rec.tick(self.t)


def spec(name: str, team: str, gpus: int, seconds: int, pool: str, job: str, *, replaces: str | None = None,
         not_before: int | None = None) -> ProjectSpec:
    import datetime as dt

    budget: dict[str, Any] = {"gpu_hours": gpus * seconds / H, "gpus": gpus, "pool": pool}
    if not_before is not None:
        budget["not_before"] = dt.datetime.fromtimestamp(not_before, dt.timezone.utc).isoformat()
    data: dict[str, Any] = {"name": name, "team": team, "owner": MEMBER[team], "problem": "does it add up?",
                            "budget": budget, "jobs": [{"name": job, "gpus": gpus, "run": "true"}]}
    if replaces:
        data["replaces"] = replaces
    return ProjectSpec.model_validate(data)


def apply(w: World, op: Submit | Cancel | Replace, i: int) -> None:
    """One user action at ``w.t``; refusals and "nothing to cancel" are part of the game."""
    try:
        if isinstance(op, Submit):
            name, job = f"p{i}", f"job{i}"
            nb = None if op.not_before_min is None else w.t + 60 * op.not_before_min
            if op.job_minutes is not None:
                w.jobs[job] = Behaviour(60 * op.job_minutes)
            out = service.submit(w.env, spec(name, op.team, op.gpus, 900 * op.quarter_hours, op.pool, job,
                                             not_before=nb), MEMBER[op.team], w.t)
            if out.granted:
                w.names.append(name)
        elif isinstance(op, Cancel) and w.names:
            name = w.names[op.which % len(w.names)]
            team = _team_of(w.env, name)
            service.cancel(w.env, name, MEMBER[team], w.t)
        elif isinstance(op, Replace) and w.names:
            name = w.names[op.which % len(w.names)]
            with w.env.ledger.read() as s:
                old = s.exec(select(GrantRow).where(GrantRow.project == name).order_by(col(GrantRow.id).desc())).first()
            assert old is not None
            job = f"job{i}"
            w.jobs[job] = Behaviour(60 * op.quarter_hours * 5)
            new = spec(name, old.team, op.gpus, 900 * op.quarter_hours, old.pool, job, replaces=old.project_id)
            service.submit(w.env, new, MEMBER[old.team], w.t)
    except CellschedError:
        pass


def _team_of(env: Env, name: str) -> str:
    with env.ledger.read() as s:
        row = s.exec(select(GrantRow).where(GrantRow.project == name)).first()
    assert row is not None
    return row.team


@pytest.fixture
def cluster_path(tmp_path: Path) -> Path:
    from cellsched.receipt import create_keys, key_paths

    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    create_keys(*key_paths(path))
    return path


@pytest.fixture
def fresh(cluster_path: Path, ledger_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A factory of empty ledgers at ``ledger_url`` (one per hypothesis example)."""
    made: list[Env] = []

    def make() -> Env:
        if made:
            SQLModel.metadata.drop_all(made[-1].ledger.engine)
            made[-1].ledger.dispose()
        env = open_env(cluster_path, ledger_url)
        made.append(env)
        return env

    yield make
    if made:
        made[-1].ledger.dispose()


def build_ledger(env: Env, logs: Path, plan: list[tuple[int, Any]], capacity: int | None, tail_min: int) -> World:
    jobs: dict[str, Behaviour] = {}  # filled as specs are submitted
    ex = MemoryExecutor(lambda gang: jobs.get(gang.job, Behaviour(None)), capacity=capacity, now=T0)
    rec = Reconciler(env, ex, clock=lambda: int(ex.now), settings=Settings(
        strict=True, notify_in_background=False, placement_timeout_s=60, breach_update_s=600, logs_root=logs))
    w = World(env, rec, ex, jobs=jobs)
    for i, (gap_min, op) in enumerate(plan):
        w.run_until(w.t + 60 * gap_min)
        apply(w, op, i)
        rec.tick(w.t)
    w.run_until(w.t + 60 * tail_min)
    return w


# -- the identities ----------------------------------------------------------------------

def numbers(x: Any, path: str = "") -> Iterator[tuple[str, float]]:
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return
    if isinstance(x, (int, float)):
        yield path, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from numbers(v, f"{path}[{i}]")


def close(a: float, b: float) -> bool:
    return abs(a - b) <= EPS


def check(r: dict[str, Any]) -> None:
    """Every identity of docs/report.md on one report of all teams."""
    bad = [(p, v) for p, v in numbers(r) if v < 0]
    assert not bad, f"negative figures: {bad[:5]}"
    figures = [r, *r["teams"], *r["pools"]]
    for f in figures:
        name = f.get("team") or f.get("pool") or "total"
        assert close(f["held_gpu_hours"] + f["committed_gpu_hours"], f["granted_gpu_hours"]), name
        assert close(f["reserved_gpu_hours"], f["granted_gpu_hours"]), name
        assert close(f["booked_gpu_hours"], f["granted_gpu_hours"] + f["refunded_gpu_hours"]), name
        assert f["used_gpu_hours"] <= f["held_gpu_hours"] + EPS, name
        assert close(f["idle_reserved_gpu_hours"], f["held_gpu_hours"] - f["used_gpu_hours"]), name
        assert f["breach_gpu_hours"] <= f["held_gpu_hours"] + EPS, name
    for key in GPU_HOUR_KEYS:  # teams and pools each add up to the total
        assert close(sum(t[key] for t in r["teams"]), r[key]), key
        assert close(sum(pl[key] for pl in r["pools"]), r[key]), key
    assert sum(t["grants"] for t in r["teams"]) == sum(1 for _ in r["projects"])
    assert close(r["guarantee_breaches"]["gpu_hours"], r["breach_gpu_hours"])
    assert r["guarantee_breaches"]["count"] == len(r["guarantee_breaches"]["grants"])
    assert close(sum(pl["capacity_gpu_hours"] for pl in r["pools"]), r["capacity_gpu_hours"])
    for pl in r["pools"]:  # granted <= capacity, per pool and (per timeline bucket) per instant
        assert pl["in_config"]
        assert pl["granted_gpu_hours"] <= pl["capacity_gpu_hours"] + EPS, pl["pool"]
        assert pl["held_gpu_hours"] <= pl["elapsed_capacity_gpu_hours"] + EPS, pl["pool"]
        assert close(pl["unreserved_gpu_hours"], pl["elapsed_capacity_gpu_hours"] - pl["held_gpu_hours"])
        tl = pl["timeline"]
        for i in range(len(tl["starts"])):
            reserved = sum(v[i] for v in tl["reserved_gpus"].values())
            assert reserved <= tl["capacity_gpus"][i] + 1e-3, (pl["pool"], i)
            used = sum(v[i] or 0 for v in tl["used_gpus"].values())
            assert used <= reserved + 1e-3, (pl["pool"], i)
    assert close(sum(pl["unreserved_gpu_hours"] for pl in r["pools"]), r["unreserved_gpu_hours"])
    assert close(r["elapsed_capacity_gpu_hours"] - r["held_gpu_hours"], r["unreserved_gpu_hours"])
    for v in r["utilisation"].values():
        assert v is None or v <= 1 + 1e-9
    for t in r["teams"]:
        if t["allowance_gpu_hours"] is not None:
            assert t["remaining_gpu_hours"] <= t["allowance_gpu_hours"] + EPS
            assert t["overdrawn_gpu_hours"] == 0  # admission never books past the allowance
            assert all(v <= t["allowance_gpu_hours"] + EPS for v in t["burndown"]["remaining_gpu_hours"])


def report(env: Env, snap: snapshot.Snapshot | None, since: int, until: int, now: int,
           team: str | None = None) -> dict[str, Any]:
    if snap is None:
        snap = snapshot.load(env.ledger, env.cluster, since, until)
    return compute.build(snap, env.cluster, since, until, now, team=team)


def periods(draw: st.DrawFn, edges: list[int], now: int) -> list[tuple[int, int]]:
    """Periods anywhere around the ledger: on window edges (+-1 s), one second long,
    wholly before or after every window, straddling now."""
    point = st.one_of(st.sampled_from(edges), st.integers(T0 - 6 * H, now + 12 * H))
    out = [(T0 - 10 * H, T0 - 9 * H), (now + 20 * H, now + 21 * H), (T0 - H, now + H)]
    for _ in range(12):
        a = draw(point) + draw(st.sampled_from((-1, 0, 0, 1)))
        length = draw(st.one_of(st.just(1), st.integers(1, 2 * H), st.integers(1, 30 * H)))
        out.append((a, a + length))
    return out


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(plan=ops, capacity=st.sampled_from((None, None, 16, 6)), tail=st.integers(0, 600), data=st.data())
def test_identities_hold_for_any_ledger_and_period(fresh, tmp_path: Path, plan, capacity, tail, data) -> None:  # type: ignore[no-untyped-def]
    env = fresh()
    w = build_ledger(env, tmp_path / "logs", plan, capacity, tail)
    now = w.t
    with env.ledger.read() as s:
        rows = list(s.exec(select(GrantRow)))
        audited = events.audit(s)  # and the tables are what the events say (ledger/audit.py)
    assert audited.ok, audited.problem
    edges = sorted({x for g in rows for x in (g.start, g.end, g.promised_end, g.created_at)} | {now, T0})
    whole = snapshot.load(env.ledger, env.cluster, T0 - 30 * 24 * H, now + 60 * 24 * H)
    for since, until in periods(data.draw, edges, now):
        r = report(env, whole, since, until, now)
        check(r)
        # what the report loads for the period alone gives the same figures
        assert report(env, None, since, until, now)["granted_gpu_hours"] == r["granted_gpu_hours"]
        # one team's report is that team's row of the whole report
        for t in r["teams"]:
            one = report(env, whole, since, until, now, team=t["team"])
            for key in GPU_HOUR_KEYS:
                assert close(one[key], t[key]), (t["team"], key)
        # additive in time: P split anywhere adds up (used to a GPU-second per attempt:
        # an attempt crossing the split is prorated with integer division on each side)
        if until - since >= 2:
            mid = data.draw(st.integers(since + 1, until - 1))
            a, b = report(env, whole, since, mid, now), report(env, whole, mid, until, now)
            for key in ("granted_gpu_hours", "refunded_gpu_hours", "held_gpu_hours", "committed_gpu_hours",
                        "breach_gpu_hours"):
                assert close(a[key] + b[key], r[key]), key
            assert abs(a["used_gpu_hours"] + b["used_gpu_hours"] - r["used_gpu_hours"]) <= len(whole.runs) / H + EPS
        # a period reaching now: remaining is what `cellsched budget` says now
        if since <= now < until:
            for t in r["teams"]:
                b = service.budget(env, t["team"], now)
                assert close(t["remaining_gpu_hours"], max(0, b.remaining_gs) / H), t["team"]
