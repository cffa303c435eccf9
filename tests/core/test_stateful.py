"""Hypothesis state machine on the pure core: random submits, cancels, early completions,
clock advances and both pull-forward rules on waiting grants (compaction, start now), checked after every step against an
independent brute-force recount (not the calendars or books themselves).

Twice: on one-node pools (the flat case) and on pools of several nodes, where it is also
the **packing property**: at every instant the live grants pack onto the nodes exactly as
assigned (one node per grant no wider than a node, whole nodes for a wider one, no node
over-committed), and every node's calendar is that recount."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cellsched.core.admission import REASONS, Grant, Refusal, Request, Schedule
from admission_builders import H, at, cluster

START = at(2026, 12, 30)  # two days before a month boundary
POOLS = {"a": 6, "b": 4}
NODE_POOLS = {"a": (6, 2), "b": (10, 4)}  # GPUs, GPUs per node: 3 nodes of 2; 4 + 4 + 2
TEAMS = {  # name: (allowance GPU-seconds, period, max_gpus)
    "t1": (40 * H, "month", 5),
    "t2": (60 * H, "none", None),
    "t3": (10**9, "month", None),
}


def month_parts(start: int, end: int, width: int, period: str) -> dict[int, int]:
    """GPU-seconds per period start, counted hour by hour's month boundary the slow way."""
    if period == "none":
        return {0: width * (end - start)} if end > start else {}
    out: dict[int, int] = {}
    d = dt.datetime.fromtimestamp(start, dt.timezone.utc)
    y, m = d.year, d.month
    while True:
        p0 = int(dt.datetime(y, m, 1, tzinfo=dt.timezone.utc).timestamp())
        y1, m1 = (y + 1, 1) if m == 12 else (y, m + 1)
        p1 = int(dt.datetime(y1, m1, 1, tzinfo=dt.timezone.utc).timestamp())
        part = max(0, min(end, p1) - max(start, p0))
        if part:
            out[p0] = out.get(p0, 0) + width * part
        if p1 >= end:
            return out
        y, m = y1, m1


@dataclass
class Held:
    grant: Grant
    promised_start: int
    done: bool = False  # cancelled or completed: only its held part stays


class CoreMachine(RuleBasedStateMachine):
    pools: dict[str, tuple[int, int | None]] = {name: (gpus, None) for name, gpus in POOLS.items()}

    @initialize()
    def setup(self) -> None:
        c = cluster()
        for name, (gpus, per_node) in self.pools.items():
            c.pool(name, gpus, gpu_type="H100" if name == "a" else "A100", per_node=per_node)
        for name, (gs, period, max_gpus) in TEAMS.items():
            c.team(name, hours=gs / H, period=period, max_gpus=max_gpus)
        self.sched: Schedule = c.schedule()
        self.now = START
        self.held: list[Held] = []
        self.submits = self.grants = self.refusals = 0

    # -- rules ------------------------------------------------------------------------

    @rule(team=st.sampled_from(sorted(TEAMS)), where=st.sampled_from(["a", "b", "H100", "A100", None]),
          width=st.integers(1, 7), hours=st.integers(1, 60), odd=st.integers(0, 7),
          not_before=st.none() | st.integers(0, 72), deadline=st.none() | st.integers(1, 200))
    def submit(self, team: str, where: str | None, width: int, hours: int, odd: int,
               not_before: int | None, deadline: int | None) -> None:
        r = Request(
            f"p{self.submits}", team, width, hours * H + odd,
            pool=where if where in self.pools else None,
            gpu_type=where if where not in self.pools else None,
            not_before=None if not_before is None else self.now + not_before * H,
            deadline=None if deadline is None else self.now + deadline * H,
        )
        self.submits += 1
        out = self.sched.admit(r, self.now)
        if isinstance(out, Refusal):
            self.refusals += 1
            assert out.reason in REASONS and out.message
            for alt in out.alternatives:  # every alternative is grantable as it stands
                shape = Request(r.project, r.team, alt.width, alt.gpu_seconds, pool=alt.pool,
                                not_before=r.not_before, deadline=alt.end)
                got = self.sched.admit(shape, self.now)
                assert isinstance(got, Grant) and got.start == alt.start, (r, alt, got)
            return
        self.grants += 1
        assert out.width == width and out.end - out.start == r.duration
        assert out.start >= max(self.now, r.not_before or self.now)
        assert r.deadline is None or out.end <= r.deadline
        assert r.pool is None or out.pool == r.pool
        assert out.nodes is not None
        assert self.sched.commit(out) == out  # committed on the nodes admission named
        self.held.append(Held(out, out.start))

    def _live(self) -> list[int]:
        return [i for i, h in enumerate(self.held) if not h.done and h.grant.end > self.now]

    def _release(self, i: int, cut_at: int) -> None:
        h = self.held[i]
        g = h.grant
        before = self._charged_total(g.team)
        cut = min(max(cut_at, g.start), g.end)
        new = self.sched.release(g, cut_at)
        assert (new.start, new.end, new.nodes) == (g.start, cut, g.nodes)
        refund = g.width * (g.end - cut)
        assert before - self._charged_total(g.team) == refund  # refunds are exact
        h.grant, h.done = new, True

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self._release(data.draw(st.sampled_from(self._live())), self.now)

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def complete_early(self, data: st.DataObject) -> None:
        i = data.draw(st.sampled_from(self._live()))
        g = self.held[i].grant
        self._release(i, data.draw(st.integers(max(self.now, g.start), g.end)))

    @rule(seconds=st.integers(1, 30 * H))
    def advance(self, seconds: int) -> None:
        self.now += seconds

    def _waiting(self) -> list[int]:
        return sorted((i for i, h in enumerate(self.held) if not h.done and h.grant.start > self.now),
                      key=lambda i: (self.held[i].grant.start, i))

    @rule()
    def compress(self) -> None:
        """Waiting grants, in order of start, move as early as capacity now allows."""
        for i in self._waiting():
            h = self.held[i]
            old = h.grant
            new = self.sched.move_earlier(old, self.now)
            assert (new.pool, new.width, new.end - new.start) == (old.pool, old.width, old.end - old.start)
            assert self.now <= new.start <= old.start
            h.grant = new

    @rule()
    def start_now(self) -> None:
        """Waiting grants, in order of start, start now if their whole window fits now."""
        for i in self._waiting():
            h = self.held[i]
            old = h.grant
            new = self.sched.start_now(old, self.now)
            assert new == old or (new.start, new.end) == (self.now, self.now + old.end - old.start)
            assert (new.pool, new.width) == (old.pool, old.width)
            h.grant = new

    # -- invariants -------------------------------------------------------------------

    def _charged_total(self, team: str) -> int:
        return sum(self.sched.teams[team].book.charged.values())

    @invariant()
    def live_grants_pack_onto_their_nodes(self) -> None:
        windows = [h.grant for h in self.held if h.grant.end > h.grant.start]
        points = sorted({g.start for g in windows} | {g.end for g in windows} | {START})
        for pool, (gpus, per_node) in self.pools.items():
            per = per_node or gpus
            sizes = [per] * (gpus // per) + ([gpus % per] if gpus % per else [])
            cal = self.sched.pools[pool][1]
            mine = [g for g in windows if g.pool == pool]
            for g in mine:
                assert g.nodes is not None and list(g.nodes) == sorted(set(g.nodes))
                if g.width <= per:
                    assert len(g.nodes) == 1 and sizes[g.nodes[0]] >= g.width
                else:
                    assert g.width % per == 0 and len(g.nodes) == g.width // per
                    assert all(sizes[n] == per for n in g.nodes)  # whole full nodes
            for t in points:
                used = [0] * len(sizes)
                for g in mine:
                    if g.start <= t < g.end:
                        for n in g.nodes or ():
                            used[n] += min(g.width, per)
                assert all(u <= s for u, s in zip(used, sizes)), (pool, t, used)
                if len(sizes) > 1 and t >= self.now:
                    assert [c.free_at(t) for c in cal.nodes] == [s - u for s, u in zip(sizes, used)], (pool, t)

    @invariant()
    def capacity_never_overcommitted(self) -> None:
        windows = [h.grant for h in self.held if h.grant.end > h.grant.start]
        points = sorted({g.start for g in windows} | {START})
        for pool, (cap, _) in self.pools.items():
            _, cal = self.sched.pools[pool]
            for t in points:
                used = sum(g.width for g in windows if g.pool == pool and g.start <= t < g.end)
                assert used <= cap, (pool, t, used)
                assert cal.free_at(t) == cap - used >= 0, (pool, t)
        for team, (_, _, max_gpus) in TEAMS.items():
            if max_gpus is None:
                continue
            cal = self.sched.teams[team].calendar
            assert cal is not None
            for t in points:
                used = sum(g.width for g in windows if g.team == team and g.start <= t < g.end)
                assert cal.free_at(t) == max_gpus - used >= 0, (team, t, used)

    @invariant()
    def allowances_never_overdrawn(self) -> None:
        for team, (allowance, period, _) in TEAMS.items():
            want: dict[int, int] = {}
            for h in self.held:
                if h.grant.team == team:
                    for p0, gs in month_parts(h.grant.start, h.grant.end, h.grant.width, period).items():
                        want[p0] = want.get(p0, 0) + gs
            want = {k: v for k, v in want.items() if v}
            book = self.sched.teams[team].book
            got = {(0 if period == "none" else k): v for k, v in book.charged.items()}
            assert got == want, team
            assert all(v <= allowance for v in want.values()), (team, want)

    @invariant()
    def never_later_than_promised(self) -> None:
        for h in self.held:
            assert h.grant.start <= h.promised_start

    def teardown(self) -> None:
        if hasattr(self, "submits"):
            assert self.grants + self.refusals == self.submits


CoreMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCoreMachine = CoreMachine.TestCase


class NodeMachine(CoreMachine):
    """The same rules on pools of several nodes (widths 3, 5, 7 break the node rule on
    pool a, 5 and 7 on pool b: refused ``not_whole_nodes``, alternatives re-admitted)."""

    pools = NODE_POOLS


NodeMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestNodeMachine = NodeMachine.TestCase
