"""What a refusal offers instead, and what delayed a grant (pure, like ``core.admission``).

Every alternative is a **change to the spec** (``changes``: budget keys ``gpus``,
``gpu_seconds``, ``pool``, ``gpu_type``, ``deadline``) and the grant admission gives the
changed request against the same snapshot: it is built by admitting the changed request
(``Schedule.admit(..., alternatives=False)``), so submitting it unchanged at the same moment
is granted at the start offered, by construction. Which changes are tried depends on the
reason (docs/admission.md, "Refusals"); when none of those is granted, a sweep over every
pool and every width the node rule allows (same GPU-hours, no deadline; then a one-hour
window) finds one if any exists, so a refusal offers nothing only when nothing of that kind
would be granted within the horizon.

The module reads the schedule through its helpers (``_candidate_pools``, ``_search``) and
``admit``; it writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cellsched import fmt
from cellsched.core.allowance import period_bounds, periods_touched_at_most

if TYPE_CHECKING:
    from cellsched.core.admission import Alternative, Grant, Refusal, Request, Schedule
    from cellsched.spec.cluster import Pool

Changes = tuple[tuple[str, Any], ...]

SWEEP_WIDTHS = 40
"""How many widths the last-resort sweep tries per GPU-hours figure (nearest the asked width
first): every width of a small cluster; on a large one the widths around the request."""

TRIES = 8
"""How many widths a search up (``wider``) or down (spreading over periods) admits at most."""

TAKE_SLACK_S = 60
"""An alternative must still be granted when submitted this long after the refusal
(``submit --take`` plans, writes the changed spec, then submits it: seconds later). Only a
window that starts at the earliest start ``now`` allows moves as time passes; such an
alternative is admitted again this much later (else not offered), a deadline the
alternative moves itself is set this much past the window's end (to the minute), and a
budget the allowance sets leaves room for a start this much later."""


def apply(req: Request, changes: Iterable[tuple[str, Any]]) -> Request:
    """The request with an alternative's changes made (what ``submit --take`` seals)."""
    d = dict(changes)
    return replace(
        req,
        width=d.get("gpus", req.width),
        gpu_seconds=d.get("gpu_seconds", req.gpu_seconds),
        pool=d["pool"] if "pool" in d else req.pool,
        gpu_type=d["gpu_type"] if "gpu_type" in d else req.gpu_type,
        deadline=d["deadline"] if "deadline" in d else req.deadline,
    )


@dataclass
class _Ctx:
    sched: Schedule
    req: Request
    refusal: Refusal
    now: int

    @property
    def earliest(self) -> int:
        return max(self.now + self.sched.policy.min_notice_s, self.req.not_before or self.now)

    def moves(self, t: int) -> bool:
        """Whether a window starting at ``t`` starts where the clock puts it (within
        ``TAKE_SLACK_S`` of the earliest start ``now`` allows), so moves as time passes."""
        return t < self.now + self.sched.policy.min_notice_s + TAKE_SLACK_S

    @property
    def horizon(self) -> int:
        return self.now + self.sched.policy.horizon_days * 86400

    def pools(self) -> list[Pool]:
        """The request's candidate pools (every pool when it names none that exists)."""
        got = self.sched._candidate_pools(self.req)
        if isinstance(got, list):
            return got
        return [p for p, _ in self.sched.pools.values()]

    def max_width(self) -> int:
        team = self.sched.teams[self.req.team].config
        widest = max((p.gpus for p in self.pools()), default=0)
        return widest if team.max_gpus is None else min(widest, team.max_gpus)

    def widths(self, lo: int, hi: int, pools: list[Pool] | None = None) -> list[int]:
        """Widths w, lo <= w < hi, the node rule allows in some of ``pools``, ascending."""
        cals = [self.sched.pools[p.name][1] for p in (pools if pools is not None else self.pools())]
        return sorted({w for c in cals for w in c.admissible_widths(lo, hi)})

    def max_s(self) -> int | None:
        return self.sched.policy.max_grant_s


def offer(sched: Schedule, req: Request, refusal: Refusal, now: int) -> Refusal:
    """``refusal`` with its alternatives: those its reason calls for, each granted as it
    stands; else the sweep's one (none only when no pool, width or GPU-hours figure tried
    would be granted)."""
    ctx = _Ctx(sched, req, refusal, now)
    out: list[Alternative] = []
    seen: set[tuple[Any, ...]] = set()

    def add(alts: Iterable[Alternative | None]) -> None:
        for a in alts:
            if a is None:
                continue
            key = (a.pool, a.width, a.start, a.end)
            if key not in seen:
                seen.add(key)
                out.append(a)

    if refusal.reason != "unknown_team":
        add(_BY_REASON.get(refusal.reason, lambda c: ())(ctx))
        if not out:
            add(_sweep(ctx))
    return replace(refusal, alternatives=tuple(out))


# -- one alternative: a change, admitted ------------------------------------------------------


def _try(ctx: _Ctx, kind: str | None, changes: Changes) -> Alternative | None:
    """The alternative ``changes`` make, if admission grants them now; else None. A kind of
    None is read from the changes (the sweep's)."""
    from cellsched.core.admission import Alternative, Grant

    req = ctx.req
    got = ctx.sched.admit(apply(req, changes), ctx.now, alternatives=False)
    if not isinstance(got, Grant):
        return None
    d = dict(changes)
    # A start ``now`` bounds (not capacity, the allowance or not_before) moves with the clock.
    moves = ctx.moves(got.start)
    if "deadline" in d and d["deadline"] is None and req.deadline is not None:
        # The earliest deadline that works: where the window ends, or (a window that moves
        # with the clock) a minute past it, so that a submit a moment later is granted too.
        d["deadline"] = got.end if not moves else -(-(got.end + TAKE_SLACK_S) // 60) * 60
    if "pool" in d:
        # Searched over more pools than the spec names: name the pool it landed in, unless
        # it is one of the spec's own (then the spec's search finds it again, first).
        if got.pool in {p.name for p in _own_pools(ctx)}:
            del d["pool"]
            d.pop("gpu_type", None)
        else:
            d["pool"], d["gpu_type"] = got.pool, None
    current = {"gpus": req.width, "gpu_seconds": req.gpu_seconds, "pool": req.pool,
               "gpu_type": req.gpu_type, "deadline": req.deadline}
    d = {k: v for k, v in d.items() if current[k] != v}
    if moves:
        # A window that moves with the clock may run into the deadline, another grant or a
        # period's allowance a moment later: granted then as well, or not offered.
        later = ctx.sched.admit(apply(req, d.items()), ctx.now + TAKE_SLACK_S, alternatives=False)
        if not isinstance(later, Grant):
            return None
    if kind is None:
        kind = ("smaller" if "gpu_seconds" in d else "narrower" if got.width < req.width
                else "wider" if got.width > req.width else "other_pool" if "pool" in d else "later_start")
    msg = _message(ctx, kind, got, d)
    if "pool" in d and kind != "other_pool":
        msg = f"pool {got.pool}: {msg}"
    if "deadline" in d and kind != "later_start" and not (req.deadline is not None and got.end <= req.deadline):
        msg += f" (move the deadline to {fmt.when(d['deadline'])})"
    return Alternative(kind, got.pool, got.width, got.start, got.end, got.gpu_seconds, msg,
                       tuple((k, d[k]) for k in ("gpus", "gpu_seconds", "pool", "gpu_type", "deadline") if k in d))


def _own_pools(ctx: _Ctx) -> list[Pool]:
    got = ctx.sched._candidate_pools(ctx.req)
    return got if isinstance(got, list) else []


def _message(ctx: _Ctx, kind: str, g: Grant, d: dict[str, Any]) -> str:
    when, req = fmt.when, ctx.req
    window = f"from {when(g.start)} to {when(g.end)}"
    if kind == "later_start":
        return f"start {when(g.start)} (move the deadline to {when(d.get('deadline', g.end))})"
    if kind == "narrower" and req.deadline is not None and g.end <= req.deadline:
        return f"{fmt.plural(g.width, 'GPU')} in your window ({when(g.start)} to {when(g.end)})"
    if kind in ("narrower", "wider"):
        return f"{fmt.plural(g.width, 'GPU')} for {fmt.duration(g.end - g.start)} {window}"
    if kind == "smaller":
        return f"{fmt.gpu_seconds_as_hours(g.gpu_seconds)} GPU-hours on {fmt.plural(g.width, 'GPU')} from {when(g.start)}"
    if kind == "team_width":
        cap = ctx.sched.teams[req.team].config.max_gpus
        return f"{fmt.plural(g.width, 'GPU')} (team {req.team} holds at most {cap} at once) {window}"
    if kind == "whole_nodes":
        per = ctx.sched.pools[g.pool][0].gpus_per_node
        shape = f"{g.width // per} whole nodes" if g.width > per else "one node"
        return f"{fmt.plural(g.width, 'GPU')} on {shape} {window}"
    if kind == "other_pool":
        more = "" if "gpus" not in d else f" with {fmt.plural(g.width, 'GPU')}"
        return f"pool {g.pool}{more} {window}"
    return f"{fmt.plural(g.width, 'GPU')} {window}"  # the sweep's


# -- the searches ------------------------------------------------------------------------------


def _widest(ctx: _Ctx, kind: str, lo: int, hi: int, extra: Changes = ()) -> Alternative | None:
    """The widest width in [lo, hi) granted with ``extra`` changes. Feasibility is not
    monotone in width (a narrower window is longer: it may run into a grant a wider one
    ends before), so with at most ``SWEEP_WIDTHS`` widths the node rule allows, each is
    tried from the widest down (exact: every width of a small cluster); with more, they are
    bisected (nearly monotone there), the answer admitted."""
    widths = ctx.widths(lo, hi)
    if len(widths) <= SWEEP_WIDTHS:
        return _first(ctx, kind, reversed(widths), extra, tries=len(widths))
    best = None
    a, b = 0, len(widths) - 1
    while a <= b:
        mid = (a + b) // 2
        alt = _try(ctx, kind, (("gpus", widths[mid]), *extra))
        if alt is not None:
            best, a = alt, mid + 1
        else:
            b = mid - 1
    return best


def _first(ctx: _Ctx, kind: str, widths: Iterable[int], extra: Changes = (), tries: int = TRIES) -> Alternative | None:
    for i, w in enumerate(widths):
        if i >= tries:
            break
        alt = _try(ctx, kind, (("gpus", w), *extra))
        if alt is not None:
            return alt
    return None


def _later(ctx: _Ctx) -> Alternative | None:
    """The same shape with the deadline moved to where its earliest window ends."""
    if ctx.req.deadline is None:
        return None
    return _try(ctx, "later_start", (("deadline", None),))


def _narrower(ctx: _Ctx) -> Alternative | None:
    """The most GPUs below the asked width whose longer window ends by the deadline."""
    req = ctx.req
    if req.deadline is None:
        return None
    room = req.deadline - ctx.earliest
    if room <= 0:
        return None
    max_s = ctx.max_s()
    least = max(1, -(-req.gpu_seconds // room), 1 if max_s is None else -(-req.gpu_seconds // max_s))
    return _widest(ctx, "narrower", least, req.width)


def _wider(ctx: _Ctx, need_s: int) -> Alternative | None:
    """The fewest GPUs above the asked width whose window is at most ``need_s`` long."""
    req = ctx.req
    least = max(req.width + 1, -(-req.gpu_seconds // max(1, need_s)))
    return _first(ctx, "wider", ctx.widths(least, ctx.max_width() + 1))


def _smaller(ctx: _Ctx) -> Alternative | None:
    """The same width for the most GPU-hours the allowance lets start at the earliest start
    (whole GPU-hours when that is at least one), by the deadline and within the longest grant."""
    req = ctx.req
    t = ctx.earliest
    cap = req.duration - 1
    if req.deadline is not None:
        # A window from the earliest start moves with the clock: room for a submit a moment later.
        cap = min(cap, req.deadline - t - (TAKE_SLACK_S if ctx.moves(t) else 0))
    gs = _allowance_budget(ctx, req.width, cap)
    if gs <= 0:
        return None
    return _try(ctx, "smaller", (("gpu_seconds", gs),))


def _allowance_budget(ctx: _Ctx, w: int, cap: int) -> int:
    """GPU-seconds of ``w`` GPUs for a window from the earliest start that the allowance
    takes, at most ``cap`` seconds long and within the longest grant (whole GPU-hours when
    that is at least one). A start that moves with the clock is taken from anywhere in the
    next ``TAKE_SLACK_S``: a later start puts more of the window in a later period."""
    book = ctx.sched.teams[ctx.req.team].book
    if ctx.max_s() is not None:
        cap = min(cap, ctx.max_s())  # type: ignore[type-var]
    t0 = ctx.earliest
    starts = (t0, t0 + TAKE_SLACK_S) if ctx.moves(t0) else (t0,)
    for t in starts:
        d = 0
        while d < cap:
            p0, p1 = period_bounds(t + d, book.period)
            room = book.allowance - book.charged.get(p0, 0)
            span = p1 - (t + d)
            if room >= w * span:
                d += span
                continue
            d += max(0, room) // w
            break
        cap = min(d, cap)
    gs = w * cap
    if gs >= 3600:
        gs -= gs % 3600
    return gs


def _spread(ctx: _Ctx) -> Alternative | None:
    """Over every period's allowance a window could touch: fewer GPUs for longer, so the
    window spreads over more periods (the widest that is granted, from the widest down)."""
    req = ctx.req
    book = ctx.sched.teams[req.team].book
    max_s = ctx.max_s()

    def fits(w: int) -> bool:
        d = -(-req.gpu_seconds // w)
        return (max_s is None or d <= max_s) and book.allowance * periods_touched_at_most(d, book.period) >= w * d

    return _first(ctx, "narrower", (w for w in reversed(ctx.widths(1, req.width)) if fits(w)))


def _other_pool(ctx: _Ctx) -> Alternative | None:
    """The same shape in whichever pool grants it first, if not one the spec names."""
    alt = _try(ctx, "other_pool", (("pool", None), ("gpu_type", None)))
    return alt if alt is not None and any(k == "pool" for k, _ in alt.changes) else None


def _sweep(ctx: _Ctx) -> Iterator[Alternative | None]:
    """The last resort: every pool, widths nearest the asked one first, the same GPU-hours
    with no deadline; else as many whole GPU-hours as the allowance lets start at the
    earliest start (within the longest grant); else a one-hour window. Stops at the first
    granted."""
    req = ctx.req
    pools = [p for p, _ in ctx.sched.pools.values()]
    team = ctx.sched.teams[req.team].config
    top = max((p.gpus for p in pools), default=0)
    if team.max_gpus is not None:
        top = min(top, team.max_gpus)
    widths = sorted(ctx.widths(1, top + 1, pools), key=lambda w: (abs(w - req.width), -w))[:SWEEP_WIDTHS]
    anywhere: Changes = (("pool", None), ("gpu_type", None), ("deadline", None))

    def most(w: int) -> int:  # fewer GPU-hours than asked and more than one hour, else 0
        gs = _allowance_budget(ctx, w, -(-req.gpu_seconds // w) - 1)
        return gs if w * 3600 < gs < req.gpu_seconds else 0

    for gs_of in (lambda w: req.gpu_seconds, most, lambda w: w * 3600):
        for w in widths:
            gs = gs_of(w)
            if gs <= 0:
                continue
            alt = _try(ctx, None, (("gpus", w), ("gpu_seconds", gs), *anywhere))
            if alt is not None:
                yield alt
                return


# -- by reason ----------------------------------------------------------------------------------


def _no_capacity(ctx: _Ctx) -> list[Alternative | None]:
    out = [_later(ctx), _narrower(ctx)]
    if ctx.req.pool is not None or ctx.req.gpu_type is not None:
        out.append(_other_pool(ctx))
    return out


def _over_allowance(ctx: _Ctx) -> list[Alternative | None]:
    req = ctx.req
    book = ctx.sched.teams[req.team].book
    outright = book.allowance * periods_touched_at_most(req.duration, book.period) < req.width * req.duration
    if outright:
        return [_spread(ctx), _smaller(ctx)]
    return [_later(ctx), _narrower(ctx), _smaller(ctx)]


def _wider_than_pool(ctx: _Ctx) -> list[Alternative | None]:
    return [_other_pool(ctx), _widest(ctx, "narrower", 1, ctx.max_width() + 1)]


def _over_max_gpus(ctx: _Ctx) -> list[Alternative | None]:
    return [_widest(ctx, "team_width", 1, ctx.max_width() + 1)]


def _longer_than_max_grant(ctx: _Ctx) -> list[Alternative | None]:
    max_s = ctx.max_s()
    return [] if max_s is None else [_wider(ctx, max_s)]


def _deadline(ctx: _Ctx) -> list[Alternative | None]:
    req = ctx.req
    out: list[Alternative | None] = []
    if req.deadline is not None and req.deadline > ctx.earliest:
        out.append(_wider(ctx, req.deadline - ctx.earliest))
    out.append(_later(ctx))
    if req.deadline is not None and req.deadline > ctx.earliest:
        out.append(_smaller(ctx))  # what fits by the deadline at this width
    return out


def _not_whole_nodes(ctx: _Ctx) -> list[Alternative | None]:
    from cellsched.core.nodes import admissible_widths_near

    near = sorted({w for p in ctx.pools() for w in admissible_widths_near(
        ctx.req.width, p.gpus_per_node, ctx.sched.pools[p.name][1].full_nodes) if w <= p.gpus})
    return [_try(ctx, "whole_nodes", (("gpus", w),)) for w in near]


def _unknown_pool(ctx: _Ctx) -> list[Alternative | None]:
    return [_try(ctx, "other_pool", (("pool", None), ("gpu_type", None)))]


_BY_REASON: dict[str, Any] = {
    "no_capacity_in_window": _no_capacity,
    "over_allowance": _over_allowance,
    "wider_than_pool": _wider_than_pool,
    "over_max_gpus": _over_max_gpus,
    "longer_than_max_grant": _longer_than_max_grant,
    "deadline_passed": _deadline,
    "deadline_too_close": _deadline,
    "not_whole_nodes": _not_whole_nodes,
    "unknown_pool": _unknown_pool,
}


# -- what delayed a grant -----------------------------------------------------------------------


@dataclass(frozen=True)
class Delay:
    """Why a grant starts after the earliest start the spec allows: ``reason`` is
    ``allowance`` (the team's allowance per period), ``max_gpus`` (the team's own grants
    under its ``max_gpus``) or ``capacity`` (the pool's GPUs, by the node rule); ``wanted``
    is that earliest start; ``sooner`` what would start earlier (a smaller budget)."""

    reason: str
    message: str
    wanted: int
    free_from: int | None = None
    sooner: tuple[Alternative, ...] = ()


def period_label(t: int, period: str) -> str:
    """The allowance period containing ``t``: ``December 2026``, ``2026-Q4``, ``2026``."""
    import datetime as dt

    if period == "none":
        return "the allowance"
    d = dt.datetime.fromtimestamp(period_bounds(t, period)[0], dt.timezone.utc)
    if period == "month":
        return d.strftime("%B %Y")
    if period == "quarter":
        return f"{d.year}-Q{(d.month - 1) // 3 + 1}"
    return str(d.year)


def explain(sched: Schedule, req: Request, grant: Grant, now: int) -> Delay | None:
    """What put ``grant`` (admitted for ``req`` at ``now``, not yet committed) later than
    the earliest start the spec allows; None when it starts there."""
    from cellsched.core.admission import Refusal

    ctx = _Ctx(sched, req, Refusal("", ""), now)
    wanted = ctx.earliest
    if grant.start <= wanted:
        return None
    w, d = grant.width, grant.end - grant.start
    pools = [p for p in ctx.pools() if sched.pools[p.name][1].admits(w)]
    when, gh = fmt.when, fmt.gpu_seconds_as_hours
    free = sched._search(pools, req.team, w, d, wanted, req.deadline, ctx.horizon, False)
    if free is not None and free[1] < grant.start:
        book = sched.teams[req.team].book
        short = book.shortfall(free[1], free[1] + d, w)
        p0 = short[0] if short is not None else period_bounds(free[1], book.period)[0]
        room = max(0, book.allowance - book.charged.get(p0, 0))
        label = period_label(p0, book.period)
        msg = (f"earliest window your allowance allows: {when(grant.start)} (team {req.team} has "
               f"{gh(room)} of its {gh(book.allowance)} GPU-hours left in {label}, so at most that much "
               f"of these {gh(grant.gpu_seconds)} GPU-hours can fall in it; windows are charged to each "
               f"period by their part); {fmt.plural(w, 'GPU')} are free from {when(free[1])}")
        sooner = _smaller(ctx)
        return Delay("allowance", msg, wanted, free[1],
                     () if sooner is None or sooner.start >= grant.start else (sooner,))
    tcal = sched.teams[req.team].calendar
    if tcal is not None:
        pool_only = [t for p in pools
                     if (t := sched.pools[p.name][1].earliest_fit(w, d, wanted, req.deadline)) is not None]
        if pool_only and min(pool_only) < grant.start:
            cap = sched.teams[req.team].config.max_gpus
            return Delay("max_gpus", f"earliest window team {req.team}'s max_gpus ({cap}) allows: "
                                     f"{when(grant.start)} (its other grants hold GPUs until then)",
                         wanted, min(pool_only))
    pool, per = sched.pools[grant.pool][0], sched.pools[grant.pool][0].gpus_per_node
    rule = "" if per >= pool.gpus else (" on one node" if w <= per else f" on {w // per} whole nodes")
    return Delay("capacity", f"earliest window with {fmt.plural(w, 'GPU')} free together{rule} in pool "
                             f"{grant.pool}: {when(grant.start)}", wanted, grant.start)
