"""The tail rule of ``start_now`` (core/admission.py ``start_waiting_now``): the oldest
waiting grant holds its place, so a wide grant is not passed over by narrower work that
fills every gap. Hand-worked schedules, on one node and on nodes."""

from __future__ import annotations

import pytest

from cellsched.core.admission import Grant, Hold, Schedule, as_hold, pull_rule, start_waiting_now
from cellsched.spec.cluster import ClusterConfig, Pool, Team


def schedule(per_node: int) -> Schedule:
    return Schedule.empty(ClusterConfig(
        pools=(Pool(name="p", gpu_type="g", gpus=4, gpus_per_node=per_node),),
        teams=(Team(name="a", allowance_gpu_hours=1e6, period="none"),)))


def grant(name: str, width: int, start: int, end: int) -> Grant:
    return Grant(name, "a", "p", width, start, end)


@pytest.mark.parametrize("per_node", [4, 2])
@pytest.mark.parametrize("reserve, w_at, n_at", [(0, 100, 10), (1, 50, 200)])
def test_a_wide_grant_is_not_passed_over(per_node, reserve, w_at, n_at):
    # 4 GPUs. B (2 GPUs) runs [0, 50); A (2 GPUs) runs [0, 100) but ends at 10. W (4 GPUs,
    # 100 s) is promised [100, 200); N (2 GPUs, 60 s), submitted after it, [200, 260).
    # At 10 two GPUs are free until 50 and four from 50 to 100.
    # - Without the reservation, W (the longest) does not fit now and N does: N starts at 10
    #   and holds two GPUs until 70, so W cannot move into [50, 150): it waits for a pass at
    #   which its whole window fits now.
    # - With it, W, the oldest, moves to its earliest window [50, 150) first, and N, which
    #   would overlap it, stays at its promise.
    s = schedule(per_node)
    b = s.commit(grant("B", 2, 0, 50))
    a = s.commit(grant("A", 2, 0, 100))
    w = s.commit(grant("W", 4, 100, 200))
    n = s.commit(grant("N", 2, 200, 260))
    assert b.nodes != a.nodes or per_node == 4
    s.release(a, 10)
    moves = start_waiting_now(s, [(1, w), (2, n)], 10, reserve=reserve)
    got = {new.project: new.start for _, _, new in moves}
    assert got.get("W", 100) == w_at
    assert got.get("N", 200) == n_at
    for _, old, new in moves:
        assert new.start < old.start and new.end - new.start == old.end - old.start


def test_the_next_oldest_holds_its_place_when_the_oldest_starts_now():
    # 4 GPUs, all free at 5 (the running grant ended). X (2 GPUs, 10 s) and Y (4 GPUs,
    # 10 s), oldest first, promised [20, 30) and [30, 40). X fits now and starts: Y is then
    # the oldest and moves to its earliest window, 15, when X's window ends.
    s = schedule(4)
    r = s.commit(grant("R", 4, 0, 20))
    x = s.commit(grant("X", 2, 20, 30))
    y = s.commit(grant("Y", 4, 30, 40))
    s.release(r, 5)
    moves = start_waiting_now(s, [(1, x), (2, y)], 5, reserve=1)
    assert [(new.project, new.start) for _, _, new in moves] == [("X", 5), ("Y", 15)]


@pytest.mark.parametrize("reserve, expected", [
    (1, [("P", 50), ("Q", 60)]), (2, [("P", 50), ("Q", 60), ("Z", 70)])])
def test_reserve_counts_grants_left_waiting(reserve, expected):
    # 4 GPUs, free from 50. P, Q, Z (4 GPUs, 10 s each), oldest first, promised 100, 110,
    # 120. P fits now and starts (it does not count); then the ``reserve`` oldest left
    # waiting move to their earliest windows, one after the other; the rest stay.
    s = schedule(4)
    r = s.commit(grant("R", 4, 0, 100))
    p = s.commit(grant("P", 4, 100, 110))
    q = s.commit(grant("Q", 4, 110, 120))
    z = s.commit(grant("Z", 4, 120, 130))
    s.release(r, 50)
    moves = start_waiting_now(s, [(1, p), (2, q), (3, z)], 50, reserve=reserve)
    assert [(new.project, new.start) for _, _, new in moves] == expected


@pytest.mark.parametrize("per_node", [4, 2])
@pytest.mark.parametrize("min_width, expected", [
    (1, [("O", 200), ("N", 10)]),  # the narrow O is the oldest: it holds, W is passed over
    (4, [("W", 50)]),  # only wide grants hold: W does, and N may not cut in front of it
])
def test_only_wide_grants_hold_their_place(per_node, min_width, expected):
    # The schedule of the first test with an older narrow grant O (2 GPUs, 300 s),
    # promised [260, 560). At 10, O's earliest window is [200, 500) (two GPUs beside N,
    # then all four): holding O's place there does nothing for W, which N then passes.
    # Holding only grants of 4 GPUs or more skips O: W moves to [50, 150) and N stays.
    s = schedule(per_node)
    s.commit(grant("B", 2, 0, 50))
    a = s.commit(grant("A", 2, 0, 100))
    w = s.commit(grant("W", 4, 100, 200))
    n = s.commit(grant("N", 2, 200, 260))
    o = s.commit(grant("O", 2, 260, 560))
    s.release(a, 10)
    moves = start_waiting_now(s, [(0, o), (1, w), (2, n)], 10, reserve=Hold(1, min_width))
    assert [(new.project, new.start) for _, _, new in moves] == expected


@pytest.mark.parametrize("per_node", [4, 2])
@pytest.mark.parametrize("backlog_s, w_at, n_at", [(130, 50, 200), (131, 100, 10)])
def test_the_oldest_holds_only_while_work_is_waiting(per_node, backlog_s, w_at, n_at):
    # The schedule of the first test. At 10, W (4 GPUs x 100 s) and N (2 x 60 s) wait:
    # 520 GPU-seconds, 130 s of the pool's 4 GPUs. A hold that asks for 130 s of waiting
    # work holds W's place (W moves to [50, 150), N stays); one that asks for 131 s does
    # not (N starts at 10, W keeps its promise).
    s = schedule(per_node)
    s.commit(grant("B", 2, 0, 50))
    a = s.commit(grant("A", 2, 0, 100))
    w = s.commit(grant("W", 4, 100, 200))
    n = s.commit(grant("N", 2, 200, 260))
    s.release(a, 10)
    moves = start_waiting_now(s, [(1, w), (2, n)], 10, reserve=Hold(1, backlog_s=backlog_s))
    got = {new.project: new.start for _, _, new in moves}
    assert (got.get("W", 100), got.get("N", 200)) == (w_at, n_at)
    assert pull_rule(f"hold:1:1:0:0:{backlog_s}") == ("start_now", Hold(1, 1, 0, 0, backlog_s))


def test_a_bare_count_is_a_hold_of_any_width():
    assert as_hold(2) == Hold(2, 1) and as_hold(Hold(1, 16)) == Hold(1, 16)
    assert not Hold() and Hold(1)
    assert pull_rule("hold_oldest") == ("start_now", Hold(1, 1))
    assert pull_rule("hold_when_busy") == ("start_now", Hold(1, 1, backlog_s=3 * 3600))
