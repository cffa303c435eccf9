"""The daemon's writes for best-effort tasks (docs/lending.md): start on lent GPUs, reclaim,
end, requeue. Like :class:`GrantWriter`, every write carries the daemon's lease epoch, re-reads
its rows and does nothing when the state has moved on, and appends the event that explains it.

Charging: a task's attempt holds ``gpus`` GPUs from its start (the group asked for) to its
end (the group released); that is what the borrower is charged, preempted time and grace
included, times the cluster's ``best_effort_rate`` (rounded up to a GPU-second), against its
team's best-effort allowance, never beyond the submission's budget. Nothing is charged to
the lender."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from cellsched.ledger import events
from cellsched.ledger.lifecycle import GrantWriter, set_breach
from cellsched.ledger.tables import (
    BE_TASK_LIVE,
    BestEffortRow,
    BestEffortTaskRow,
    GrantRow,
    GrantRuntimeRow,
)

ENDED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class TaskView:
    """A live task with what the daemon needs of its submission."""

    task: BestEffortTaskRow
    be: BestEffortRow


def live_tasks(s: Session) -> list[TaskView]:
    """Tasks of live submissions that are queued, running or preempting, plus running or
    preempting tasks of submissions that ended (they must still be stopped)."""
    rows = s.exec(select(BestEffortTaskRow, BestEffortRow)
                  .where(col(BestEffortTaskRow.state).in_(BE_TASK_LIVE))
                  .where(BestEffortTaskRow.be_id == BestEffortRow.id)
                  .order_by(col(BestEffortTaskRow.id))).all()
    return [TaskView(t, b) for t, b in rows]


def charge_of(gpus: int, started_at: int, ended_at: int, rate: float) -> tuple[int, int]:
    """(GPU-seconds held, GPU-seconds charged) for one attempt."""
    held = gpus * max(0, ended_at - started_at)
    return held, math.ceil(held * rate - 1e-9)


class TaskWriter(GrantWriter):
    """The daemon's writes for best-effort tasks (same transaction and epoch rules)."""

    def _task_event(self, s: Session, now: int, kind: str, t: BestEffortTaskRow, be: BestEffortRow,
                    data: dict[str, Any]) -> None:
        events.append(s, now, kind, be.project_id, self.actor,
                      {"be": be.id, "task": t.id, "job": t.job, "index": t.index, **data})

    def _get(self, s: Session, task_id: int) -> tuple[BestEffortTaskRow, BestEffortRow] | None:
        t = s.get(BestEffortTaskRow, task_id)
        if t is None:
            return None
        be = s.get(BestEffortRow, t.be_id)
        return None if be is None else (t, be)

    def start(self, task_id: int, pool: str, node: int, name: str, lender: int | None, now: int,
              bundles: list[int] | None = None, log_dir: str | None = None) -> int | None:
        """A queued task of a live submission starts on lent GPUs (no window's, or the idle
        ``bundles`` of grant ``lender``); returns its attempt. ``log_dir``: where its ranks
        write (the event keeps it, for ``logs``)."""
        with self.tx() as s:
            got = self._get(s, task_id)
            if got is None:
                return None
            t, be = got
            if t.state != "queued" or be.state != "queued":
                return None
            t.state, t.attempt, t.node, t.lender = "running", t.attempt + 1, node, lender
            t.started_at, t.name, t.reclaim_at = now, name, None
            t.bundles = None if bundles is None else json.dumps(bundles)
            s.add(t)
            self._task_event(s, now, "be_started", t, be, {"attempt": t.attempt, "gpus": t.gpus, "pool": pool, "node": node,
                                                            "lender": lender, "bundles": bundles,
                                                            "reservation": name,
                                                            **({} if log_dir is None else {"log_dir": log_dir})})
            return t.attempt

    def preempting(self, task_id: int, now: int, why: str) -> bool:
        """SIGTERM sent: the task is leaving (its GPUs are needed, or its budget ran out)."""
        with self.tx() as s:
            got = self._get(s, task_id)
            if got is None or got[0].state != "running":
                return False
            t, be = got
            t.state, t.reclaim_at, t.detail = "preempting", now, why
            s.add(t)
            self._task_event(s, now, "be_preempting", t, be, {"attempt": t.attempt, "why": why})
            return True

    def ended(self, task_id: int, attempt: int, now: int, outcome: str, exit_codes: list[int | None],
              retries: int, rate: float, held_until: int | None = None) -> str | None:
        """The task's attempt is over (its group released): charge what it held (until
        ``held_until``, default ``now``), then requeue it (preempted, or lost with its
        node: it keeps its place), or end it. Returns the task's new state."""
        with self.tx() as s:
            got = self._get(s, task_id)
            if got is None:
                return None
            t, be = got
            if t.state not in ("running", "preempting") or t.attempt != attempt:
                return None
            held, charged = charge_of(t.gpus, t.started_at or now, now if held_until is None else held_until, rate)
            # The budget is the most the submission is ever charged (what the team's
            # allowance reserved for it): a task stopped once it was spent holds its GPUs
            # through its grace, and that is the cluster's, not the team's.
            charged = min(charged, max(0, be.budget_gs - be.charged_gs))
            t.held_gs += held
            be.charged_gs += charged
            # "succeeded": it ended on its own, every rank 0, before any SIGTERM reached it
            # (one that exits after a SIGTERM is "killed"): done, even if one was on its way.
            preempted = t.state == "preempting" and outcome != "succeeded"
            if preempted or outcome == "lost":
                t.preemptions += 1  # not the task's fault: it does not use up a retry
            failures = t.attempt - t.preemptions
            if outcome == "succeeded":
                state = "succeeded"
            elif be.state != "queued":
                state = "cancelled"
            elif preempted or outcome == "lost":
                state = "queued"
            elif failures <= retries:
                state = "queued"  # a retry, at its place
            else:
                state = "failed"
            t.state = state
            t.detail = f"{'preempted' if preempted else outcome}: exit {exit_codes}"
            t.ended_at = now if state in ENDED else None
            t.started_at, t.node, t.lender, t.name, t.reclaim_at, t.bundles = None, None, None, None, None, None
            s.add(t)
            self._task_event(s, now, "be_ended", t, be, {
                "attempt": attempt, "outcome": "preempted" if preempted else outcome, "state": state,
                "held_gpu_seconds": held, "charged_gpu_seconds": charged})
            if be.state == "queued" and be.charged_gs >= be.budget_gs:
                self._close(s, be, now, "exhausted")
            elif be.state == "queued":
                left = s.exec(select(BestEffortTaskRow.id).where(BestEffortTaskRow.be_id == be.id)
                              .where(col(BestEffortTaskRow.state).in_(BE_TASK_LIVE))).first()
                if left is None:
                    self._close(s, be, now, "done")
            s.add(be)
            return state

    def _close(self, s: Session, be: BestEffortRow, now: int, state: str) -> None:
        """The submission ends: queued tasks are cancelled (running ones are stopped by the
        daemon, which sees the submission is no longer queued)."""
        be.state, be.ended_at = state, now
        queued = s.exec(select(BestEffortTaskRow).where(BestEffortTaskRow.be_id == be.id)
                        .where(BestEffortTaskRow.state == "queued")).all()
        for t in queued:
            t.state, t.ended_at, t.detail = "cancelled", now, f"submission {state}"
            s.add(t)
        events.append(s, now, f"be_{state}", be.project_id, self.actor,
                      {"be": be.id, "charged_gpu_seconds": be.charged_gs, "cancelled_tasks": len(queued)})

    def lending_delay(self, gid: int, job: str, attempt: int, gpus: int, delay: int, now: int) -> int:
        """The owner's launch waited ``delay`` s for borrowers to leave its bundles: those
        GPU-seconds of its window were not provided, and are refunded as a breach."""
        with self.tx() as s:
            row = s.get(GrantRow, gid)
            if row is None or delay <= 0:
                return 0
            # Breaches are whole seconds of the grant's width (cs_breach, audit): the job's
            # GPU-seconds, rounded up to that.
            lost = row.width * math.ceil(gpus * delay / row.width)
            rt = s.get(GrantRuntimeRow, gid)
            if rt is not None:  # counted with the closed outages, so later ones add to it
                rt.breach_closed_gs += lost
                s.add(rt)
            set_breach(s, row, row.breach_gs + lost, now)
            s.add(row)
            events.append(s, now, "lending_delay", row.project_id, self.actor, {
                "grant": gid, "job": job, "attempt": attempt, "gpus": gpus, "delay_s": delay,
                "gpu_seconds": lost, "breach_gpu_seconds": row.breach_gs})
            return lost
