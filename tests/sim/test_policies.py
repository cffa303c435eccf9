"""Hand-made traces whose schedules are worked out by hand, for every policy."""

from __future__ import annotations

import pytest
from simbuild import run, setup, starts, trace

from cellsched.sim.metrics import summarise

# The classic EASY example, on 4 GPUs, requests exact (estimate factor 1):
#   A (2 GPUs, 10 s) at 0 runs at once; B (4 GPUs, 5 s) at 1 must wait for A: the head's
#   reservation (shadow time) is 10. C (1 GPU, 5 s) at 2 fits the 2 idle GPUs and ends by 7
#   < 10: backfilled. D (1 GPU, 20 s) at 3 would still run at 10: it would delay B, so waits.
CLASSIC = trace((0, 10, 2), (1, 5, 4), (2, 5, 1), (3, 20, 1))


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("fifo", [0, 10, 15, 15]),  # C waits behind B
        ("easy", [0, 10, 2, 15]),  # C backfilled, D not
        ("cellsched", [0, 10, 2, 15]),  # each gets the earliest window at submission
    ],
)
def test_classic_easy_example(policy, expected):
    e = run(policy, setup(CLASSIC, 4))
    assert starts(e) == expected


@pytest.mark.parametrize("policy, arriving", [("fifo", 6 / 12), ("easy", 7 / 12)])
def test_utilisation_while_work_arrives_leaves_the_drain_out(policy, arriving):
    # CLASSIC on 4 GPUs: work arrives over [0, 3). Only A (2 GPUs) runs there under FIFO;
    # EASY also backfills C (1 GPU) at 2. The whole span is the same 35 s for both
    # (D ends at 35), 65 busy GPU-seconds.
    st = setup(CLASSIC, 4)
    m = summarise(run(policy, st), st, 0.0)
    assert m["utilisation_arriving"] == round(arriving, 4)
    assert m["utilisation"] == round(65 / (4 * 35), 4)


def test_easy_backfills_wide_job_into_gpus_the_head_will_not_need():
    # 6 GPUs. A 4 GPUs to 10. B (4 GPUs) waits until 10; at 10 two GPUs are spare (extra = 2).
    # C (2 GPUs, 100 s) ends long after 10 but uses only the spare GPUs: backfilled at 2.
    # D (1 GPU, 100 s) then finds no GPU free: waits until C... it fits after B starts? No:
    # at 10 B takes 4 of the 4 A gave back; D starts when B ends at 15.
    tr = trace((0, 10, 4), (1, 5, 4), (2, 100, 2), (3, 100, 1))
    assert starts(run("easy", setup(tr, 6))) == [0, 10, 2, 15]
    assert starts(run("fifo", setup(tr, 6))) == [0, 10, 10, 15]


def test_cellsched_compresses_when_a_job_ends_early_and_keeps_promises():
    # Requested 10 s, ran 5. B's promised start is 10; A ends at 5, B moves to 5.
    tr = trace((0, 5, 4, 10), (1, 5, 4, 10), (2, 3, 4, 10))
    e = run("cellsched", setup(tr, 4))
    assert e.promised == [0, 10, 20]
    assert starts(e) == [0, 5, 10]
    m = summarise(e, setup(tr, 4), 0.0)
    assert m["promise_kept"] == 1.0 and m["guarantee_breaches"] == 0


@pytest.mark.parametrize("rule, reserve, expected", [
    ("compact", 0, [0, 2, 2, 8]), ("start_now", 0, [0, 9, 9, 2]), ("start_now", 1, [0, 2, 2, 8])])
def test_cellsched_pull_forward_order(rule, reserve, expected):
    # 2 GPUs. A (2 GPUs) asks 10, runs 2. B (1 GPU, 6) and C (1 GPU, 6) are promised 10;
    # D (2 GPUs, 7) is promised 16. When A ends at 2: compact takes them in start order, so
    # B and C slide to 2, then D to 8; start_now without a reservation starts the longest
    # that fits now first: D (7 s) at 2, then B and C when it ends at 9. With the oldest
    # holding its place (hold_oldest), B, the oldest, moves to 2 and starts; then C, the
    # oldest left, does too; D goes to 8.
    tr = trace((0, 2, 2, 10), (0, 6, 1), (0, 6, 1), (0, 7, 2))
    e = run("cellsched", setup(tr, 2), rule=rule, reserve=reserve)
    assert e.promised == [0, 10, 10, 16]
    assert starts(e) == expected


def test_cellsched_jump_into_a_hole():
    # 2 GPUs, all submitted at 0. A (1 GPU) asks 20, runs 5; C (1 GPU) runs 30. B (2 GPUs, 10)
    # is promised 30. D (1 GPU, 12) does not fit the 10 s gap at [20, 30): promised 40, after
    # B. When A ends at 5, one GPU is free over [5, 20): D jumps back over B into that hole;
    # B cannot move (C holds a GPU until 30).
    tr = trace((0, 5, 1, 20), (0, 30, 1), (0, 10, 2), (0, 12, 1))
    e = run("cellsched", setup(tr, 2))
    assert e.promised == [0, 0, 30, 40]
    assert starts(e) == [0, 0, 30, 5]


@pytest.mark.parametrize(
    "rule, expected",
    [
        # A's early end at 2 frees a GPU, but E holds the other until 6: compact moves B
        # to 6 at once, so N (submitted at 3, 5 s) finds only a 4 s gap and goes after B.
        ("compact", [0, 0, 6, 16]),
        # start_now without a reservation leaves B's window at 10, so N starts at 3 in the
        # free GPU; B starts when its whole window fits now, at 8 when N ends: still before
        # its promise.
        ("start_now", [0, 0, 8, 3]),
        # start_now with the oldest waiting grant holding its place (hold_oldest): B is the
        # oldest, moves to 6 at once as compact would, and N goes after it.
        ("start_now+reserve", [0, 0, 6, 16]),
    ],
)
def test_pull_forward_rules_differ_on_a_newcomer(rule, expected):
    # 2 GPUs: A (1 GPU, asks 10, runs 2), E (1 GPU, 6 s), B (2 GPUs, 10 s, promised 10),
    # then N (1 GPU, 5 s) at 3.
    tr = trace((0, 2, 1, 10), (0, 6, 1, 6), (0, 10, 2, 10), (3, 5, 1, 5))
    reserve = 1 if rule.endswith("+reserve") else 0
    e = run("cellsched", setup(tr, 2), rule=rule.removesuffix("+reserve"), reserve=reserve)
    assert e.promised[:3] == [0, 0, 10]
    assert starts(e) == expected


def test_wider_than_the_pool_is_refused_by_everyone():
    tr = trace((0, 5, 8), (0, 5, 1))
    for p in ("cellsched", "easy", "fifo", "quota"):
        e = run(p, setup(tr, 4))
        assert e.refused == {0: "wider_than_pool" if p != "quota" else "wider_than_slice"}
        assert e.start[1] == 0


def test_quota_partitions_by_allowance_share_fifo_inside():
    # Teams a:b = 3:1 on 4 GPUs -> slices 3 and 1. b's 2-GPU job can never run.
    tr = trace((0, 10, 3, 10, "a"), (0, 10, 1, 10, "b"), (1, 5, 1, 5, "b"), (2, 5, 2, 5, "b"), (3, 5, 1, 5, "a"))
    st = setup(tr, 4, teams={"a": 30, "b": 10})
    e = run("quota", st)
    assert e.refused == {3: "wider_than_slice"}
    assert starts(e) == [0, 0, 10, -1, 10]  # a's slice is full until 10 even though b's idles later


def test_cellsched_refuses_over_allowance():
    tr = trace((0, 3600, 1, 3600, "a"), (1, 3600, 1, 3600, "a"))
    st = setup(tr, 4, teams={"a": 1.5})
    e = run("cellsched", st)
    assert e.refused == {1: "over_allowance"}


def test_default_allowances_admit_the_whole_trace_and_scale_tightens_them():
    tr = trace(*[(i, 3600, 1) for i in range(10)])
    assert run("cellsched", setup(tr, 2)).refused == {}
    assert len(run("cellsched", setup(tr, 2, scale=0.5)).refused) == 5


def test_hold_oldest_is_start_now_with_the_oldest_holding_its_place():
    """The cluster's policy names the rule; hold_oldest = start_now with one reservation."""
    from cellsched.core.admission import RESERVE_OLDEST, Hold, pull_rule

    assert pull_rule("start_now") == ("start_now", Hold()) and pull_rule("compact") == ("compact", Hold())
    assert pull_rule("hold_oldest") == ("start_now", Hold(RESERVE_OLDEST)) == ("start_now", Hold(1, 1))
    tr = trace((0, 2, 2, 10), (0, 6, 1), (0, 6, 1), (0, 7, 2))
    assert starts(run("cellsched", setup(tr, 2), rule="hold_oldest")) == [0, 2, 2, 8]
    assert starts(run("cellsched", setup(tr, 2), rule="start_now")) == [0, 9, 9, 2]
    # The default, hold_when_busy: 3 h of work waiting is far off here, so start_now's.
    assert starts(run("cellsched", setup(tr, 2))) == [0, 9, 9, 2]
