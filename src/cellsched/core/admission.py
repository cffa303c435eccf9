"""Admission: the pure decision ``Schedule.admit(request, now) -> Grant | Refusal``.

A :class:`Schedule` is a snapshot of the cluster's commitments: one node-aware capacity
calendar per pool (``core.nodes``: every grant is placed on nodes by the node rule), one
flat calendar per team with ``max_gpus``, and every team's charges per period. ``admit`` only
reads it; ``commit``, ``release`` and ``move_earlier`` are the only writers, and they are
what the ledger (for real) and the simulator (on a virtual clock) both call. No I/O, no
wall clock: time is an integer passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cellsched import fmt
from cellsched.core.allowance import TeamBook, period_bounds, periods_touched_at_most, split_by_period
from cellsched.core.calendar import CapacityCalendar
from cellsched.core.nodes import NodeCalendar, admissible_widths_near
from cellsched.spec.cluster import ClusterConfig, Policy, Pool, Team


@dataclass(frozen=True, slots=True)
class Request:
    """What admission needs from a spec, in integer units."""

    project: str
    team: str
    width: int
    gpu_seconds: int
    pool: str | None = None
    gpu_type: str | None = None
    not_before: int | None = None
    deadline: int | None = None

    @property
    def duration(self) -> int:
        return -(-self.gpu_seconds // self.width)


@dataclass(frozen=True, slots=True)
class Grant:
    """A window of ``width`` GPUs of ``pool`` over [start, end) that belongs to ``project``,
    on ``nodes`` (indices 0..n-1 in the pool, ascending): one node when ``width`` is at most
    the pool's ``gpus_per_node``, else ``width / gpus_per_node`` whole nodes. The nodes are
    fixed when the grant is made; a grant pulled forward (``start_now``, ``move_earlier``)
    may move to other nodes, and the grant returned says which. ``None`` means "not known
    here" (a grant rebuilt from a ledger that does not store them): ``commit`` then places it
    deterministically and ``release`` finds the nodes its reservation took."""

    project: str
    team: str
    pool: str
    width: int
    start: int
    end: int
    nodes: tuple[int, ...] | None = None

    def placed(self, start: int, end: int, nodes: tuple[int, ...] | None) -> Grant:
        """This grant over [start, end) on ``nodes`` (``dataclasses.replace`` spelled out:
        a replay makes tens of thousands of these, and replace costs several times more)."""
        return Grant(self.project, self.team, self.pool, self.width, start, end, nodes)

    @property
    def gpu_seconds(self) -> int:
        return self.width * (self.end - self.start)


@dataclass(frozen=True, slots=True)
class Alternative:
    """A shape that would be granted now, and one sentence saying how it differs.

    ``changes`` says how the spec becomes it: budget keys (``gpus``, ``gpu_seconds``,
    ``pool``, ``gpu_type``, ``deadline``) and their new values (``core.alternatives.apply``);
    the grant the changed spec gets now is ``pool``, ``width``, ``start``, ``end``."""

    kind: str  # later_start | narrower | wider | smaller | whole_nodes | other_pool | team_width
    pool: str
    width: int
    start: int
    end: int
    gpu_seconds: int
    message: str
    changes: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was not granted: a reason code, a sentence, and what would be."""

    reason: str
    message: str
    alternatives: tuple[Alternative, ...] = ()
    needed: int | None = None
    available: int | None = None
    earliest_start: int | None = None


REASONS = (
    "unknown_team",
    "unknown_pool",
    "wider_than_pool",
    "not_whole_nodes",
    "over_max_gpus",
    "longer_than_max_grant",
    "deadline_passed",
    "deadline_too_close",
    "over_allowance",
    "no_capacity_in_window",
    "name_in_use",  # the service's: another live grant has the spec's name (docs/admission.md)
)


def fmt_time(t: int) -> str:
    """A time in a refusal's sentence, as every command writes one (:func:`cellsched.fmt.when`)."""
    return fmt.when(t)


def fmt_gh(gpu_seconds: int) -> str:
    """GPU-hours in a refusal's sentence, by the one rule: a figure that is not zero never
    reads as zero (:func:`cellsched.fmt.gpu_hours`)."""
    return fmt.gpu_seconds_as_hours(gpu_seconds)


@dataclass
class TeamState:
    config: Team
    book: TeamBook
    calendar: CapacityCalendar | None  # only when the team has max_gpus


@dataclass
class Schedule:
    """Commitments of the whole cluster; admission reads it, commits write it."""

    pools: dict[str, tuple[Pool, NodeCalendar]]
    teams: dict[str, TeamState]
    policy: Policy = field(default_factory=Policy)

    @classmethod
    def empty(cls, cluster: ClusterConfig) -> Schedule:
        return cls(
            pools={p.name: (p, NodeCalendar(p.gpus, p.gpus_per_node)) for p in cluster.pools},
            teams={t.name: _team_state(t) for t in cluster.teams},
            policy=cluster.policy,
        )

    # -- writers -----------------------------------------------------------------------

    def commit(self, grant: Grant) -> Grant:
        """Reserve the grant's GPUs on its nodes (placed here when ``grant.nodes`` is None)
        and charge its team. Raises ValueError on over-commit of the pool, a node or the
        team's ``max_gpus``. Returns the grant with its nodes."""
        _, cal = self.pools[grant.pool]
        team = self.teams[grant.team]
        if team.calendar is not None and team.calendar.min_free(grant.start, grant.end) < grant.width:
            raise ValueError(f"over-commit: team {grant.team} over max_gpus in [{grant.start}, {grant.end})")
        nodes = cal.reserve(grant.start, grant.end, grant.width, grant.nodes)
        if team.calendar is not None:
            team.calendar.reserve(grant.start, grant.end, grant.width)
        team.book.charge(grant.start, grant.end, grant.width)
        return grant if grant.nodes == nodes else grant.placed(grant.start, grant.end, nodes)

    def release(self, grant: Grant, at: int) -> Grant:
        """Give back the part of the window from ``at`` on (the whole of it if ``at`` is
        before the start); refund it. Returns the grant as it now stands (with its nodes)."""
        cut = min(max(at, grant.start), grant.end)
        nodes = grant.nodes
        if cut < grant.end:
            _, cal = self.pools[grant.pool]
            team = self.teams[grant.team]
            nodes = cal.release(cut, grant.end, grant.width, grant.nodes)
            if team.calendar is not None:
                team.calendar.release(cut, grant.end, grant.width)
            team.book.refund(cut, grant.end, grant.width)
        return grant.placed(grant.start, cut, nodes)

    def move_earlier(self, grant: Grant, now: int) -> Grant:
        """Start a waiting grant as early as capacity now allows, never later than it was.

        Same pool, width and length, on whichever nodes fit the new window (maybe others:
        the grant returned says which); the new window is re-charged by period. Returns the
        grant as it now stands (unchanged, on its own nodes, if it cannot move)."""
        if grant.start <= now:
            return grant
        length = grant.end - grant.start
        cal = self.pools[grant.pool][1]
        # A window overlapping its own covers the instant before its start, where the grant
        # holds nothing: with no nodes for it free there it can only jump into a window
        # ending by its start, which needs no release to find (giving the window back and
        # taking it again, on nodes, costs far more than looking).
        if cal.reach(grant.width, grant.start - 1) < grant.start and (
                grant.start - now < length
                or self._earliest_in(grant.pool, grant.team, grant.width, length, now, grant.start) is None):
            return grant
        if grant.nodes is not None and not cal.may_move_earlier(grant.width, length, now, grant.start, grant.nodes):
            return grant  # no nodes for an earlier window even with its own given back
        own = grant.placed(grant.start, grant.end, self.release(grant, grant.start).nodes)
        t = self._earliest_in(grant.pool, grant.team, grant.width, length, now, grant.end)
        book = self.teams[grant.team].book
        while t is not None and t < grant.start:
            nxt = book.next_fit(t, t + length, grant.width)
            if nxt is None:
                break
            t = self._earliest_in(grant.pool, grant.team, grant.width, length, nxt, grant.end)
        if t is None or t >= grant.start:
            return self.commit(own)
        return self.commit(grant.placed(t, t + length, None))

    def pool_takes_now(self, grant: Grant, now: int) -> bool:
        """Whether the pool's nodes take a waiting grant's whole window from ``now``, its own
        given back: the pool's free GPUs before its own window (where it holds nothing), and
        nodes by the node rule (its own or others) over the whole window. Decided without
        touching anything: ``start_now``'s node tests, and the simulator's before an offer."""
        length = grant.end - grant.start
        cal = self.pools[grant.pool][1]
        if cal.min_free(now, min(grant.start, now + length)) < grant.width:
            return False
        return grant.nodes is None or cal.fits_moved(grant.width, now, now + length, grant.start, grant.nodes)

    def start_now(self, grant: Grant, now: int) -> Grant:
        """Start a waiting grant at ``now`` if its whole window fits there, else leave it.

        Same pool, width and length; "fits" means nodes by the node rule are free over
        [now, now + length) with the grant's own window given back (its own nodes or
        others: the grant returned says which), the team's ``max_gpus`` holds, and the
        allowance covers the window charged by period. No other grant moves. Returns the
        grant as it now stands."""
        if grant.start <= now:
            return grant
        length = grant.end - grant.start
        if not self.pool_takes_now(grant, now):
            return grant
        # Before its own window the grant holds nothing: the team's free GPUs there must
        # suffice too (a quick refusal before anything is touched).
        tcal = self.teams[grant.team].calendar
        if tcal is not None and tcal.min_free(now, min(grant.start, now + length)) < grant.width:
            return grant
        cal = self.pools[grant.pool][1]
        book = self.teams[grant.team].book
        own = grant.placed(grant.start, grant.end, self.release(grant, grant.start).nodes)
        nodes = cal.choose(grant.width, now, now + length)
        if nodes is None or (book.period != "none" and book.next_fit(now, now + length, grant.width) is not None):
            return self.commit(own)  # no nodes free, or it would overdraw the period it moves into
        return self.commit(grant.placed(now, now + length, nodes))

    # -- the decision ------------------------------------------------------------------

    def admit(self, req: Request, now: int, alternatives: bool = True) -> Grant | Refusal:
        """Grant the earliest feasible window for ``req``, or say why not and what would fit
        (``core.alternatives``; with ``alternatives`` false, a refusal is the bare reason,
        its message unwritten: what the alternatives' own checks need)."""
        out = self._admit(req, now, alternatives)
        if isinstance(out, Refusal) and alternatives:
            from cellsched.core import alternatives as alts

            return alts.offer(self, req, out, now)
        return out

    def _admit(self, req: Request, now: int, full: bool) -> Grant | Refusal:
        team = self.teams.get(req.team)
        if team is None:
            return Refusal("unknown_team", f"team {req.team!r} is not in the cluster config.")
        pools = self._candidate_pools(req)
        if isinstance(pools, Refusal):
            return pools
        width, duration = req.width, req.duration
        widest = max(p.gpus for p in pools)
        if width > widest:
            where = f"pool {pools[0].name}" if len(pools) == 1 else "any matching pool"
            # The widest grant the node rule lets a pool take (whole nodes only, past one).
            most = max(self.pools[p.name][1].admissible_widths(1, p.gpus + 1)[-1] for p in pools)
            rule = "" if most == widest else f" (the widest grant is {most}: one wider than a node takes whole nodes)"
            return Refusal(
                "wider_than_pool",
                f"{width} GPUs requested, {where} has only {widest}{rule}.",
                needed=width,
                available=most,
            )
        max_gpus = team.config.max_gpus
        if max_gpus is not None and width > max_gpus:
            return Refusal(
                "over_max_gpus",
                f"{width} GPUs requested, team {req.team} may hold at most {max_gpus} at once.",
                needed=width,
                available=max_gpus,
            )
        max_s = self.policy.max_grant_s
        if max_s is not None and duration > max_s:
            need = -(-req.gpu_seconds // max_s)
            # The fewest GPUs that make it short enough, by the node rule, in a candidate
            # pool and within the team's max_gpus; else what the widest grant would take.
            cap = widest if max_gpus is None else min(widest, max_gpus)
            wide = [w for p in pools for w in self.pools[p.name][1].admissible_widths(need, min(p.gpus, cap) + 1)[:1]]
            if wide:
                hint = f"ask for at least {min(wide)} GPUs"
            else:
                most = max((w for p in pools for w in self.pools[p.name][1].admissible_widths(
                    max(1, min(p.gpus, cap) - p.gpus_per_node), min(p.gpus, cap) + 1)[-1:]), default=width)
                hint = (f"even the widest grant, {most} GPUs, would take "
                        f"{-(-req.gpu_seconds // most) / 3600:,.1f} h: ask for fewer GPU-hours")
            return Refusal(
                "longer_than_max_grant",
                f"{fmt.plural(width, 'GPU')} for {req.gpu_seconds / 3600:,.1f} GPU-hours is a window of "
                f"{duration / 3600:,.1f} h; the longest grant is {max_s / 3600:,.1f} h ({hint}).",
                needed=duration,
                available=max_s,
            )
        earliest = max(now + self.policy.min_notice_s, req.not_before or now)
        if req.deadline is not None and earliest + duration > req.deadline:
            if req.deadline <= now:
                return Refusal(
                    "deadline_passed",
                    f"the deadline {fmt_time(req.deadline)} has passed.",
                    needed=duration,
                    available=0,
                )
            return Refusal(
                "deadline_too_close",
                f"a {fmt.duration(duration)} window starting no earlier than "
                f"{fmt_time(earliest)} cannot end by the deadline {fmt_time(req.deadline)}.",
                needed=duration,
                available=max(0, req.deadline - earliest),
            )
        gs_needed = width * duration
        book = team.book
        # A window may straddle periods and is charged to each by its part, so only what
        # cannot fit even spread over every period it could touch is refused outright.
        if book.allowance * periods_touched_at_most(duration, book.period) < gs_needed:
            return Refusal(
                "over_allowance",
                f"{fmt_gh(gs_needed)} GPU-hours is more than team {req.team}'s whole "
                f"allowance of {fmt_gh(book.allowance)} GPU-hours per {book.period}.",
                needed=gs_needed,
                available=book.allowance,
            )
        horizon = now + self.policy.horizon_days * 86400
        fitting = [p for p in pools if self.pools[p.name][1].admits(width)]
        if not fitting:
            return self._not_whole_nodes(req, pools)
        pushed = [False]
        found = self._search(fitting, req.team, width, duration, earliest, req.deadline, horizon, True, pushed)
        if found is not None:
            pool, start = found
            nodes = self.pools[pool][1].choose(width, start, start + duration)
            return Grant(req.project, req.team, pool, width, start, start + duration, nodes)
        if not full:
            return Refusal("no_capacity_in_window" if not pushed[0] else "over_allowance", "")
        # Not found and the allowance never moved the search: capacity alone has no window.
        return self._refuse(req, fitting, earliest, horizon, no_capacity=not pushed[0])

    # -- helpers -----------------------------------------------------------------------

    def _candidate_pools(self, req: Request) -> list[Pool] | Refusal:
        if req.pool is not None:
            entry = self.pools.get(req.pool)
            if entry is None:
                known = ", ".join(self.pools)
                return Refusal("unknown_pool", f"no pool named {req.pool!r} (pools: {known}).")
            return [entry[0]]
        pools = [p for p, _ in self.pools.values()]
        if req.gpu_type is not None:
            pools = [p for p in pools if p.gpu_type == req.gpu_type]
            if not pools:
                types = ", ".join(sorted({p.gpu_type for p, _ in self.pools.values()}))
                return Refusal("unknown_pool", f"no pool has gpu_type {req.gpu_type!r} (types: {types}).")
        return pools

    def _earliest_in(self, pool: str, team: str, width: int, duration: int, start: int,
                     deadline: int | None) -> int | None:
        """Earliest t >= start at which ``width`` GPUs fit the pool's nodes and the team's
        ``max_gpus`` over [t, t + duration), ending by ``deadline``."""
        pcal = self.pools[pool][1]
        tcal = self.teams[team].calendar
        t: int | None = start
        while t is not None:
            t = pcal.earliest_fit(width, duration, t, deadline)
            if t is None or tcal is None:
                return t
            t2 = tcal.earliest(width, duration, t, deadline)
            if t2 == t:
                return t
            t = t2
        return None

    def _search(
        self,
        pools: list[Pool],
        team: str,
        width: int,
        duration: int,
        earliest: int,
        deadline: int | None,
        horizon: int,
        with_allowance: bool,
        pushed: list[bool] | None = None,
    ) -> tuple[str, int] | None:
        """Earliest (pool, start) over the candidate pools; ties go to config order.
        ``pushed[0]`` is set when the allowance moved a start later."""
        best: tuple[str, int] | None = None
        book = self.teams[team].book
        for pool in pools:
            if pool.gpus < width or not self.pools[pool.name][1].admits(width):
                continue
            limit = horizon if best is None else min(horizon, best[1] - 1)
            # Starts past the limit are no answer: let the calendar stop scanning there.
            end_by = limit + duration if deadline is None else min(deadline, limit + duration)
            t = self._earliest_in(pool.name, team, width, duration, earliest, end_by)
            while t is not None and t <= limit and with_allowance:
                nxt = book.next_fit(t, t + duration, width)
                if nxt is None:
                    break
                if pushed is not None:
                    pushed[0] = True
                t = self._earliest_in(pool.name, team, width, duration, nxt, end_by)
            if t is not None and t <= limit:
                best = (pool.name, t)
        return best

    def _refuse(self, req: Request, pools: list[Pool], earliest: int, horizon: int,
                no_capacity: bool = False) -> Refusal:
        """The refusal of ``req`` with its alternatives (``no_capacity``: the caller's search
        already shows that capacity alone has no window by the deadline)."""
        width, duration = req.width, req.duration
        book = self.teams[req.team].book
        capacity_only = None if no_capacity else self._search(
            pools, req.team, width, duration, earliest, req.deadline, horizon, False)
        # With no window by the deadline (nor the horizon), the later start lies past them:
        # the search for it need not walk that stretch again.
        later_from = earliest
        if capacity_only is None:
            last = horizon if req.deadline is None else min(req.deadline - duration, horizon)
            later_from = max(earliest, last + 1)
        later = self._search(pools, req.team, width, duration, later_from, None, horizon, True)
        if capacity_only is not None:
            from cellsched.core.alternatives import period_label

            pool, start = capacity_only
            # Name the period the earliest window with the GPUs free overdraws: a window is
            # charged to each period by its part, and the short one may be the next.
            short = book.shortfall(start, start + duration, width)
            p0 = short[0] if short is not None else period_bounds(start, book.period)[0]
            left = max(0, book.allowance - book.charged.get(p0, 0))
            part = sum(gs for q, gs in split_by_period(start, start + duration, width, book.period) if q == p0)
            where = "in total" if book.period == "none" else f"in {period_label(p0, book.period)}"
            msg = (f"{fmt_gh(width * duration)} GPU-hours needed, team {req.team} has {fmt_gh(left)} of its "
                   f"{fmt_gh(book.allowance)} GPU-hours left {where}")
            if part < width * duration:
                msg += (f", where the earliest window with the GPUs free ({fmt_time(start)}) puts "
                        f"{fmt_gh(part)} of them (windows are charged to each period by their part)")
            return Refusal(
                "over_allowance",
                msg + ".",
                needed=width * duration,
                available=left,
                earliest_start=start,
            )
        # What is in the way: the pool's GPUs, or (when the pool alone has a window) the
        # team's own grants under its max_gpus; or a not_before past the horizon.
        team = self.teams[req.team]
        tcal = team.calendar
        end_by = horizon + duration if req.deadline is None else min(req.deadline, horizon + duration)
        team_bound = tcal is not None and earliest <= horizon and any(
            self.pools[p.name][1].earliest_fit(width, duration, earliest, end_by) is not None for p in pools)
        who = fmt.plural(width, "GPU")
        if team_bound:
            who = (f"team {req.team} may hold at most {team.config.max_gpus} GPUs at once: beside its other "
                   f"grants, {width} more")
        if earliest > horizon:
            what = (f"not_before {fmt_time(earliest)}" if req.not_before is not None and req.not_before >= earliest
                    else f"the earliest start the notice allows, {fmt_time(earliest)},")
            msg = (f"{what} is past the horizon: admission looks for a window starting by "
                   f"{fmt_time(horizon)} ({self.policy.horizon_days} days ahead).")
        elif req.deadline is None:
            msg = f"{who} are not free together for {duration / 3600:,.1f} h within the horizon of {self.policy.horizon_days} days."
        elif later is not None and later[1] >= req.deadline:
            msg = (
                f"{who} are free together only from {fmt_time(later[1])}, "
                f"after your deadline {fmt_time(req.deadline)}."
            )
        elif later is not None:
            # Free before the deadline, but not for long enough to finish by it.
            msg = (
                f"{who} are free together for {fmt_gh(duration)} h only from "
                f"{fmt_time(later[1])}, too late to end by your deadline {fmt_time(req.deadline)}."
            )
        else:
            msg = f"{who} are not free together for {duration / 3600:,.1f} h before your deadline {fmt_time(req.deadline)}."
        span = (earliest, earliest + duration)
        room = None if tcal is None else tcal.min_free(*span)
        available = max((self._widest_for(p, room, *span) for p in pools), default=0)
        return Refusal(
            "no_capacity_in_window",
            msg,
            needed=width,
            available=available,
            earliest_start=None if later is None else later[1],
        )

    def _widest_for(self, pool: Pool, room: int | None, start: int, end: int) -> int:
        """The widest grant the node rule fits in ``pool`` over [start, end), of at most
        ``room`` GPUs (what the team's max_gpus leaves) when that is given."""
        cal = self.pools[pool.name][1]
        widest = cal.widest_fit(start, end)
        if room is None or widest <= room:
            return widest
        # Every width the node rule allows up to the widest fit fits too (on its nodes).
        below = cal.admissible_widths(max(1, room - cal.per_node), room + 1)
        return below[-1] if below else 0

    def _not_whole_nodes(self, req: Request, pools: list[Pool]) -> Refusal:
        """The width is wider than a node and not a whole number of nodes in any candidate
        pool: refused, naming the nearest widths that are (offered by ``core.alternatives``)."""
        width = req.width
        near = sorted({w for p in pools for w in admissible_widths_near(
            width, p.gpus_per_node, self.pools[p.name][1].full_nodes) if w <= p.gpus})
        per_s = " or ".join(str(x) for x in sorted({p.gpus_per_node for p in pools}))
        return Refusal(
            "not_whole_nodes",
            f"{width} GPUs is wider than one node ({per_s} GPUs) and not a whole number of "
            f"nodes: a grant wider than a node takes whole nodes (ask for "
            f"{' or '.join(str(w) for w in near)} GPUs).",
            needed=width,
            available=near[0] if near else None,
        )


RESERVE_OLDEST = 1
"""How many of the oldest waiting grants ``start_waiting_now`` moves to their earliest
window before it starts others under ``pull_forward = "hold_oldest"`` (docs/admission.md,
"The oldest grant holds its place")."""

BUSY_BACKLOG_S = 3 * 3600
"""Under ``pull_forward = "hold_when_busy"`` the oldest waiting grant holds its place only
while its pool has at least this much work waiting (its waiting grants' GPU-seconds over its
GPUs): where the queue is short the held window strands GPUs that nothing else fits around
(docs/simulate.md, "Tail waits")."""


@dataclass(frozen=True, slots=True)
class Hold:
    """Which waiting grants hold their place before ``start_now`` starts others: the
    ``count`` oldest of those at least ``min_width`` GPUs wide (narrow grants are not the
    tail: a narrow window fits the gaps that wide ones leave)."""

    count: int = 0
    min_width: int = 1
    biggest: int = 0  # then this many more, largest window (GPU-seconds) first
    ahead_s: int = 0  # the oldest holds only while its window starts at least this far ahead
    # Only while the grant's pool has at least this much work waiting: the GPU-seconds of
    # its waiting grants (those not starting now, as the pass begins) over its GPUs.
    backlog_s: int = 0

    def __bool__(self) -> bool:
        return self.count > 0 or self.biggest > 0

    def holds(self, g: Grant) -> bool:
        return g.width >= self.min_width

    def busy(self, waiting_gs: int, gpus: int) -> bool:
        """Whether a pool of ``gpus`` with ``waiting_gs`` GPU-seconds waiting is busy enough
        for the hold (always, without ``backlog_s``)."""
        return waiting_gs >= self.backlog_s * gpus


def as_hold(reserve: int | Hold) -> Hold:
    """A bare count (the older form of ``reserve``) is that many oldest grants, any width."""
    return reserve if isinstance(reserve, Hold) else Hold(reserve)


def pull_rule(name: str) -> tuple[str, Hold]:
    """A cluster's ``policy.pull_forward`` as (the pass: ``start_now`` or ``compact``, which
    oldest waiting grants hold their place first)."""
    if name == "hold_oldest":
        return "start_now", Hold(RESERVE_OLDEST)
    if name == "hold_when_busy":
        return "start_now", Hold(RESERVE_OLDEST, backlog_s=BUSY_BACKLOG_S)
    if name in ("start_now", "compact"):
        return name, Hold()
    if name.startswith("hold:"):  # experiments (benchmarks/tail.py):
        # hold:COUNT:MIN_WIDTH[:BIGGEST[:AHEAD_S[:BACKLOG_S]]]
        _, c, w, *b = name.split(":")
        more = [int(x) for x in b] + [0, 0, 0]
        return "start_now", Hold(int(c), int(w), more[0], more[1], more[2])
    raise ValueError(f"unknown pull_forward rule {name!r}")


def start_waiting_now(schedule: Schedule, waiting: list[tuple[int, Grant]], now: int,
                      reserve: int | Hold = 0) -> list[tuple[int, Grant, Grant]]:
    """The ``start_now`` pull-forward rule over waiting grants keyed by submission order
    (the key is the tie-breaker and says which grant is oldest).

    1. The oldest waiting grant (of those ``reserve`` holds: ``Hold``) is moved as early as
       the calendar allows (``Schedule.move_earlier``): now, or an earlier window in the
       future, which holds its place against everything started after it; if it starts
       now, the next oldest, until ``reserve.count`` grants are left waiting (or none is).
       As EASY reserves for its head, but on a promise: the window only ever moves earlier.
    2. Repeatedly the longest waiting grant (length of its window; ties by earlier start,
       then key) whose whole window fits now starts now, until none does. Longest first
       because a long window needs a long run of free GPUs, which is rare; short ones fit
       the gaps later. (A grant of step 1 is among them: a start here gives back the rest
       of the starter's old window, which may let it fit now after all.)

    Without step 1 the widest grants start at their promise while narrower work fills
    every gap (the tail of the waits). Returns (key, old, new) for each move, in order. The
    simulator finds the same grants by index."""
    hold = as_hold(reserve)
    left = sorted(((k, g) for k, g in waiting if g.start > now), key=lambda kg: kg[0])
    out: list[tuple[int, Grant, Grant]] = []
    tried: set[int] = set()
    holds = hold.holds
    if hold.backlog_s:
        work: dict[str, int] = {}
        for _, g in left:
            work[g.pool] = work.get(g.pool, 0) + g.gpu_seconds
        deep = {p for p, gs in work.items() if hold.busy(gs, schedule.pools[p][1].capacity)}
        holds = lambda g: hold.holds(g) and g.pool in deep  # noqa: E731
    left = _hold_places(schedule, left, now, hold.count, holds, out, tried, hold.ahead_s)
    if hold.biggest:
        left.sort(key=lambda kg: (-kg[1].gpu_seconds, kg[0]))
        left = _hold_places(schedule, left, now, hold.biggest, lambda g: True, out, tried)
    rest = left
    rest.sort(key=lambda kg: (kg[1].start - kg[1].end, kg[1].start, kg[0]))
    while True:
        for i, (k, g) in enumerate(rest):
            ng = schedule.start_now(g, now)
            if ng.start == now:
                out.append((k, g, ng))
                del rest[i]
                break
        else:
            return out


def _hold_places(schedule: Schedule, left: list[tuple[int, Grant]], now: int, count: int,
                 holds, out: list[tuple[int, Grant, Grant]], tried: set[int],  # type: ignore[no-untyped-def]
                 ahead_s: int = 0) -> list[tuple[int, Grant]]:
    """Step 1 of ``start_waiting_now`` over ``left`` in its order: grants ``holds`` accepts,
    not ``tried`` before, move to their earliest window until ``count`` of them are left
    waiting. Returns the waiting grants as they now stand, in order, but those that
    started now; appends every move to ``out`` and every grant tried to ``tried``. The first
    grant due to hold whose window starts less than ``ahead_s`` from now ends the step (the
    queue ahead of it is short: it holds nothing)."""
    rest: list[tuple[int, Grant]] = []
    held = 0
    for k, g in left:
        if held >= count or not holds(g) or k in tried:
            rest.append((k, g))
            continue
        if g.start - now < ahead_s:
            held = count
            rest.append((k, g))
            continue
        tried.add(k)
        ng = schedule.move_earlier(g, now)
        if ng.start < g.start:
            out.append((k, g, ng))
        if ng.start > now:
            held += 1
            rest.append((k, ng))
    return rest


def _team_state(team: Team) -> TeamState:
    cal = None if team.max_gpus is None else CapacityCalendar(team.max_gpus)
    return TeamState(team, TeamBook(team.allowance_gpu_seconds, team.period), cal)


def request_from_spec(spec) -> Request:  # type: ignore[no-untyped-def]
    """The admission view of a :class:`~cellsched.spec.models.ProjectSpec`."""
    b = spec.budget
    return Request(
        project=spec.name,
        team=spec.team,
        width=b.gpus,
        gpu_seconds=b.gpu_seconds,
        pool=b.pool,
        gpu_type=b.gpu_type,
        not_before=b.not_before_s,
        deadline=b.deadline_s,
    )
