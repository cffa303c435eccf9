"""Read what a report needs from the ledger into plain, immutable facts.

This is the report's only I/O. It reads one consistent snapshot (one read transaction) and
returns tuples of named tuples (cheap to build by the hundred thousand); :mod:`cellsched.report.compute` does the rest without
touching the database or the clock. Columns are selected directly (no ORM objects) so that a
ledger of 100,000 grants loads in well under a second.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import or_, select

from cellsched.core.allowance import period_bounds
from cellsched.core.calendar import FAR_PAST
from cellsched.ledger.breaches import breach_intervals
from cellsched.ledger.db import Ledger
from cellsched.ledger.tables import BestEffortRow, EventRow, GrantRow, JobRunRow
from cellsched.spec.cluster import ClusterConfig


class GrantFact(NamedTuple):
    """One grant as the ledger holds it. ``end`` is the current end (cut on release)."""

    id: int
    project_id: str
    team: str
    pool: str
    width: int
    start: int
    end: int
    promised_start: int
    promised_end: int
    charged_gs: int
    refunded_gs: int
    state: str
    created_at: int
    started_at: int | None = None
    ended_at: int | None = None
    breach_gs: int = 0

    @property
    def gross_end(self) -> int:
        """The end as granted, before any early release: a cut refunds ``width`` GPUs from
        the cut to the old end, so the old end is ``end + refunded / width``."""
        return self.end + self.refunded_gs // self.width if self.width else self.end


class RunFact(NamedTuple):
    """One attempt of one job: its GPUs, real start and end, metered GPU-seconds."""

    grant_id: int
    gpus: int
    started_at: int | None
    ended_at: int | None
    gpu_seconds: int


class EventFact(NamedTuple):
    """A decision in the event chain (granted, refused, cancelled, replaced, ...)."""

    at: int
    kind: str
    subject: str
    team: str | None
    reason: str | None


class LentFact(NamedTuple):
    """One best-effort attempt on lent GPUs: ``gpus`` from ``start`` to ``end`` (None: still
    running), borrowed by ``borrower`` from ``lender`` (the lending grant's team; None: GPUs
    no window held), and whether it ended preempted."""

    borrower: str
    lender: str | None
    gpus: int
    start: int
    end: int | None
    preempted: bool


@dataclass(frozen=True)
class Snapshot:
    grants: tuple[GrantFact, ...]
    runs: tuple[RunFact, ...]
    events: tuple[EventFact, ...]
    # grant id -> (start, end, width) spans the cluster did not provide; refunded to the team
    breaches: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    lent: tuple[LentFact, ...] = ()


EVENT_KINDS = ("granted", "refused", "cancelled", "replaced", "completed", "expired")


def load(ledger: Ledger, cluster: ClusterConfig, since: int, until: int) -> Snapshot:
    """Every fact that can touch [since, until) or the calendar ahead, from one snapshot.

    Grants are kept if their window (as granted) ends after the start of the earliest
    allowance period overlapping ``since``: a team's remaining allowance at ``since`` depends
    on what was booked earlier in that allowance period.
    """
    floor = min((period_bounds(since, t.period)[0] for t in cluster.teams), default=since)
    floor = min(floor, since)
    g = GrantRow.__table__.c  # type: ignore[attr-defined]
    r = JobRunRow.__table__.c  # type: ignore[attr-defined]
    e = EventRow.__table__.c  # type: ignore[attr-defined]
    with ledger.read() as s:
        conn = s.connection()
        gq = select(
            g.id, g.project_id, g.team, g.pool, g.width, g.start, g.end, g.promised_start, g.promised_end,
            g.charged_gs, g.refunded_gs, g.state, g.created_at, g.started_at, g.ended_at, g.breach_gs,
        ).order_by(g.id)
        if floor > FAR_PAST:
            gq = gq.where(or_(g.end >= floor, g.promised_end >= floor, g.created_at >= since))
        grants = tuple(map(GrantFact._make, _fetch(conn, gq)))
        rq = (
            select(r.grant_id, r.gpus, r.started_at, r.ended_at, r.gpu_seconds)
            .where(r.started_at.is_not(None), r.started_at < until, or_(r.ended_at.is_(None), r.ended_at >= since))
            .order_by(r.id)
        )
        runs = tuple(map(RunFact._make, _fetch(conn, rq)))
        eq = (
            select(e.at, e.kind, e.subject, e.data)
            .where(e.at >= since, e.at < until, e.kind.in_(EVENT_KINDS))
            .order_by(e.seq)
        )
        events = tuple(_event(*row) for row in _fetch(conn, eq))
        breaches = breach_intervals(s, grants)  # the same breach refunds as budget
        lent = _lent(conn, since, until)
    return Snapshot(grants, runs, events, breaches, lent)


def _lent(conn: Any, since: int, until: int) -> tuple[LentFact, ...]:
    """Best-effort attempts that held lent GPUs in [since, until), from the daemon's
    ``be_started``/``be_ended`` events (paired by task and attempt)."""
    e = EventRow.__table__.c  # type: ignore[attr-defined]
    rows = _fetch(conn, select(e.at, e.kind, e.data).where(e.kind.in_(("be_started", "be_ended")), e.at < until)
                  .order_by(e.seq))
    if not rows:
        return ()
    b = BestEffortRow.__table__.c  # type: ignore[attr-defined]
    teams = dict(_fetch(conn, select(b.id, b.team)))
    started: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {}
    ended: dict[tuple[int, int], tuple[int, bool]] = {}
    for at, kind, data in rows:
        d = json.loads(data)
        key = (int(d["task"]), int(d["attempt"]))
        if kind == "be_started":
            started[key] = (at, d)
        else:
            ended[key] = (at, d.get("outcome") == "preempted")
    lenders = {d["lender"] for _, d in started.values() if d.get("lender") is not None}
    g = GrantRow.__table__.c  # type: ignore[attr-defined]
    owner = dict(_fetch(conn, select(g.id, g.team).where(g.id.in_(sorted(lenders))))) if lenders else {}
    out = []
    for key, (at, d) in started.items():
        end, preempted = ended.get(key, (None, False))
        if end is not None and end < since:
            continue
        gpus = int(d["gpus"])
        out.append(LentFact(teams.get(int(d["be"]), "?"), owner.get(d.get("lender")), gpus, at, end, preempted))
    return tuple(out)


def _fetch(conn: Any, query: Any) -> list[tuple[Any, ...]]:
    """Rows as plain tuples from the DB-API cursor, skipping SQLAlchemy's per-row processing
    (a third of the load time at 100,000 grants). The query's only bound values are our own
    integers and kind names, so rendering them inline is safe."""
    sql = str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    cur = conn.connection.dbapi_connection.cursor()
    try:
        cur.execute(sql)
        return cur.fetchall()
    finally:
        cur.close()


def _event(at: int, kind: str, subject: str, data: str) -> EventFact:
    if kind != "refused":
        # Only refusals need their data (team, reason): a refused project has no grant row to
        # name its team. Other decisions take the team from their grant, which saves parsing
        # every event of a busy ledger.
        return EventFact(at, kind, subject, None, None)
    try:
        d: dict[str, Any] = json.loads(data)
    except ValueError:
        d = {}
    team = d.get("team")
    reason = d.get("reason")
    return EventFact(at, kind, subject, team if isinstance(team, str) else None,
                     reason if isinstance(reason, str) else None)
