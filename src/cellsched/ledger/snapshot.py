"""The ledger seen by the pure core: the admission snapshot (``load_schedule``).

Read by submit (service), by the reconciler's pull-forward and by the simulator's checks;
one builder so every caller sees the same calendar and the same allowance books."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from sqlmodel import Session, and_, col, func, or_, select

from cellsched.core.admission import Grant, Schedule
from cellsched.core.allowance import period_bounds
from cellsched.core.calendar import FAR_PAST
from cellsched.core.nodes import node_sizes
from cellsched.ledger.breaches import breach_intervals
from cellsched.ledger.tables import (
    LIVE_STATES,
    EventRow,
    GrantRow,
    GrantRuntimeRow,
    JobRunRow,
    NodeMapRow,
    ProjectRow,
    SchemaInfo,
)
from cellsched.spec.cluster import ClusterConfig



def nodes_of(row: GrantRow) -> list[int] | None:
    """The pool node indices a grant's window is on (None: not recorded, an older ledger)."""
    return None if not row.nodes else [int(n) for n in json.loads(row.nodes)]


def nodes_json(nodes: Sequence[int] | None) -> str | None:
    return None if nodes is None else json.dumps(sorted(nodes))


def grant_of(row: GrantRow) -> Grant:
    nodes = nodes_of(row)
    return Grant(row.project, row.team, row.pool, row.width, row.start, row.end,
                 None if nodes is None else tuple(nodes))


def load_schedule(s: Session, cluster: ClusterConfig, now: int,
                  live: list[tuple[int, Grant]] | None = None) -> Schedule:
    """The core's snapshot: every window still ahead reserved, every charge counted, every
    breach refunded (docs/daemon.md, "Guarantee breaches") to the period in which the GPUs were not provided.

    ``live``, if given, is filled with every grant holding GPUs from ``now`` on (running or
    waiting), keyed by id in id order: the expected start's replay input, read here from the
    same rows (``ledger.history.live_grants`` reads the same set on its own)."""
    sched = Schedule.empty(cluster)
    # Per team, the windows that end after its open allowance period began: an older one
    # reserves nothing ahead and charges only periods that are over, which admission never
    # asks of. A ledger of years is read a period at a time.
    teams = charged_from(sched, now)
    since = [col(GrantRow.team) == name if t0 is None else and_(col(GrantRow.team) == name, col(GrantRow.end) > t0)
             for name, t0 in teams.items()]
    since.append(and_(col(GrantRow.team).not_in(list(teams)), col(GrantRow.end) > now))
    q = select(GrantRow).where(col(GrantRow.end) > col(GrantRow.start), or_(*since))
    rows = list(s.exec(q.order_by(col(GrantRow.id))))
    breaches = breach_intervals(s, rows)
    for row in rows:
        nodes = nodes_of(row) if row.end > now else None  # parsed once, for the live list and the calendar
        if live is not None and row.end > now and row.state in LIVE_STATES:
            live.append((row.id or 0, Grant(row.project, row.team, row.pool, row.width, row.start, row.end,
                                            None if nodes is None else tuple(nodes))))
        if row.pool not in sched.pools:
            continue  # config no longer names it; nothing of it can be admitted against
        # A team the config no longer names has no allowance to charge, but its grants
        # still hold their GPUs: the daemon runs them whatever the config says of the team.
        team = sched.teams.get(row.team)
        if team is not None:
            team.book.charge(row.start, row.end, row.width)
            for b0, b1, w in breaches.get(row.id or 0, ()):
                team.book.refund(b0, b1, w)
        lo = max(row.start, now)
        if row.end > lo:
            try:
                sched.pools[row.pool][1].reserve(lo, row.end, row.width, None if nodes is None else tuple(nodes))
                if team is not None and team.calendar is not None:
                    team.calendar.reserve(lo, row.end, row.width)
            except ValueError:
                pass  # the pool shrank below what was granted: a breach, shown by status
    lost = [(r.pool, r.index) for r in s.exec(select(NodeMapRow).where(col(NodeMapRow.node_id).is_(None)))]
    if lost:
        _block_lost_nodes(sched, cluster, rows, lost, now)
    return sched


def charged_from(sched: Schedule, now: int) -> dict[str, int | None]:
    """Per team of ``sched``: the instant its grants must end after to matter at ``now``,
    the start of its allowance period open at ``now`` (None, every grant, for a period of
    ``none``: all time is one period). Before it a window reserves nothing from now on and
    charges only periods that are over."""
    out: dict[str, int | None] = {}
    for name, t in sched.teams.items():
        p0 = period_bounds(now, t.book.period)[0]
        out[name] = None if p0 == FAR_PAST else p0
    return out


def _block_lost_nodes(sched: Schedule, cluster: ClusterConfig, rows: list[GrantRow],
                      lost: list[tuple[str, int]], now: int) -> None:
    """A calendar node with no Ray node now (lost, or never there: ``cs_node_map``) takes
    no new window: what its grants leave free is held from now on, so admission and
    pull-forwards use only nodes that exist, and its own grants (moved off it by the daemon
    where other nodes are free) keep their places. A node that comes back frees it again."""
    for pool_name, idx in lost:
        pool = cluster.pool(pool_name)
        if pool is None or pool_name not in sched.pools:
            continue
        sizes = node_sizes(pool.gpus, pool.gpus_per_node)
        if not 0 <= idx < len(sizes):
            continue
        far = now + 2 * cluster.policy.horizon_days * 86400
        steps: dict[int, int] = {now: 0, far: 0}
        for row in rows:
            nodes = nodes_of(row) if row.pool == pool_name and row.state in LIVE_STATES and row.end > now else None
            if not nodes or idx not in nodes:
                continue
            g = row.width if len(nodes) == 1 else pool.gpus_per_node
            steps[max(row.start, now)] = steps.get(max(row.start, now), 0) + g
            steps[row.end] = steps.get(row.end, 0) - g
        cal = sched.pools[pool_name][1]
        used, times = 0, sorted(t for t in steps if t <= far)
        for a, b in zip(times, times[1:]):
            used += steps[a]
            free = sizes[idx] - used
            if free > 0:
                try:
                    cal.reserve(a, b, free, (idx,))
                except ValueError:
                    pass  # nothing to hold there




def waiting_grants(now: int):  # type: ignore[no-untyped-def]
    """Grants not started whose window is still ahead: what a pull-forward may move."""
    return select(GrantRow).where(GrantRow.state == "granted", col(GrantRow.start) > now)


@dataclass
class DaemonSnapshot:
    """What the daemon handles, read in one transaction: grants with a runtime row not yet
    finalized or notified, plus granted ones whose start has come, in (start, id) order;
    their runtime rows, attempts and projects; and which of them were ever ``placed``."""

    grants: list[GrantRow] = field(default_factory=list)
    runtime: dict[int, GrantRuntimeRow] = field(default_factory=dict)
    runs: dict[int, list[JobRunRow]] = field(default_factory=dict)
    projects: dict[str, ProjectRow] = field(default_factory=dict)
    placed: dict[int, bool] = field(default_factory=dict)
    # The ledger's event sequence when read, and the next instant a granted grant becomes
    # due (None: none waits): until either moves, this snapshot is still the ledger's truth.
    seq: int = 0
    next_due: int | None = None

    def current(self, seq: int, now: int) -> bool:
        """Whether this (whole) snapshot still holds at ``now`` with the ledger at ``seq``."""
        return seq == self.seq and (self.next_due is None or now < self.next_due)


def ledger_seq(s: Session) -> int:
    """The event chain's head: every write the ledger takes appends an event, so an unchanged
    sequence means unchanged grants, attempts and runtime rows."""
    info = s.get(SchemaInfo, 1)
    return 0 if info is None else info.head_seq


def load_daemon_snapshot(s: Session, now: int, only: Collection[int] | None = None,
                         known_placed: Mapping[int, bool] | None = None) -> DaemonSnapshot:
    """A handful of queries whatever the number of grants. ``only``: just these grants.
    ``placed`` is filled for handled grants not in ``known_placed`` (a cache of the events)."""
    q = select(GrantRuntimeRow).where(
        or_(col(GrantRuntimeRow.finalized).is_(False), col(GrantRuntimeRow.notified).is_(False)))
    q2 = select(GrantRow).where(GrantRow.state == "granted", col(GrantRow.start) <= now)
    if only is not None:
        q = q.where(col(GrantRuntimeRow.grant_id).in_(list(only)))
        q2 = q2.where(col(GrantRow.id).in_(list(only)))
    out = DaemonSnapshot(runtime={r.grant_id: r for r in s.exec(q).all()}, seq=ledger_seq(s))
    out.next_due = s.exec(select(func.min(GrantRow.start)).where(
        GrantRow.state == "granted", col(GrantRow.start) > now)).first()
    if out.runtime:
        out.grants = list(s.exec(select(GrantRow).where(col(GrantRow.id).in_(list(out.runtime)))).all())
    out.grants += [g for g in s.exec(q2).all() if g.id not in out.runtime]
    out.grants.sort(key=lambda g: (g.start, g.id or 0))
    if not out.grants:
        return out
    ids = [g.id for g in out.grants]
    for jr in s.exec(select(JobRunRow).where(col(JobRunRow.grant_id).in_(ids)).order_by(col(JobRunRow.id))):
        out.runs.setdefault(jr.grant_id, []).append(jr)
    out.projects = {p.id: p for p in s.exec(select(ProjectRow).where(
        col(ProjectRow.id).in_(list({g.project_id for g in out.grants}))))}
    known = known_placed or {}
    todo = [g for g in out.grants if g.id in out.runtime and (g.id or 0) not in known]
    if todo:
        placed = set()
        subjects = list({g.project_id for g in todo})
        for e in s.exec(select(EventRow).where(EventRow.kind == "placed", col(EventRow.subject).in_(subjects))):
            placed.add(json.loads(e.data).get("grant"))
        out.placed = {g.id or 0: g.id in placed for g in todo}
    return out
