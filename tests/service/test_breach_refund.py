"""Breaches are refunded (docs/daemon.md, "Guarantee breaches"): GPU-seconds the cluster did not provide go back to the
team's allowance, in the period where they were lost, and show in ``budget``. On SQLite and
PostgreSQL; the breaches are made by the real reconciler over the in-memory executor."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlmodel import select

from cellsched import service
from cellsched.executor import Behaviour, MemoryExecutor
from cellsched.ledger.tables import BreachRow, GrantRow
from cellsched.runtime.reconciler import Reconciler, Settings
from cellsched.service import Env, load_schedule
from cellsched.spec.models import ProjectSpec

H = 3600
T0 = 1_800_000_000  # 2027-01-15 08:00 UTC
FEB = int(dt.datetime(2027, 2, 1, tzinfo=dt.timezone.utc).timestamp())


def spec(name: str, gpus: int, hours: float, team: str = "evals", **budget: Any) -> ProjectSpec:
    return ProjectSpec.model_validate({
        "name": name, "team": team, "owner": "carol", "problem": "Does it hold up?",
        "budget": {"gpu_hours": gpus * hours, "gpus": gpus, "pool": "h100", **budget},
        "jobs": [{"name": "run", "gpus": gpus, "run": "true"}],
    })


def daemon(env: Env, tmp_path: Path, capacity: int, now: int) -> tuple[Reconciler, MemoryExecutor]:
    """The reconciler on a fake cluster with only ``capacity`` GPUs (fewer than declared)."""
    ex = MemoryExecutor(capacity=capacity, now=now)
    rec = Reconciler(env, ex, clock=lambda: int(ex.now), settings=Settings(
        strict=True, notify_in_background=False, placement_timeout_s=10, breach_update_s=60,
        logs_root=tmp_path / "logs"))
    return rec, ex


def tick(rec: Reconciler, ex: MemoryExecutor, t: int) -> None:
    ex.advance(t)
    rec.tick(t)


def remaining(env: Env, team: str, t: int) -> int:
    """What admission sees (the core's book) and what ``budget`` says must agree."""
    with env.ledger.read() as s:
        book = load_schedule(s, env.cluster, t).teams[team].book.remaining(t)
    assert service.budget(env, team, t).remaining_gs == book
    return book


def grant(env: Env, gid: int | None) -> GrantRow:
    with env.ledger.read() as s:
        g = s.get(GrantRow, gid)
        assert g is not None
        return g


def test_a_breach_raises_remaining_by_exactly_the_breached_gpu_seconds(env: Env, tmp_path: Path) -> None:
    # evals: 100 GPU-hours a month. 8 GPUs for 10 h charges 80; the cluster has only 4 GPUs.
    out = service.submit(env, spec("starved", 8, 10), "carol", T0)
    assert out.granted and out.grant is not None
    gid = out.grant.id
    before = remaining(env, "evals", T0)
    assert before == (100 - 80) * H
    # A 30 GPU-hour request due this month does not fit the allowance now.
    due = dt.datetime.fromtimestamp(T0 + 3 * 24 * H, dt.timezone.utc)
    refused = service.submit(env, spec("next", 2, 15, deadline=due), "carol", T0)
    assert not refused.granted and refused.refusal is not None
    assert refused.refusal.reason == "over_allowance"

    rec, ex = daemon(env, tmp_path, capacity=4, now=T0)
    tick(rec, ex, T0)
    tick(rec, ex, T0 + 10)  # unplaceable after the timeout: breach from the promised start
    assert grant(env, gid).breach_gs == 8 * 10
    assert remaining(env, "evals", T0 + 10) == before + 8 * 10
    tick(rec, ex, T0 + 2 * H)  # brought up to date
    g = grant(env, gid)
    assert g.breach_gs == 8 * 2 * H and g.refunded_gs == 0  # refunded_gs stays the cut refund
    assert remaining(env, "evals", T0 + 2 * H) == before + g.breach_gs

    bud = service.budget(env, "evals", T0 + 2 * H)
    assert bud.total("breach_gs") == 16 * H and bud.total("refunded_gs") == 0
    b = bud.to_json()  # what `cellsched budget` prints
    assert b["refunded_gpu_hours"] == 16 and b["remaining_gpu_hours"] == 20 + 16
    (line,) = b["projects"]
    assert line["refunded_gpu_hours"] == 16
    assert line["held_gpu_hours"] == 16 and line["committed_gpu_hours"] == 64  # the window still stands
    with env.ledger.read() as s:
        rows = s.exec(select(BreachRow).where(BreachRow.grant_id == gid)).all()
    assert sum(r.gpu_seconds for r in rows) == g.breach_gs
    assert (min(r.start for r in rows), max(r.end for r in rows)) == (T0, T0 + 2 * H)

    # Admission sees the refund at the next submit: 36 GPU-hours left now.
    again = service.submit(env, spec("next", 2, 15, deadline=due), "carol", T0 + 2 * H)
    assert again.granted and again.remaining_gs == (36 - 30) * H


def test_a_full_window_missed_is_refunded_in_full(env: Env, tmp_path: Path) -> None:
    out = service.submit(env, spec("forgotten", 4, 5), "carol", T0)
    assert out.granted and out.grant is not None
    before = remaining(env, "evals", T0)
    rec, ex = daemon(env, tmp_path, capacity=16, now=T0)
    tick(rec, ex, T0 + 6 * H)  # no daemon ran during the whole window
    g = grant(env, out.grant.id)
    assert g.state == "expired" and g.breach_gs == 4 * 5 * H
    assert remaining(env, "evals", T0 + 6 * H) == before + 4 * 5 * H == 100 * H
    b = service.budget(env, "evals", T0 + 6 * H)
    assert b.total("held_gs") == 4 * 5 * H and b.total("breach_gs") == 4 * 5 * H


def test_the_refund_goes_to_the_period_in_which_the_gpus_were_lost(env: Env, tmp_path: Path) -> None:
    # 4 GPUs for 4 h across the new month: January 31 22:00 -> February 1 02:00.
    nb = dt.datetime.fromtimestamp(FEB - 2 * H, dt.timezone.utc)
    out = service.submit(env, spec("straddle", 4, 4, not_before=nb), "carol", T0)
    assert out.granted and out.grant is not None
    assert (out.grant.start, out.grant.end) == (FEB - 2 * H, FEB + 2 * H)
    jan0, feb0 = remaining(env, "evals", FEB - 2 * H), remaining(env, "evals", FEB)
    assert jan0 == feb0 == (100 - 8) * H

    rec, ex = daemon(env, tmp_path, capacity=2, now=FEB - 2 * H)
    tick(rec, ex, FEB - 2 * H)
    tick(rec, ex, FEB - 2 * H + 10)
    tick(rec, ex, FEB + H)  # unplaced from 22:00 to 01:00: 2 h in January, 1 h in February
    assert grant(env, out.grant.id).breach_gs == 4 * 3 * H
    assert remaining(env, "evals", FEB - 1) == jan0 + 4 * 2 * H
    assert remaining(env, "evals", FEB + H) == feb0 + 4 * 1 * H
    jan = service.budget(env, "evals", FEB - 1).to_json()
    feb = service.budget(env, "evals", FEB + H).to_json()
    assert (jan["refunded_gpu_hours"], feb["refunded_gpu_hours"]) == (8, 4)


def test_a_node_lost_mid_window_is_refunded_once_and_not_the_early_finish_twice(env: Env, tmp_path: Path) -> None:
    out = service.submit(env, spec("fragile", 4, 1), "carol", T0)
    assert out.granted and out.grant is not None
    gid = out.grant.id
    before = remaining(env, "evals", T0)
    ex = MemoryExecutor({"run": Behaviour(60)}, capacity=16, now=T0)
    rec = Reconciler(env, ex, clock=lambda: int(ex.now), settings=Settings(
        strict=True, notify_in_background=False, logs_root=tmp_path / "logs"))
    tick(rec, ex, T0)
    tick(rec, ex, T0 + 5)
    (name,) = ex.reservations()
    ex.lose_bundles(name, [3], back_at=T0 + 20)
    for t in range(T0 + 6, T0 + 200):
        tick(rec, ex, t)
    g = grant(env, gid)
    assert g.state == "completed" and g.breach_gs == 4 * (20 - 6)  # seen at T0+6, back at T0+20
    refund = g.refunded_gs  # the early finish: the window from the cut on
    assert refund > 0
    assert remaining(env, "evals", h := T0 + 200) == before + refund + g.breach_gs
    b = service.budget(env, "evals", h)
    assert b.total("all_refunded_gs") == refund + g.breach_gs


def test_a_breach_recorded_before_breach_rows_existed_is_refunded_from_the_window_start(env: Env) -> None:
    out = service.submit(env, spec("old-ledger", 4, 5), "carol", T0)
    assert out.granted and out.grant is not None
    before = remaining(env, "evals", T0 + H)
    with env.ledger.write() as s:  # what an older daemon wrote: breach_gs, no BreachRow
        g = s.get(GrantRow, out.grant.id)
        assert g is not None
        g.breach_gs = 4 * 600
        s.add(g)
    assert remaining(env, "evals", T0 + H) == before + 4 * 600
    assert service.budget(env, "evals", T0 + H).total("breach_gs") == 4 * 600
