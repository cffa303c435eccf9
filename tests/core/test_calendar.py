"""The flat capacity calendar against a brute-force reference (hypothesis), with the block
summaries that long calendars use switched on at small sizes: after any reserves,
releases and forgets, ``earliest``, ``min_free`` and ``free_until`` answer as reading every
breakpoint does."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cellsched.core import calendar as C
from cellsched.core.calendar import FAR_FUTURE, CapacityCalendar


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 3 breakpoints, used on spans of 6 or more of calendars of 8 or more."""
    monkeypatch.setattr(C, "BLOCK", 3)
    monkeypatch.setattr(C, "LONG", 6)
    monkeypatch.setattr(C, "BLOCKED_FROM", 8)


def plain_free(live, cap, t):
    return cap - sum(w for s, e, w in live if s <= t < e)


def plain_earliest(live, cap, width, d, start, deadline):
    times = sorted({start} | {s for s, _, _ in live if s > start} | {e for _, e, _ in live if e > start})
    for t in times:
        if deadline is not None and t + d > deadline:
            return None
        inside = [t] + [x for x in times if t < x < t + d]
        if all(plain_free(live, cap, x) >= width for x in inside):
            return t
    return None


ops = st.lists(st.tuples(st.sampled_from(["reserve"] * 6 + ["release", "forget"]), st.integers(0, 400),
                         st.integers(1, 60), st.integers(1, 8), st.integers(0, 99)), min_size=10, max_size=80)
queries = st.lists(st.tuples(st.integers(1, 16), st.integers(1, 200), st.integers(0, 450),
                             st.none() | st.integers(0, 700)), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(steps=ops, qs=queries)
def test_calendar_with_block_summaries_matches_brute_force(small_blocks, steps, qs):
    cap = 16
    cal = CapacityCalendar(cap)
    live: list[tuple[int, int, int]] = []
    floor = 0
    for kind, a, length, width, pick in steps:
        a = max(a, floor)
        if kind == "forget":
            floor = a
            cal.forget_before(floor)
            live = [(max(s, floor), e, w) for s, e, w in live if e > floor]
        elif kind == "release" and live:
            s, e, w = live.pop(pick % len(live))
            cut = min(e, max(s, a))
            if cut < e:
                cal.release(cut, e, w)
            if cut > s:
                live.append((s, cut, w))
        elif kind == "reserve" and cal.min_free(a, a + length) >= width:
            cal.reserve(a, a + length, width)
            live.append((a, a + length, width))
        # a query between changes, so summaries made from an older calendar would show
        w, d, start, deadline = qs[pick % len(qs)]
        start = max(start, floor)
        assert cal.earliest(w, d, start, deadline) == plain_earliest(live, cap, w, d, start, deadline)
    event("summarised" if len(cal) >= 8 else "short")
    for w, d, start, deadline in qs:
        start = max(start, floor)
        assert cal.earliest(w, d, start, deadline) == plain_earliest(live, cap, w, d, start, deadline)
        points = [start] + sorted({x for s, e, _ in live for x in (s, e) if start < x < start + d})
        assert cal.min_free(start, start + d) == min(plain_free(live, cap, x) for x in points)
        after = [x for x in sorted({x for s, e, _ in live for x in (s, e)}) if x > start]
        want = start if plain_free(live, cap, start) < w else next(
            (x for x in after if plain_free(live, cap, x) < w), FAR_FUTURE)
        assert cal.free_until(w, start) == want
