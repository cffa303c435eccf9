"""The lending plan (core.lending): what is lent, what is taken back, and when."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cellsched.core.lending import Borrow, Hold, Want, free_until, holds_of, plan

N0, N1 = ("h100", 0), ("h100", 1)
SIZES = {N0: 8, N1: 8}
GRACE = 30


def want(task: int, gpus: int = 1, group: int = 1, cap: int = 64, pool: str = "h100") -> Want:
    return Want(task, pool, gpus, group, cap)


def test_idle_gpus_are_lent_best_fit_and_the_submission_cap_holds() -> None:
    # Node 0 has 6 of 8 GPUs held by a window for the next day; node 1 is empty.
    holds = [Hold(N0, 6, 0, 86400)]
    p = plan(100, SIZES, holds, [], [want(1), want(2), want(3, gpus=4), want(4, cap=3)], {}, GRACE)
    # Best fit: the two one-GPU tasks fill node 0's two free GPUs, the 4-GPU one goes to node 1;
    # task 4 (same submission, cap 3 with 1 + 1 + ... ) is not started: 1 + 1 + 4 > 3.
    assert p.start == ((1, N0), (2, N0), (3, N1))
    assert p.reclaim == ()


def test_a_window_known_in_advance_is_reclaimed_for_at_its_start_minus_grace() -> None:
    holds = [Hold(N0, 8, 1000, 2000)]
    b = [Borrow(7, N0, 2, started_at=0)]
    assert plan(1000 - GRACE - 1, SIZES, holds, b, [], {}, GRACE).reclaim == ()
    assert plan(1000 - GRACE, SIZES, holds, b, [], {}, GRACE).reclaim == (7,)
    # and nothing new starts on node 0 that could not run min_run_s before its grace
    # (min_run_s = 60): at 910 a borrower on node 0 still gets its 60 s; at 911 it would not.
    assert plan(1000 - GRACE - 60, SIZES, holds, [], [want(1)], {}, GRACE).start == ((1, N0),)
    assert plan(1000 - GRACE - 59, SIZES, holds, [], [want(1)], {}, GRACE).start == ((1, N1),)


def test_the_newest_borrowers_go_first_and_only_as_many_as_needed() -> None:
    holds = [Hold(N0, 5, 500, 900)]  # a window of 5 GPUs on node 0 from t=500
    b = [Borrow(1, N0, 2, started_at=10), Borrow(2, N0, 2, started_at=20), Borrow(3, N0, 2, started_at=30)]
    # 5 + 6 > 8: 3 GPUs too many; the newest (3), then (2) go; (1) stays.
    assert plan(480, SIZES, holds, b, [], {}, GRACE).reclaim == (3, 2)
    # one already leaving counts: only one more must go
    b2 = [Borrow(1, N0, 2, 10), Borrow(2, N0, 2, 20), Borrow(3, N0, 2, 30, preempting=True)]
    assert plan(480, SIZES, holds, b2, [], {}, GRACE).reclaim == (2,)


def test_a_pull_forward_onto_lent_gpus_reclaims_at_once() -> None:
    b = [Borrow(1, N1, 8, started_at=0)]
    assert plan(100, SIZES, [], b, [], {}, GRACE).reclaim == ()
    pulled = [Hold(N1, 4, 100, 400)]  # a waiting grant just moved to start now on node 1
    assert plan(100, SIZES, pulled, b, [], {}, GRACE).reclaim == (1,)


def test_a_lost_node_lends_nothing_and_whole_node_grants_hold_each_node() -> None:
    p = plan(0, SIZES, [], [], [want(1)], {}, GRACE, dead=[N0])
    assert p.start == ((1, N1),)
    assert holds_of("h100", [0, 1], 16, 8, 0, 10) == [Hold(N0, 8, 0, 10), Hold(N1, 8, 0, 10)]
    assert holds_of("h100", [1], 3, 8, 0, 10) == [Hold(N1, 3, 0, 10)]


def test_free_until_is_where_the_calendar_needs_the_lent_gpus() -> None:
    holds = [Hold(N0, 4, 100, 200), Hold(N0, 4, 150, 300), Hold(N1, 8, 0, 50)]
    assert free_until(N0, 8, holds, 1, 0) == 150  # 4 + 4 + 1 > 8 at 150
    assert free_until(N0, 8, holds, 5, 0) == 100
    assert free_until(N0, 8, holds, 1, 300) is None


@settings(max_examples=150, deadline=None)
@given(
    windows=st.lists(st.tuples(st.integers(0, 1), st.integers(1, 8), st.integers(0, 400), st.integers(1, 300)),
                     max_size=6),
    tasks=st.lists(st.integers(1, 4), max_size=8),
)
def test_borrowers_never_overlap_a_window_past_its_start(
        windows: list[tuple[int, int, int, int]], tasks: list[int]) -> None:
    """Drive plan() over time as the daemon does (a task reclaimed leaves after the grace):
    at every instant, windows + borrowers fit on every node, provided the windows do."""
    nodes = [N0, N1]
    holds: list[Hold] = []
    for n, g, s, d in windows:
        h = Hold(nodes[n], g, s + 100, s + 100 + d)
        if all(sum(x.gpus for x in holds + [h] if x.node == h.node and x.start <= t < x.end) <= 8
               for t in range(h.start, h.end)):
            holds.append(h)
    queue = [want(i, gpus=g, group=i) for i, g in enumerate(tasks)]
    running: dict[int, tuple[tuple[str, int], int, int, int | None]] = {}  # task -> node, gpus, start, leaving at
    for now in range(0, 800, 5):
        for t, (node, g, st0, leave) in list(running.items()):
            if leave is not None and now >= leave:
                del running[t]
        borrows = [Borrow(t, node, g, st0, leave is not None) for t, (node, g, st0, leave) in running.items()]
        p = plan(now, SIZES, holds, borrows, [w for w in queue if w.task not in running], {}, GRACE, min_run_s=10, lead=10)
        for t in p.reclaim:
            node, g, st0, _ = running[t]
            running[t] = (node, g, st0, now + GRACE)
        for t, node in p.start:
            running[t] = (node, queue[t].gpus, now, None)
        for u in range(now, now + 5):  # every instant until the next tick
            for node in nodes:
                window = sum(h.gpus for h in holds if h.node == node and h.start <= u < h.end)
                lent = sum(g for (nd, g, _, leave) in running.values() if nd == node and (leave is None or u < leave))
                assert window + lent <= 8, (u, node, window, lent)
