"""Expected start: when a waiting grant will probably start, beside the start it is promised.

The promise (a grant's ``start``) is what the calendar guarantees if every grant ahead runs
to the end of its window. Most do not: they finish early and the ``start_now`` rule pulls
waiting grants forward into what they free. The **expected start** is a forward replay of
the current calendar under the same rule (the same core) in which:

- each grant not yet started holds ``ratio x`` its window (rounded up to a second), where
  ``ratio`` is the median (:data:`QUANTILE`) of the per-grant ratios of held to granted
  window of the :data:`NEAREST` grants of its team whose windows are nearest its own in
  length (:class:`Ratios`: over the grants that ended in the last 30 days, with at least 3
  of them), else of the cluster's, else 1.0 (no history: every window runs to its end);
- a running grant that has held ``e`` of its window ``W`` is expected to hold the median
  of those ratios above ``e / W`` (of the grants that ran at least as long: one that ran
  past most is likely one of those that run to their end), times ``W``; past every one of
  them, ``ratio x`` what is left of its window from now;
- later work arrives as it did in the last day (``arrivals``, :data:`ARRIVALS_S`): the
  grants admitted in the last 24 hours are submitted again at the same offsets from now,
  day after day, at most :data:`MAX_ARRIVALS` of them, each admitted at its earliest window
  after the pass of its instant, and holding its team's ratio of its window;
- a waiting grant is pulled forward by the cluster's rule at every instant GPUs come free in
  the replay, or starts at its own window's start at the latest; not before its
  ``not_before``;
- grants are placed on the pools' nodes, each live grant on its own; a lost node (``lost``)
  takes nothing new: what its grants leave free, and give back, is held.

No team limits or allowances: an estimate, not a promise, and one definition for
``submit``, ``status`` and ``simulate`` (which measures it: docs/simulate.md). Pure: no
I/O, time passed in."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from bisect import bisect_right
from heapq import heappop, heappush
from typing import Protocol

from cellsched.core.admission import (
    Grant,
    Request,
    Schedule,
    TeamState,
    start_waiting_now,
)
from cellsched.core.allowance import TeamBook
from cellsched.core.nodes import NodeCalendar
from cellsched.spec.cluster import Policy, Pool, Team

WINDOW_S = 30 * 86400
"""How far back history counts: grants that ended in the last 30 days."""
ARRIVALS_S = 86400
"""Work submitted later is taken to arrive as in the last day: the grants admitted in the
last 24 hours, submitted again at the same offsets, day after day."""
MAX_ARRIVALS = 1000
"""At most this many later submits are replayed (the replay's cost grows with them); past
them no more work arrives."""
MIN_GRANTS = 3
"""A team's own ratio needs at least this many ended grants; with fewer, the cluster's."""
QUANTILE = 0.5
"""Which of the ratios a grant is expected to hold: the median (rank ``floor(n / 2)`` from
0). Measured on itp.csv under noisy estimates (docs/simulate.md, "The expected start,
measured"): over all of a team's grants the 40th percentile did best; over the grants of the
nearest window lengths, whose ratios spread less, the median (the 40th percentile left the
replay early); without noise every grant holds the same share and the choice changes
nothing."""
NEAREST = 20
"""A grant's ratio is taken among this many of its team's ended grants whose windows are
nearest its own in length (by their ratio to it): a team runs the same work again, so a
window longer than the work's usual one was mostly asked with more margin. 10 was worse
(fewer grants, a noisier quantile); 40 was no better where it was not chosen (1,000 GPUs):
docs/simulate.md."""

END, FREE, START, ARRIVE = 0, 1, 2, 3


@dataclass(frozen=True, slots=True)
class Ratios:
    """Per team, the share of a granted window its grants held before release (recently),
    and the same over the whole cluster (``None``: no history at all).

    ``teams`` and ``cluster`` are the :data:`QUANTILE` of all the team's (the cluster's)
    per-grant ratios (:func:`ratios_from`): what the basis sentence states. ``near`` holds,
    per team with at least ``MIN_GRANTS`` ended grants (and ``""`` for the cluster), the
    window lengths of its ended grants, sorted, and their ratios in the same order, so that
    a grant is expected to hold the :data:`QUANTILE` of the ratios of the :data:`NEAREST`
    grants of the most similar window length (:meth:`held`). Without ``near`` (ratios given
    by hand) a grant holds ``ratio x`` its window, or ``ratio x`` what is left once past it."""

    teams: Mapping[str, float] = field(default_factory=dict)
    cluster: float | None = None
    grants: Mapping[str, int] = field(default_factory=dict)  # per team: ended grants counted
    cluster_grants: int = 0
    window_s: int = WINDOW_S
    near: Mapping[str, tuple[Sequence[int], Sequence[float]]] = field(default_factory=dict)
    nearest: int = 0  # NEAREST, as ratios_of builds it (0: every grant of the team)
    q: float = QUANTILE
    # per (team or "", window length): like()'s answer; not an argument, so that
    # dataclasses.replace (another nearest, q or history) never shares a memo
    _memo: dict[tuple[str, int], tuple[float, ...]] = field(default_factory=dict, init=False, compare=False,
                                                            repr=False)

    def of(self, team: str) -> float:
        r = self.teams.get(team)
        if r is not None:
            return r
        return 1.0 if self.cluster is None else self.cluster

    def like(self, team: str, length: int) -> tuple[float, ...]:
        """The sorted ratios of the :attr:`nearest` grants of ``team`` (or the cluster's, with
        too few) whose windows are closest to ``length`` seconds by their ratio to it (of two
        as close, the shorter), or ``()`` without ``near``."""
        key = team if team in self.teams else ""
        got = self._memo.get((key, length))
        if got is None:
            lengths, ratios = self.near.get(key, ((), ()))
            lo, hi = nearest_span(lengths, length, self.nearest)
            got = tuple(sorted(ratios[lo:hi]))
            self._memo[(key, length)] = got
        return got

    def held(self, team: str, length: int, elapsed: int = 0) -> int:
        """Seconds a grant of ``team`` with a window of ``length`` seconds is expected to
        hold it in all, having held it ``elapsed`` seconds so far (0: not started): the
        :attr:`q` quantile of the ratios of the team's grants with windows most like it
        (:meth:`like`) and, once started, above ``elapsed / length`` (those that ran at least
        as long), times ``length``, rounded up; past every one of them, ``elapsed`` and the
        quantile of all of them of what is left."""
        if length <= 0:
            return 0
        xs = self.like(team, length)
        r = quantile_of(xs, 0, self.q) if xs else self.of(team)
        if elapsed > 0 and xs:
            i = bisect_right(xs, elapsed / length)
            if i < len(xs):
                r = quantile_of(xs, i, self.q)
            else:
                return elapsed + held_share(length - elapsed, r)
        h = held_share(length, r)
        if h <= elapsed:  # no distribution: it ran longer than most, the ratio of what is left
            return elapsed + held_share(length - elapsed, r)
        return h

    def basis(self, team: str) -> str:
        """``team`` (its own history), ``cluster`` (the team has too little) or ``none``."""
        if team in self.teams:
            return "team"
        return "none" if self.cluster is None else "cluster"

    def sentence(self, team: str, length: int | None = None) -> str:
        """What the expected start of a grant of ``team`` rests on, in words; with its window
        ``length``, the ratio its own window was given (:meth:`like`), else the team's."""
        days = self.window_s // 86400
        b = self.basis(team)
        if b == "none":
            return f"no grant ended in the last {days} days: every window is taken to run to its end"
        n = self.grants.get(team, 0) if b == "team" else self.cluster_grants
        r = self.teams[team] if b == "team" else self.cluster
        xs = self.like(team, length) if length is not None and length > 0 else ()
        if xs:
            r = quantile_of(xs, 0, self.q)
        part = "half" if self.q == 0.5 else f"{self.q:.0%}"
        if 0 < len(xs) < n:  # some grants, not all: the nearest in window length
            share = (f"of the {len(xs)} grants (of {n:,}) with windows nearest this one's in length, {part} held "
                     f"at most {r:.0%} of their window")
        else:
            share = f"{part} {'the' if self.q == 0.5 else 'of the'} grants held at most {r:.0%} of their window ({n:,} grants)"
        later = "; later work arrives as in the last 24 h"
        if b == "team":
            return f"team {team}'s last {days} days: {share}{later}"
        return (f"the cluster's last {days} days (team {team} has fewer than {MIN_GRANTS} ended grants): "
                f"{share}{later}")


def nearest_span(lengths: Sequence[int], length: int, nearest: int) -> tuple[int, int]:
    """``(lo, hi)``: the ``nearest`` of the sorted window ``lengths`` closest to ``length`` by
    their ratio to it (of two as close, the shorter) are ``lengths[lo:hi]``; all of them
    when ``nearest`` <= 0 or there are no more."""
    n = len(lengths)
    k = n if nearest <= 0 else min(n, nearest)
    lo = hi = bisect_right(lengths, length)
    while hi - lo < k:  # lengths[lo - 1] <= length <= lengths[hi]: the nearer of the two
        if hi == n or (lo > 0 and length * length <= lengths[lo - 1] * lengths[hi]):
            lo -= 1
        else:
            hi += 1
    return lo, hi


def held_share(length: int, ratio: float) -> int:
    """Seconds of a window of ``length`` seconds held at ``ratio``: rounded up, at least 1 and
    at most ``length``."""
    return min(length, max(1, -int(-length * ratio // 1)))


def quantile_of(xs: Sequence[float], lo: int = 0, q: float = QUANTILE) -> float:
    """The ``q`` quantile of the sorted ``xs[lo:]`` (not empty): its element of rank
    ``floor(q x n)`` from 0 (with 3 grants, the middle one)."""
    n = len(xs) - lo
    return xs[lo + min(n - 1, int(q * n))]


def ratios_from(history: Iterable[tuple[str, int, int]], window_s: int = WINDOW_S,
                min_grants: int = MIN_GRANTS, nearest: int = NEAREST, q: float = QUANTILE) -> Ratios:
    """:class:`Ratios` from ``(team, seconds held, window length in seconds)`` of the grants
    that ended in the window. A grant's ratio is its held over granted, clamped to (0, 1];
    a team's ratio is the :data:`QUANTILE` of its grants' (with at least ``min_grants`` of
    them), the cluster's that of all; a grant is expected to hold the :data:`QUANTILE` of
    those of the :data:`NEAREST` of them whose windows are most like its own. Per grant, not
    the GPU-seconds sum: under noisy estimates the long windows are mostly the
    overestimated ones, a summed ratio is pulled down by them and every estimate came out
    early (docs/simulate.md, "The expected start, measured")."""
    per: dict[str, list[tuple[int, float]]] = {}
    for team, h, length in history:
        if length > 0:
            per.setdefault(team, []).append((length, grant_ratio(h, length)))
    for v in per.values():
        v.sort()
    return ratios_of(per, sorted(x for v in per.values() for x in v), window_s, min_grants, nearest, q)


def grant_ratio(held: int, granted: int) -> float:
    """One grant's ratio of held to granted (``granted`` > 0), clamped to (0, 1]."""
    return min(1.0, max(max(0, held) / granted, 1e-6))


def ratios_of(per: Mapping[str, Sequence[tuple[int, float]]], every: Sequence[tuple[int, float]],
              window_s: int = WINDOW_S, min_grants: int = MIN_GRANTS, nearest: int = NEAREST,
              q: float = QUANTILE) -> Ratios:
    """:class:`Ratios` from each team's ended grants as ``(window length, ratio)``, sorted
    (``per``), and all of them, sorted (``every``): what :func:`ratios_from` and the
    simulator's history both build."""
    near: dict[str, tuple[Sequence[int], Sequence[float]]] = {}
    teams: dict[str, float] = {}
    for t, v in sorted(per.items()):
        if len(v) >= min_grants:
            near[t] = (tuple(x for x, _ in v), tuple(r for _, r in v))
            teams[t] = quantile_of(sorted(near[t][1]), 0, q)
    cluster = None
    if every:
        near[""] = (tuple(x for x, _ in every), tuple(r for _, r in every))
        cluster = quantile_of(sorted(near[""][1]), 0, q)
    return Ratios(teams, cluster, {t: len(v) for t, v in sorted(per.items()) if v}, len(every), window_s,
                  near, nearest, q)


class WaitingSet(Protocol):
    """The waiting grants of a replay and the pass that pulls them forward (the simulator's
    indexed :class:`cellsched.sim.compress.Waiting` fits, and :class:`PlainWaiting`)."""

    grants: dict[int, Grant]

    def add(self, key: int, g: Grant) -> None: ...
    def remove(self, key: int, g: Grant) -> None: ...
    def freed(self) -> None: ...
    def run(self, now: int) -> Iterator[tuple[int, Grant, Grant]]: ...


class PlainWaiting:
    """``start_waiting_now`` over a dict: the rule written plainly."""

    def __init__(self, schedule: Schedule, reserve: int = 0) -> None:
        self.schedule = schedule
        self.reserve = reserve  # as pull_rule gives it for the cluster's policy.pull_forward
        self.grants: dict[int, Grant] = {}

    def add(self, key: int, g: Grant) -> None:
        self.grants[key] = g

    def remove(self, key: int, g: Grant) -> None:
        del self.grants[key]

    def freed(self) -> None:
        pass

    def run(self, now: int) -> Iterator[tuple[int, Grant, Grant]]:
        for k, g, ng in start_waiting_now(self.schedule, list(self.grants.items()), now, self.reserve):
            self.remove(k, g)
            if ng.start > now:
                self.add(k, ng)
            yield k, g, ng


PoolShape = int | tuple[int, int]
"""A pool in the replay: its GPUs (one node: the flat calendar) or (GPUs, GPUs per node)."""


def replay_schedule(pools: Mapping[str, PoolShape], teams: Iterable[str]) -> Schedule:
    """An empty schedule of the given pools (on their nodes) and teams without limits: the
    replay's (allowances and ``max_gpus`` are left out: an estimate, not a promise)."""
    built = {}
    for name, shape in pools.items():
        n, per = (shape, shape) if isinstance(shape, int) else shape
        built[name] = (Pool.model_construct(name=name, gpu_type="", gpus=n, gpus_per_node=per), NodeCalendar(n, per))
    return Schedule(
        pools=built,
        teams={t: TeamState(Team.model_construct(name=t, members=(), period="none", max_gpus=None,
                                                 allowance_gpu_hours=0.0), TeamBook(1 << 62, "none"), None)
               for t in teams},
        policy=Policy(),
    )


def _hold_free(sched: Schedule, pool: str, node: int, t0: int, t1: int) -> None:
    """Reserve whatever node ``node`` of ``pool`` has free over [t0, t1): a lost node takes
    nothing new (as ``ledger.snapshot._block_lost_nodes`` holds it for admission)."""
    cal = sched.pools[pool][1]
    if t1 <= t0 or not 0 <= node < len(cal.nodes):
        return
    node_cal = cal.nodes[node]
    cuts = [(t0, node_cal.free_at(t0))] + [(a, f) for a, f in node_cal.steps() if t0 < a < t1]
    for i, (a, free) in enumerate(cuts):
        b = cuts[i + 1][0] if i + 1 < len(cuts) else t1
        if free > 0:
            cal.reserve(a, b, free, (node,))


def expected_starts(
    pools: Mapping[str, PoolShape],
    live: Sequence[tuple[int, Grant]],
    ratios: Ratios,
    now: int,
    want: Collection[int] | None = None,
    waiting_set: Callable[[Schedule], WaitingSet] = PlainWaiting,
    not_before: Mapping[int, int] | None = None,
    lost: Mapping[str, Collection[int]] | None = None,
    arrivals: Sequence[tuple[int, str, str, int, int]] = (),
    period: int = 0,
) -> dict[int, int]:
    """The expected start of every waiting grant in ``live`` (or of those keyed in ``want``:
    the replay stops once they have started), keyed as given.

    ``live`` is every grant that holds GPUs from ``now`` on, keyed by submission order:
    running ones (start <= now < end) and waiting ones (start > now). ``pools`` gives each
    pool's GPUs (and GPUs per node: the replay places on nodes, keeping each live grant on
    its own nodes). ``not_before``: by key, the earliest instant a waiting grant may start
    (its spec's ``not_before``): it is not pulled forward before then, as the daemon does
    not. ``lost``: per pool, calendar nodes with no machine behind them: nothing new is
    placed on them (their own grants keep their windows). Never later than a grant's own
    start (the rule only moves windows earlier); equal to it when nothing ahead ends early."""
    teams = sorted({g.team for _, g in live})
    sched = replay_schedule(pools, teams)
    multi = {name for name, (_, cal) in sched.pools.items() if len(cal.nodes) > 1}
    lost_at = {p: frozenset(ns) for p, ns in (lost or {}).items() if p in multi and ns}
    nb = not_before or {}
    waiting = waiting_set(sched)
    heap: list[tuple[int, int, int]] = []
    running: dict[int, Grant] = {}
    held: dict[int, Grant] = {}  # waiting grants not yet allowed to move (not_before ahead)
    left = set(want) if want is not None else None
    out: dict[int, int] = {}
    horizon = now

    def place(g: Grant) -> Grant:
        nodes = g.nodes if g.pool in multi else None
        try:
            return sched.commit(replace(g, nodes=nodes))
        except ValueError:
            if nodes is None:
                raise
            return sched.commit(replace(g, nodes=None))  # its nodes no longer fit: anywhere

    for k, g in sorted(live, key=lambda kg: kg[0]):
        if g.end <= now or g.pool not in pools:
            continue
        horizon = max(horizon, g.end)
        try:
            if g.start <= now:  # from its real start, given how long it has run
                ends = g.start + ratios.held(g.team, g.end - g.start, now - g.start)
                running[k] = place(replace(g, start=now))
                heappush(heap, (ends, END, k))
                continue
            g = place(g)
        except ValueError:
            continue  # over-committed (a pool shrank): not replayed
        if nb.get(k, now) > now:
            held[k] = g
            heappush(heap, (min(nb[k], g.start), FREE, k))
        else:
            waiting.add(k, g)
        heappush(heap, (g.start, START, k))
        if left is None:
            out.setdefault(k, g.start)
    if left is not None:
        left &= set(waiting.grants) | set(held)
        if not left:
            return {}
    for pool, nodes in lost_at.items():
        for n in sorted(nodes):
            _hold_free(sched, pool, n, now, horizon)

    def hold_lost(g: Grant, t0: int, t1: int) -> None:
        """What ``g`` gave back on lost nodes over [t0, t1) is held again."""
        ns = lost_at.get(g.pool)
        if ns and g.nodes:
            for n in g.nodes:
                if n in ns:
                    _hold_free(sched, g.pool, n, t0, t1)

    def started(k: int, g: Grant, t: int) -> None:
        running[k] = g
        heappush(heap, (t + ratios.held(g.team, g.end - g.start), END, k))
        out[k] = t
        if left is not None:
            left.discard(k)

    # Work submitted later: ``arrivals`` (offset from now, team, pool, width, window length),
    # repeated every ``period`` seconds, admitted as a submit would be after the pass.
    arrive_key = max((k for k, _ in live), default=0) + 1
    if arrivals and period > 0 and left is not None:  # only while something asked for waits
        heappush(heap, (now + arrivals[0][0], ARRIVE, 0))

    # The replay opens with a pass at ``now`` (the live calendar need not be the rule's
    # fixed point: a dry run's grant was just admitted); after it, the rule runs whenever
    # GPUs come free, as in the daemon and the simulator.
    waiting.freed()
    heappush(heap, (now, START, -1))
    while heap and (left is None or left):
        t = heap[0][0]
        while heap and heap[0][0] == t and heap[0][1] == END:
            k = heappop(heap)[2]
            g = running.pop(k)
            sched.release(g, t)
            hold_lost(g, t, g.end)
            waiting.freed()
        while heap and heap[0][0] == t and heap[0][1] == FREE:
            k = heappop(heap)[2]
            g = held.pop(k, None)
            if g is not None and g.start > t:
                waiting.add(k, g)  # its not_before has come: it may move from here on
                waiting.freed()
            elif g is not None:
                held[k] = g  # its own window starts now: started below
        while heap and heap[0][0] == t and heap[0][1] == START:
            k = heappop(heap)[2]
            g = waiting.grants.get(k)
            if g is not None and g.start == t:
                waiting.remove(k, g)
                started(k, g, t)
            elif k in held and held[k].start == t:
                started(k, held.pop(k), t)
            else:
                waiting.freed()  # the grant moved earlier: its old window is free from here
        for k, old, ng in waiting.run(t):
            if ng.start == t:
                started(k, ng, t)
            else:
                heappush(heap, (ng.start, START, k))
            back = max(old.start, ng.end)  # where its old window is given back (as the simulator)
            if old.start < back < old.end:
                heappush(heap, (back, START, k))
            hold_lost(old, old.start, old.end)
        while heap and heap[0][0] == t and heap[0][1] == ARRIVE:
            i = heappop(heap)[2]
            _, team, pool, width, length = arrivals[i % len(arrivals)]
            if team not in sched.teams:
                sched.teams[team] = replay_schedule({}, [team]).teams[team]
            got = sched.admit(Request("", team, width, width * length, pool=pool), t, alternatives=False)
            if isinstance(got, Grant):
                got = sched.commit(got)
                k = arrive_key
                arrive_key += 1
                if got.start == t:
                    started(k, got, t)
                else:
                    waiting.add(k, got)
                    heappush(heap, (got.start, START, k))
            j = i + 1
            if j < MAX_ARRIVALS:
                heappush(heap, (now + (j // len(arrivals)) * period + arrivals[j % len(arrivals)][0], ARRIVE, j))
    if left is not None:
        return {k: out[k] for k in sorted(out) if want is None or k in want}
    return out
