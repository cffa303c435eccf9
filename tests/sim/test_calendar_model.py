"""The capacity calendar against a brute-force model (one free count per second).

The calendar's scans were rewritten for speed (C-level scans, one min() per window); these
check that every query still answers exactly what the step function says.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cellsched.core.calendar import FAR_FUTURE, CapacityCalendar

H = 40  # model horizon; everything happens in [0, H)


def model_earliest(free: list[int], cap: int, width: int, duration: int, start: int, deadline):  # noqa: ANN001
    t = start
    while True:
        if deadline is not None and t + duration > deadline:
            return None
        if all((free[u] if u < H else cap) >= width for u in range(t, t + duration)):
            return t
        t += 1


ops = st.lists(
    st.tuples(st.integers(0, H - 1), st.integers(1, 12), st.integers(1, 4)), min_size=0, max_size=25
)


@settings(max_examples=300, deadline=None)
@given(cap=st.integers(1, 6), reservations=ops, queries=st.lists(
    st.tuples(st.integers(1, 6), st.integers(1, 10), st.integers(0, H), st.one_of(st.none(), st.integers(0, H + 10))),
    max_size=10,
))
def test_calendar_matches_model(cap, reservations, queries):
    cal = CapacityCalendar(cap)
    free = [cap] * H
    kept = []
    for s, d, w in reservations:
        e = min(H, s + d)
        if e <= s:
            continue
        if min(free[s:e]) >= w:
            cal.reserve(s, e, w)
            for u in range(s, e):
                free[u] -= w
            kept.append((s, e, w))
        else:
            try:
                cal.reserve(s, e, w)
            except ValueError:
                pass
            else:
                raise AssertionError("over-commit accepted")
    for u in range(H):
        assert cal.free_at(u) == free[u]
    for w, d, s, dl in queries:
        expect = None if w > cap else model_earliest(free, cap, w, d, s, dl)
        assert cal.earliest(w, d, s, dl) == expect
        e = min(H, s + d)
        if e > s:
            assert cal.min_free(s, e) == min(free[s:e])
            assert cal.max_free(s, e) == max(free[s:e])
            # runs(): maximal spans with >= w free that meet [s, e)
            got = cal.runs(w, s, e)
            want = []
            u = 0
            while u < H:
                if free[u] >= w:
                    v = u
                    while v < H and free[v] >= w:
                        v += 1
                    if v > s and u < e:
                        want.append((u if u > 0 else -(1 << 62), FAR_FUTURE if v == H and w <= cap else v))
                    u = v
                else:
                    u += 1
            assert got == want
    # releasing everything gives the empty calendar back
    for s, e, w in kept:
        cal.release(s, e, w)
    assert cal.steps() == []
