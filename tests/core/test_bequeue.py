"""The fair-share order of queued best-effort tasks (core/bequeue.py): least recent usage
first, teams taking turns, FIFO within a team, the same answer whatever the input's order."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from cellsched.core.bequeue import QueuedTask, order

_ids = itertools.count(1)


def task(team: str, queued_at: int = 0, be: int = 1, seq: int = 0, gpus: int = 1, id: int | None = None) -> QueuedTask:
    return QueuedTask(next(_ids) if id is None else id, team, gpus, queued_at, be, seq)


def teams(out: list[QueuedTask]) -> str:
    return "".join(t.team for t in out)


def test_nothing_queued_is_an_empty_order() -> None:
    assert order([], {"a": 5}) == []


def test_within_a_team_first_queued_first_then_submission_then_place_in_the_spec() -> None:
    late = task("a", queued_at=20, be=1, seq=0)
    second_job = task("a", queued_at=10, be=2, seq=1)
    first_job = task("a", queued_at=10, be=2, seq=0)
    older_sub = task("a", queued_at=10, be=1, seq=5)
    assert order([late, second_job, first_job, older_sub], {}) == [older_sub, first_job, second_job, late]


def test_the_team_with_least_recent_usage_goes_first() -> None:
    a, b = task("a"), task("b")
    assert order([a, b], {"a": 3600, "b": 0}) == [b, a]
    assert order([a, b], {"a": 0}) == [a, b]  # a team missing from usage has used nothing; ties by name


def test_teams_with_equal_usage_take_turns() -> None:
    queued = [task("b", seq=i) for i in range(3)] + [task("a", seq=i) for i in range(3)]
    assert teams(order(queued, {"a": 100, "b": 100})) == "ababab"


def test_a_team_behind_goes_first_until_the_picks_make_up_the_difference() -> None:
    queued = [task("a", seq=i) for i in range(4)] + [task("b", seq=i) for i in range(4)]
    assert teams(order(queued, {"a": 2, "b": 0})) == "bbababaa"


def test_picks_count_their_gpus() -> None:
    wide, narrow = [task("a", gpus=4, seq=i) for i in range(2)], [task("b", gpus=1, seq=i) for i in range(5)]
    # a's 4-GPU task counts 4: b's one-GPU tasks catch up before a goes again
    assert teams(order(wide + narrow, {})) == "abbbbab"


def test_a_preempted_task_keeps_its_place() -> None:
    """Requeued after a preemption with its first queued_at: ahead of tasks queued since."""
    newer = [task("a", queued_at=50, be=2, seq=i) for i in range(3)]
    requeued = task("a", queued_at=10, be=1, seq=7)
    assert order([*newer, requeued], {})[0] == requeued


queued_tasks = st.lists(
    st.builds(QueuedTask, id=st.integers(1, 10**6), team=st.sampled_from(["a", "b", "c"]), gpus=st.integers(1, 8),
              queued_at=st.integers(0, 100), be_id=st.integers(1, 5), seq=st.integers(0, 20)),
    max_size=40, unique_by=lambda t: t.id)
usages = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.integers(0, 50))


@settings(max_examples=150, deadline=None)
@given(queued_tasks, usages, st.randoms(use_true_random=False))
def test_every_task_once_fifo_per_team_and_the_input_order_does_not_matter(
        tasks: list[QueuedTask], usage: dict[str, int], rnd) -> None:  # type: ignore[no-untyped-def]
    out = order(tasks, usage)
    assert sorted(t.id for t in out) == sorted(t.id for t in tasks)
    for team in "abc":
        mine = [t for t in out if t.team == team]
        assert mine == sorted(mine, key=lambda t: (t.queued_at, t.be_id, t.seq, t.id))
    shuffled = list(tasks)
    rnd.shuffle(shuffled)
    assert order(shuffled, usage) == out


@settings(max_examples=150, deadline=None)
@given(queued_tasks, usages)
def test_each_pick_is_a_team_with_least_usage_so_far(tasks: list[QueuedTask], usage: dict[str, int]) -> None:
    """Replaying the order: every task picked is of a waiting team whose usage (recent plus
    the GPUs of its tasks picked before) is the least, ties by name."""
    out = order(tasks, usage)
    used = {team: usage.get(team, 0) for team in {t.team for t in tasks}}
    waiting = {team: sum(t.team == team for t in tasks) for team in used}
    for t in out:
        least = min((used[team], team) for team, n in waiting.items() if n)
        assert (used[t.team], t.team) == least
        used[t.team] += t.gpus
        waiting[t.team] -= 1
