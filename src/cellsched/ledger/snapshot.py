"""The ledger seen by the pure core: the admission snapshot (``load_schedule``).

Read by submit (service), by the reconciler's pull-forward and by the simulator's checks;
one builder so every caller sees the same calendar and the same allowance books."""

from __future__ import annotations

from sqlmodel import Session, col, select

from cellsched.core.admission import Grant, Schedule
from cellsched.ledger.breaches import breach_intervals
from cellsched.ledger.tables import GrantRow
from cellsched.spec.cluster import ClusterConfig



def grant_of(row: GrantRow) -> Grant:
    return Grant(row.project, row.team, row.pool, row.width, row.start, row.end)


def load_schedule(s: Session, cluster: ClusterConfig, now: int) -> Schedule:
    """The core's snapshot: every window still ahead reserved, every charge counted, every
    breach refunded (DESIGN §2) to the period in which the GPUs were not provided."""
    sched = Schedule.empty(cluster)
    rows = list(s.exec(select(GrantRow).where(col(GrantRow.end) > col(GrantRow.start)).order_by(col(GrantRow.id))))
    breaches = breach_intervals(s, rows)
    for row in rows:
        if row.pool not in sched.pools or row.team not in sched.teams:
            continue  # config no longer names it; nothing of it can be admitted against
        team = sched.teams[row.team]
        team.book.charge(row.start, row.end, row.width)
        for b0, b1, w in breaches.get(row.id or 0, ()):
            team.book.refund(b0, b1, w)
        lo = max(row.start, now)
        if row.end > lo:
            try:
                sched.pools[row.pool][1].reserve(lo, row.end, row.width)
                if team.calendar is not None:
                    team.calendar.reserve(lo, row.end, row.width)
            except ValueError:
                pass  # the pool shrank below what was granted: a breach, shown by status
    return sched


