"""The node-aware pool calendar against a brute-force reference (hypothesis): after any
sequence of reserves (nodes chosen by the calendar or named), partial releases and forgets,
every node's free GPUs equal a recount, the threshold index answers ``earliest_fit``,
``choose``, ``widest_fit`` and ``reach`` exactly as trying every time and node would."""

from __future__ import annotations

from functools import reduce
from operator import or_

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cellsched.core.calendar import FAR_FUTURE
import cellsched.core.nodes as nodes_mod
from cellsched.core.nodes import (
    CHUNK,
    DOWN_CHUNK,
    LEVEL_REACH,
    NodeCalendar,
    _Hours,
    _Whole,
    admissible_widths_near,
    node_sizes,
    whole_nodes,
)


def test_node_rule_helpers():
    assert node_sizes(20, 8) == [8, 8, 4] and node_sizes(16, 8) == [8, 8]
    assert [whole_nodes(w, 8) for w in (1, 8, 9, 16, 24, 12)] == [0, 0, None, 2, 3, None]
    assert admissible_widths_near(12, 8, 4) == [8, 16]
    assert admissible_widths_near(30, 8, 3) == [24]
    assert admissible_widths_near(16, 8, 3) == [16]


def test_admissible_widths_are_the_widths_the_node_rule_admits():
    for gpus, per in [(44, 8), (48, 8), (16, 16), (20, 8), (8, 8), (5, 1), (14, 4), (100, 200), (9, 4)]:
        cal = NodeCalendar(gpus, per)
        for lo in range(0, 40):
            for hi in range(lo, 50):
                assert cal.admissible_widths(lo, hi) == [w for w in range(max(lo, 1), hi) if cal.admits(w)]


def test_wide_grants_take_whole_nodes_and_a_fragmented_pool_is_not_enough():
    cal = NodeCalendar(32, 8)  # four nodes of 8
    for n in range(4):  # 4 GPUs busy on every node: 16 free in all, no whole node
        cal.reserve(0, 100, 4, (n,))
    assert cal.min_free(0, 100) == 16
    assert cal.earliest_fit(16, 10, 0) == 100  # the flat calendar would say 0
    assert cal.earliest_fit(4, 10, 0) == 0
    assert cal.earliest_fit(5, 10, 0) == 100
    assert cal.choose(16, 100, 110) == (0, 1)
    assert cal.widest_fit(0, 100) == 4 and cal.widest_fit(100, 200) == 32
    with pytest.raises(ValueError):
        cal.reserve(0, 10, 12)  # not a whole number of nodes
    with pytest.raises(ValueError):
        cal.reserve(0, 10, 8, (0,))  # node 0 has 4 free


def test_one_node_pool_is_the_flat_calendar():
    cal = NodeCalendar(16, 16)
    assert cal.nodes == [cal]
    assert cal.reserve(0, 10, 12) == (0,)
    assert cal.earliest_fit(5, 5, 0) == cal.earliest(5, 5, 0) == 10
    assert cal.widest_fit(0, 10) == 4 and cal.reach(4, 0) == FAR_FUTURE


def test_release_without_nodes_finds_the_reservation():
    cal = NodeCalendar(24, 8)
    a = cal.reserve(0, 50, 3)
    b = cal.reserve(10, 50, 3)
    assert cal.release(20, 50, 3) == b  # the one that began latest by 20
    assert cal.release(5, 50, 3) == a
    assert [c.free_at(30) for c in cal.nodes] == [8, 8, 8] and cal.free_at(15) == 21


# -- brute force ------------------------------------------------------------------------

SIZES = {"two of 4": (8, 4), "three of 4 and 2": (14, 4), "four of 2": (8, 2), "ones": (5, 1)}


def free_of(sizes, live, n, t):
    """Free GPUs of node ``n`` at ``t``: a wide grant holds its nodes whole."""
    per = max(sizes)
    return sizes[n] - sum(min(w, per) for s, e, w, ns in live if s <= t < e and n in ns)


def node_fits(sizes, live, n, v, a, b):
    times = {a} | {s for s, *_ in live if a < s < b} | {e for _, e, *_ in live if a < e < b}
    return sizes[n] >= v and all(free_of(sizes, live, n, t) >= v for t in times)


def brute_earliest(sizes, per, live, width, d, start, deadline):
    v, k = (width, 1) if width <= per else (per, width // per)
    cands = sorted({start} | {e for _, e, *_ in live if e > start} | {s for s, *_ in live if s > start})
    for t in cands:
        if deadline is not None and t + d > deadline:
            return None
        if sum(node_fits(sizes, live, n, v, t, t + d) for n in range(len(sizes))) >= k:
            return t
    return None


ops = st.lists(
    st.tuples(
        st.sampled_from(["reserve", "reserve", "reserve", "named", "release", "forget"]),
        st.integers(0, 60), st.integers(1, 30), st.integers(1, 12), st.integers(0, 10),
    ),
    max_size=25,
)
queries = st.lists(st.tuples(st.integers(1, 12), st.integers(1, 40), st.integers(0, 90),
                             st.none() | st.integers(10, 120)), min_size=1, max_size=8)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from(sorted(SIZES)), steps=ops, qs=queries, unit=st.sampled_from([1, 1800]))
def test_index_matches_brute_force(shape, steps, qs, unit):
    """``unit`` 1800 s: windows span several hours, so the whole-node hour masks are used."""
    gpus, per = SIZES[shape]
    sizes = node_sizes(gpus, per)
    cal = NodeCalendar(gpus, per)
    live: list[tuple[int, int, int, tuple[int, ...]]] = []
    floor = 0
    for kind, a, length, width, pick in steps:
        a, length = a * unit, length * unit
        a = max(a, floor)
        b = a + length
        if kind == "forget":
            floor = max(floor, a)
            cal.forget_before(floor)
            live = [(max(s, floor), e, w, ns) for s, e, w, ns in live if e > floor]
            continue
        if kind == "release":
            if live:
                s, e, w, ns = live.pop(pick % len(live))
                cut = min(e, max(s, a))
                if cut == e:
                    live.append((s, e, w, ns))
                    continue
                got = cal.release(cut, e, w, ns if pick % 2 else None)
                if pick % 2:
                    assert got == ns
                elif got != ns:
                    # Unnamed, the release is of the reservation of this end and width that
                    # began latest by ``cut`` (another one's nodes when several tie).
                    live.append((s, e, w, ns))
                    mine = [i for i, x in enumerate(live) if x[1:] == (e, w, got) and x[0] <= cut]
                    s, e, w, ns = live.pop(max(mine, key=lambda i: live[i][0]))
                if cut > s:
                    live.append((s, cut, w, got))
            continue
        if not cal.admits(width):
            assert width > per and (width % per or width // per > gpus // per)
            continue
        v, k = (width, 1) if width <= per else (per, width // per)
        if kind == "named":
            ns = tuple(sorted({(pick + i) % len(sizes) for i in range(k)}))
            ok = len(ns) == k and all(node_fits(sizes, live, n, v, a, b) for n in ns)
            if ok:
                assert cal.reserve(a, b, width, ns) == ns
                live.append((a, b, width, ns))
            else:
                with pytest.raises(ValueError):
                    cal.reserve(a, b, width, ns)
            continue
        chosen = cal.choose(width, a, b)
        ok = sum(node_fits(sizes, live, n, v, a, b) for n in range(len(sizes))) >= k
        assert (chosen is not None) == ok
        if ok:
            assert all(node_fits(sizes, live, n, v, a, b) for n in chosen) and len(set(chosen)) == k
            assert cal.reserve(a, b, width) == chosen
            live.append((a, b, width, chosen))
    # every node's calendar is the recount, and so is the pool's
    for t in sorted({floor} | {s for s, *_ in live} | {e for _, e, *_ in live}):
        if t < floor:
            continue
        per_node = [free_of(sizes, live, n, t) for n in range(len(sizes))]
        assert all(f >= 0 for f in per_node)
        if len(sizes) > 1:
            assert [c.free_at(t) for c in cal.nodes] == per_node
        assert cal.free_at(t) == sum(per_node)
    for width, d, start, deadline in qs:
        d, start = d * unit, start * unit
        deadline = None if deadline is None else deadline * unit
        start = max(start, floor)
        want = brute_earliest(sizes, per, live, width, d, start, deadline) if cal.admits(width) else None
        assert cal.earliest_fit(width, d, start, deadline) == want, (width, d, start, deadline)
        if want is not None:
            ns = cal.choose(width, want, want + d)
            v = min(width, per)
            assert ns is not None and all(node_fits(sizes, live, n, v, want, want + d) for n in ns)
        widest = max((w for w in range(1, gpus + 1) if cal.admits(w)
                      and brute_earliest(sizes, per, live, w, d, start, start + d) == start), default=0)
        assert cal.widest_fit(start, start + d) == widest
        if cal.admits(width):
            r = cal.reach(width, start)
            horizon = max([e for _, e, *_ in live] + [start]) + 1
            fit_to = [x for x in sorted({start + 1, horizon} | {e for _, e, *_ in live} | {s for s, *_ in live})
                      if start < x <= horizon
                      if brute_earliest(sizes, per, live, width, x - start, start, x) == start]
            expect = start if not fit_to else (FAR_FUTURE if fit_to[-1] == horizon else fit_to[-1])
            assert r == expect, (width, start)


# -- the hour index against each node's own calendar -----------------------------------

def plain_fit(cal, v, t, e):
    """Nodes with at least ``v`` free throughout [t, e), asking every node's calendar."""
    return [n for n, c in enumerate(cal.nodes) if c.capacity >= v and c.min_free(t, e) >= v]


def plain_earliest(cal, v, k, d, start, limit):
    """Earliest t in [start, limit] with k nodes fitting v over [t, t + d): at ``start`` or
    at some node's breakpoint (trying each)."""
    times = sorted({start} | {x for c in cal.nodes for x in c._t[1:] if start < x <= limit})
    return next((t for t in times if t <= limit and len(plain_fit(cal, v, t, t + d)) >= k), None)


def plain_soonest(cal, v, t, e, m):
    """The plain rule for which nodes: those fitting, their span of v free ending soonest."""
    def span_end(c):
        return c.free_until(v, e) if c.free_at(e) >= v else e
    return sorted(plain_fit(cal, v, t, e), key=lambda n: (span_end(cal.nodes[n]), n))[:m]


hour_ops = st.lists(
    st.tuples(st.sampled_from(["reserve", "reserve", "reserve", "release", "forget"]),
              st.integers(0, 40 * 3600), st.integers(1, 30 * 3600), st.integers(1, 24), st.integers(0, 50)),
    max_size=30,
)


def apply_steps(cal, steps, between=None, allowed=-1, live=None) -> int:  # type: ignore[no-untyped-def]
    """Reserves (nodes the calendar chooses, of the mask ``allowed``), partial releases of
    what is ``live`` (kept in that list), and forgets; ``between(a, length)`` after each
    step. The last forget's time (0 if none)."""
    live = [] if live is None else live
    floor = 0
    for kind, a, length, width, pick in steps:
        a = max(a, floor)
        if kind == "forget":
            floor = a
            cal.forget_before(floor)
            live[:] = [(max(s, floor), e, w, ns) for s, e, w, ns in live if e > floor]
        elif kind == "release" and live:
            s, e, w, ns = live.pop(pick % len(live))
            cut = min(e, max(s, a))
            if cut < e:
                cal.release(cut, e, w, ns)
            if cut > s:
                live.append((s, cut, w, ns))
        elif kind == "reserve" and cal.admits(width):
            ns = cal.choose(width, a, a + length, allowed)
            if ns is not None:
                assert all(allowed >> n & 1 for n in ns)
                live.append((a, a + length, width, cal.reserve(a, a + length, width, ns)))
        if between is not None:
            between(a, length)
    return floor


H = 3600
long_ops = st.lists(
    st.tuples(st.sampled_from(["reserve", "reserve", "reserve", "release"]), st.integers(0, 400 * H),
              st.integers(H, 150 * H), st.sampled_from([1, 2, 4, 6, 8, 16, 24]), st.integers(0, 50)),
    min_size=20, max_size=80,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=long_ops, qs=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 5), st.integers(LEVEL_REACH * H, 220 * H),
                                          st.integers(0, 420 * H), st.none() | st.integers(0, 700 * H)),
                                min_size=1, max_size=8))
def test_windows_longer_than_the_shared_ands_match_the_nodes(steps, qs):
    """Windows of days (past the hours a chunk's shared ANDs reach, where ``earliest``
    makes every start hour's ANDs at once after a few hours, ``window_ands``) on calendars of
    hundreds of hours: ``earliest`` answers as asking every node's calendar does."""
    cal = NodeCalendar(44, 8)
    apply_steps(cal, steps)
    for v, k, d, start, deadline in qs:
        limit = FAR_FUTURE if deadline is None else deadline - d
        got = cal._hours_of(v).earliest(k, d, start, limit)
        event("long path" if got is not None and got > start + 4 * H else "short")
        assert got == plain_earliest(cal, v, k, d, start, limit), (v, k, d, start, limit)


def test_window_ands_is_the_and_of_every_window():
    vals = [0b1111, 0b0111, 0b1101, 0b1111, 0b1011, 0b1110, 0b1111]
    for w in range(1, len(vals) + 1):
        want = [reduce(lambda x, y: x & y, vals[a : a + w]) for a in range(len(vals) - w + 1)]
        assert nodes_mod.window_ands(vals, w) == want, w
    assert nodes_mod.window_ands(vals, 8) == []


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=hour_ops, qs=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 4), st.integers(1, 30 * 3600),
                                          st.integers(0, 50 * 3600), st.none() | st.integers(0, 80 * 3600)),
                                min_size=1, max_size=10),
       built_first=st.booleans(), down_chunk=st.sampled_from([DOWN_CHUNK, 4]))
def test_hour_index_matches_the_nodes(steps, qs, built_first, down_chunk):
    """Windows at any second over tens of hours on five nodes of 8 and one of 4; the index
    built before the changes (kept up to date) or after them (built from the calendars);
    after any reserves, partial releases and forgets, ``fit``, ``earliest`` and ``soonest``
    answer as asking every node's calendar does. (Also with chunks of 4 hours for the ORs
    of downs that the walks to a node's next down skip by, so that walks cross many.)"""
    kept = nodes_mod.DOWN_CHUNK
    nodes_mod.DOWN_CHUNK = down_chunk
    try:
        _hour_index_matches_the_nodes(steps, qs, built_first)
    finally:
        nodes_mod.DOWN_CHUNK = kept


def _hour_index_matches_the_nodes(steps, qs, built_first):
    cal = NodeCalendar(44, 8)
    if built_first:
        for v in range(1, 9):
            cal._hours_of(v)
    def walk(a: int, length: int) -> None:  # walks between the changes: what they cache must follow them
        for v in (1, 4, 8):
            cal._hours_of(v).soonest(a, a + length, 6)
            cal._hours_of(v).reach(1, a)

    floor = apply_steps(cal, steps, walk if built_first else None)
    for v, k, d, start, deadline in qs:
        start = max(start, floor)
        h = cal._hours_of(v)
        bits = h.fit(start, start + d)
        assert [n for n in range(len(cal.nodes)) if bits >> n & 1] == plain_fit(cal, v, start, start + d)
        assert [n for n in range(len(cal.nodes)) if h.at(start) >> n & 1] == plain_fit(cal, v, start, start + 1)
        limit = FAR_FUTURE if deadline is None else deadline - d
        assert h.earliest(k, d, start, limit) == plain_earliest(cal, v, k, d, start, limit), (v, k, d, start)
        assert h.soonest(start, start + d, k) == plain_soonest(cal, v, start, start + d, k)
        for m in (1, 3, 6):
            picked = h.soonest_set(start, start + d, m)
            assert [n for n in range(len(cal.nodes)) if picked >> n & 1] == sorted(plain_soonest(cal, v, start, start + d, m))
        # again with every chunk's shared ANDs made (a fit reads long middles from them)
        if h.q0 is not None:
            for c in range((h.q0 - 1) // CHUNK, (h.q0 + len(h.sure)) // CHUNK + 1):
                h._chunk(LEVEL_REACH, c)
        edges = sorted({x for c in cal.nodes for x in c._t[1:] if x > start + 9 * 3600})
        for e in [start + d * w for w in (1, 2, 5)] + [x + o for x in edges[:12] for o in (-1, 0, 1)]:
            h._memo = None
            bits = h.fit(start, e)
            assert [n for n in range(len(cal.nodes)) if bits >> n & 1] == plain_fit(cal, v, start, e)
        # the counts and masks kept per hour are what a fresh index builds
        fresh = _fresh(cal, v)
        if h.q0 is not None and fresh.q0 is not None:
            lo = max(h.q0, fresh.q0)
            hi = min(h.q0 + len(h.sure), fresh.q0 + len(fresh.sure))
            for q in range(lo, hi):
                i, j = q - h.q0, q - fresh.q0
                assert (h.sure[i], h.flip[i], h.part[i], h.dall[i]) == \
                    (fresh.sure[j], fresh.flip[j], fresh.part[j], fresh.dall[j]), q
                assert (h.uk[i], h.ub[i], h.dk[i], h.db[i]) == (fresh.uk[j], fresh.ub[j], fresh.dk[j], fresh.db[j])
        # the whole-node masks kept up to date name only nodes wholly free in the hour (by a
        # fresh build, exact after the last forget's hour and its own first breakpoint's;
        # the kept masks may miss some: hours made before the first built are taken as busy)
        kept, built = cal._whole(), _Whole(cal.nodes, 8)
        if kept.q0 is not None and built.q0 is not None:
            for q in range(max(kept.q0, built.q0 + 1, floor // 3600 + 1), built.q0 + len(built.masks) + 2):
                assert kept.sure(q * 3600, 3600) & ~built.sure(q * 3600, 3600) == 0, q
        # a chunk's OR of downs kept for the walks to the next down covers every down in it
        if h.q0 is not None:
            for c, m in h._dor.items():
                a = max(c * nodes_mod.DOWN_CHUNK - h.q0, 0)
                z = max(c * nodes_mod.DOWN_CHUNK + nodes_mod.DOWN_CHUNK - h.q0, 0)
                assert reduce(or_, h.dall[a:z], 0) & ~m == 0, c


def _fresh(cal, v):
    return _Hours(v, cal.nodes)


# -- lost nodes -------------------------------------------------------------------------

def recount(sizes, live, t):
    """Free GPUs per node at ``t`` from the grants' own record (a wide grant holds its nodes whole)."""
    per = max(sizes)
    return [sizes[n] - sum(min(w, per) for s, e, w, ns in live if s <= t < e and n in ns) for n in range(len(sizes))]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=hour_ops, dead=st.sets(st.integers(0, 5), min_size=1, max_size=3),
       now=st.integers(0, 50 * 3600), indexed=st.booleans(), extra=hour_ops)
def test_lost_nodes_move_their_grants(steps, dead, now, indexed, extra):
    """For any grants, any lost nodes and any moment: every grant on a lost node that has not
    ended moves (from ``now`` on, or whole if it has not started) to alive nodes by the node
    rule, keeping the alive ones it had, or is refused only when no alive nodes are free for
    it; grants then keep coming and going on the alive nodes; at every instant the grants
    pack onto the nodes as they are recorded, and the index answers as the nodes do."""
    cal = NodeCalendar(44, 8)  # five nodes of 8 and one of 4
    sizes = node_sizes(44, 8)
    if indexed:
        for v in range(1, 9):
            cal._hours_of(v)
    live: list[tuple[int, int, int, tuple[int, ...]]] = []

    def play(ops, allowed):  # (no forgets: the recounts below start at 0)
        apply_steps(cal, [op for op in ops if op[0] != "forget"], allowed=allowed, live=live)

    play(steps, -1)
    alive = [n for n in range(len(sizes)) if n not in dead]
    for i in sorted(range(len(live)), key=lambda i: (live[i][0], i)):
        s, e, w, ns = live[i]
        frm = max(s, now)
        if frm >= e or not set(ns) & dead:
            assert cal.replace(s, e, w, ns, dead, now) == ns
            continue
        v, k = (w, 1) if w <= 8 else (8, w // 8)
        kept = [n for n in ns if n not in dead]
        others = [n for n in alive if n not in ns and sizes[n] >= v and cal.nodes[n].min_free(frm, e) >= v]
        lost = len(ns) - len(kept)
        before = [c.steps() for c in cal.nodes]
        got = cal.replace(s, e, w, ns, dead, now)
        event("moved" if got is not None else "breach")
        if got is None:
            assert len(others) < lost  # a breach only when no alive nodes are free for it
            assert [c.steps() for c in cal.nodes] == before
            continue
        assert not set(got) & dead and set(kept) <= set(got) and len(got) == len(ns) == k
        assert all(sizes[n] >= v for n in got) and list(got) == sorted(set(got))
        live[i] = (frm, e, w, got)
        if s < frm:
            live.append((s, frm, w, ns))  # its past stays where it was
    play(extra, reduce(or_, (1 << n for n in alive), 0))
    for t in sorted({s for s, *_ in live} | {e for _, e, *_ in live} | {0}):
        assert [c.free_at(t) for c in cal.nodes] == recount(sizes, live, t), t
        assert cal.free_at(t) == sum(recount(sizes, live, t))
    for v in (1, 4, 8):
        for t in sorted({s for s, *_ in live})[:5]:
            h = cal._hours_of(v)
            assert [n for n in range(len(sizes)) if h.fit(t, t + 7200) >> n & 1] == plain_fit(cal, v, t, t + 7200)


# -- whether a waiting grant can move earlier, asked without giving its window back ------

def test_a_whole_node_grant_with_some_own_nodes_free_moves_only_with_enough_others():
    """Two whole nodes over [10 h, 20 h) on nodes 0 and 1; node 0 free before it, node 1
    busy until 10 h, nodes 2 and 3 busy until 30 h: no earlier window (node 0 alone is not
    enough). Once node 3 is free from 5 h, node 0 and node 3 fit from 5 h."""
    h = 3600
    cal = NodeCalendar(32, 8)
    cal.reserve(0, 10 * h, 8, (1,))
    cal.reserve(0, 30 * h, 8, (2,))
    cal.reserve(0, 30 * h, 8, (3,))
    cal.reserve(10 * h, 20 * h, 16, (0, 1))
    assert not cal.may_move_earlier(16, 10 * h, 0, 10 * h, (0, 1))
    cal.release(5 * h, 30 * h, 8, (3,))
    assert cal.may_move_earlier(16, 10 * h, 0, 10 * h, (0, 1))
    # a narrow grant on a node busy the instant before it, no other node free before it
    cal = NodeCalendar(16, 8)
    cal.reserve(0, 10 * h, 8, (0,))
    cal.reserve(0, 40 * h, 6, (1,))
    cal.reserve(10 * h, 12 * h, 4, (0,))
    assert not cal.may_move_earlier(4, 2 * h, 0, 10 * h, (0,))
    cal.reserve(0, 40 * h, 1, (1,))  # node 1 now has 1 free: still nothing for 4
    assert not cal.may_move_earlier(4, 2 * h, 0, 10 * h, (0,))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.sampled_from([(44, 8), (20, 8), (16, 4)]), steps=hour_ops, now=st.integers(0, 5 * 3600))
def test_may_move_earlier_never_misses_an_earlier_window(shape, steps, now):
    """For any grants on nodes and any moment: whenever a waiting grant would fit a window
    of its length starting before its own once its window is given back (the brute force
    over every grant but it), ``may_move_earlier`` says it may, and it never says so for a
    grant whose start is not after now."""
    gpus, per = shape
    cal = NodeCalendar(gpus, per)
    sizes = node_sizes(gpus, per)
    live: list[tuple[int, int, int, tuple[int, ...]]] = []
    for kind, a, length, width, pick in steps:  # admitted at their earliest, some end early
        if kind == "release" and live:
            s, e, w, ns = live.pop(pick % len(live))
            cut = min(max(s, s + a // 4), e)
            if cut < e:
                cal.release(cut, e, w, ns)
            if cut > s:
                live.append((s, cut, w, ns))
        elif kind == "reserve" and cal.admits(width):
            t = cal.earliest_fit(width, length, a // 8)
            live.append((t, t + length, width, cal.reserve(t, t + length, width)))
    for i, (s, e, w, ns) in enumerate(live):
        d = e - s
        says = cal.may_move_earlier(w, d, now, s, ns)
        if s <= now:
            assert not says
            continue
        others = live[:i] + live[i + 1:]
        truth = brute_earliest(sizes, per, others, w, d, now, s - 1 + d)
        event("can move" if truth is not None else "cannot move")
        event("says may" if says else "says no")
        if truth is not None:
            assert says, (s, e, w, ns, now, truth)
