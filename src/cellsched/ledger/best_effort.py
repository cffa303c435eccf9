"""The submission side of best-effort work (docs/lending.md): queue a submission and its
tasks, cancel it, and read what the service shows. The daemon's side (start, preempt,
requeue, charge, end) is ``ledger/lending.py``.

Every write runs inside the caller's :meth:`Ledger.write` and appends the event that explains
it (``be_queued``, ``be_cancelled``), so the tables and the chain never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, func, or_
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlalchemy import update as sa_update
from sqlmodel import Session, col, select

from cellsched.core.allowance import BestEffortUse
from cellsched.ledger import events
from cellsched.ledger.tables import BE_LIVE_STATES, BestEffortRow, BestEffortTaskRow
from cellsched.spec.models import ProjectSpec

# Task states as ``status`` counts them: "running" includes tasks being preempted.
TASK_COUNTS = ("queued", "running", "succeeded", "failed", "cancelled")


def queue(s: Session, spec: ProjectSpec, pid: str, digest: str, pool: str, caller: str, now: int) -> BestEffortRow:
    """Write a best-effort submission (state ``queued``) and one queued task per job × count,
    in the spec's order (so task ids are the FIFO order inside the submission), and the
    ``be_queued`` event. The project row must be written already. Nothing is charged."""
    be = BestEffortRow(project_id=pid, project=spec.name, digest=digest, team=spec.team, pool=pool,
                       max_gpus=spec.budget.gpus, budget_gs=spec.budget.gpu_seconds, created_at=now)
    s.add(be)
    s.flush()
    assert be.id is not None
    rows = [{"be_id": be.id, "team": spec.team, "job": job.name, "index": i, "gpus": job.gpus, "state": "queued",
             "attempt": 0, "preemptions": 0, "queued_at": now, "held_gs": 0, "detail": ""}
            for job, i in spec.tasks()]
    s.connection().execute(sa_insert(BestEffortTaskRow.__table__), rows)  # type: ignore[attr-defined]
    events.append(s, now, "be_queued", pid, caller, {
        "be": be.id, "digest": digest, "team": spec.team, "pool": pool, "max_gpus": be.max_gpus,
        "budget_gpu_seconds": be.budget_gs, "tasks": len(rows),
        "jobs": [[job.name, job.count, job.gpus] for job in spec.jobs]})
    return be


def cancel(s: Session, be: BestEffortRow, now: int, caller: str) -> tuple[int, int]:
    """Cancel a live submission: it becomes ``cancelled`` and its queued tasks too; tasks
    running (or being preempted) are left to the daemon, which stops them because their
    submission is no longer queued, and charges what they held. Returns (tasks cancelled,
    tasks still running)."""
    t = BestEffortTaskRow.__table__.c  # type: ignore[attr-defined]
    cancelled = s.connection().execute(
        sa_update(BestEffortTaskRow.__table__)  # type: ignore[attr-defined]
        .where(t.be_id == be.id, t.state == "queued")
        .values(state="cancelled", ended_at=now, detail="submission cancelled")).rowcount
    running = s.exec(select(func.count()).select_from(BestEffortTaskRow).where(BestEffortTaskRow.be_id == be.id)
                     .where(col(BestEffortTaskRow.state).in_(("running", "preempting")))).one()
    be.state, be.ended_at = "cancelled", now
    s.add(be)
    events.append(s, now, "be_cancelled", be.project_id, caller,
                  {"be": be.id, "charged_gpu_seconds": be.charged_gs, "cancelled_tasks": cancelled,
                   "running_tasks": int(running)})
    return cancelled, int(running)


# -- reads ------------------------------------------------------------------------------


def find(s: Session, project: str, live_only: bool = False) -> list[BestEffortRow]:
    """Submissions of a project named ``name`` or ``name@digest``, newest first."""
    name, _, short = project.partition("@")
    q = select(BestEffortRow).where(BestEffortRow.project == name)
    if live_only:
        q = q.where(col(BestEffortRow.state).in_(BE_LIVE_STATES))
    return [r for r in s.exec(q.order_by(col(BestEffortRow.id).desc())).all() if r.digest.startswith(short)]


def live_named(s: Session, name: str, other_than: str | None = None) -> list[BestEffortRow]:
    """Live submissions of project ``name`` (with another digest than ``other_than``), oldest first."""
    q = select(BestEffortRow).where(BestEffortRow.project == name, col(BestEffortRow.state).in_(BE_LIVE_STATES))
    if other_than is not None:
        q = q.where(BestEffortRow.digest != other_than)
    return list(s.exec(q.order_by(col(BestEffortRow.id))).all())


def use(s: Session, team: str, allowance_gs: int, p0: int, p1: int,
        only: str | None = None) -> tuple[BestEffortUse, list[BestEffortRow]]:
    """The team's best-effort use of the period ``[p0, p1)`` (:func:`use_of`) and its
    submissions of the period, oldest first (``only``: one project id's, for its line; the
    use is still the team's)."""
    q = select(BestEffortRow).where(BestEffortRow.team == team, BestEffortRow.created_at >= p0,
                                    BestEffortRow.created_at < p1)
    if only is not None:
        q = q.where(BestEffortRow.project_id == only)
    return use_of(s, team, allowance_gs, p0, p1), list(s.exec(q.order_by(col(BestEffortRow.id))).all())


def use_of(s: Session, team: str, allowance_gs: int, p0: int, p1: int) -> BestEffortUse:
    """The team's best-effort use of the period ``[p0, p1)`` (:class:`core.allowance.BestEffortUse`:
    submissions count in the period they were submitted in), summed by the database: a
    submit reads it under the ledger's write lock, and a team's ended submissions have no
    bound (queuing and cancelling is free), so loading them all held the lock every team's
    submits need (1.5 s over 100,000). A submission that ended (cancelled) while tasks of
    its still hold GPUs keeps its budget reserved until they have left: they are charged
    only then."""
    be = BestEffortRow.__table__.c  # type: ignore[attr-defined]
    period = (be.team == team, be.created_at >= p0, be.created_at < p1)
    unspent = case((be.budget_gs > be.charged_gs, be.budget_gs - be.charged_gs), else_=0)
    holding = or_(be.state.in_(BE_LIVE_STATES), be.id.in_(_leaving(team, p0, p1)))
    charged, reserved = s.connection().execute(sa_select(
        func.coalesce(func.sum(be.charged_gs), 0),
        func.coalesce(func.sum(case((holding, unspent), else_=0)), 0),
    ).where(*period)).one()
    return BestEffortUse(allowance_gs, int(charged), int(reserved))


def _leaving(team: str, p0: int, p1: int) -> Any:
    """The team's submissions of ``[p0, p1)`` that ended while tasks of theirs still hold
    GPUs (running, or preempted and not yet gone): they keep their budget reserved."""
    be = BestEffortRow.__table__.c  # type: ignore[attr-defined]
    task = BestEffortTaskRow.__table__.c  # type: ignore[attr-defined]
    return (sa_select(task.be_id).distinct().join_from(BestEffortTaskRow.__table__, BestEffortRow.__table__,
                                                       task.be_id == be.id)
            .where(be.team == team, be.created_at >= p0, be.created_at < p1, be.state.not_in(BE_LIVE_STATES),
                   task.state.in_(("running", "preempting"))))


def task_counts(s: Session, be_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Per submission: its tasks by state (:data:`TASK_COUNTS`, plus ``total``), and its
    preemptions and attempts so far."""
    out: dict[int, dict[str, Any]] = {i: {**dict.fromkeys(TASK_COUNTS, 0), "total": 0, "preemptions": 0}
                                      for i in be_ids}
    if not be_ids:
        return out
    t = BestEffortTaskRow
    q = (select(t.be_id, t.state, func.count(), func.sum(t.preemptions))
         .where(col(t.be_id).in_(list(be_ids))).group_by(t.be_id, t.state))
    for be_id, state, n, preempted in s.exec(q).all():  # type: ignore[call-overload]
        c = out[be_id]
        key = "running" if state == "preempting" else state
        c[key] = c.get(key, 0) + int(n)
        c["total"] += int(n)
        c["preemptions"] += int(preempted or 0)
    return out


def tasks(s: Session, be_id: int) -> list[BestEffortTaskRow]:
    return list(s.exec(select(BestEffortTaskRow).where(BestEffortTaskRow.be_id == be_id)
                       .order_by(col(BestEffortTaskRow.id))).all())


def submission_json(row: BestEffortRow, counts: dict[str, Any] | None = None) -> dict[str, Any]:
    """A best-effort submission as ``submit``, ``cancel`` and ``status`` show it."""
    out: dict[str, Any] = {
        "kind": "best-effort", "id": row.id, "project": row.project_id, "team": row.team, "pool": row.pool,
        "state": row.state, "max_gpus": row.max_gpus, "budget_gpu_hours": row.budget_gs / 3600,
        "charged_gpu_hours": row.charged_gs / 3600, "created_at": row.created_at, "ended_at": row.ended_at,
    }
    if counts is not None:
        out["tasks"] = {k: counts.get(k, 0) for k in (*TASK_COUNTS, "total")}
        out["preemptions"] = counts.get("preemptions", 0)
    return out


def task_json(t: BestEffortTaskRow) -> dict[str, Any]:
    return {"job": t.job, "index": t.index, "state": t.state, "gpus": t.gpus, "attempt": t.attempt,
            "preemptions": t.preemptions, "queued_at": t.queued_at, "started_at": t.started_at,
            "ended_at": t.ended_at, "held_gpu_hours": t.held_gs / 3600, "lender": t.lender, "detail": t.detail}
