"""The expected start, measured in the simulator (issue 15, point 3): ``cellsched`` with
``expect_every`` reports, for jobs that waited at least an hour, the error of the expected
start and of the promise, and the figures are the hand-computed ones."""

from __future__ import annotations

from simbuild import setup, trace

from cellsched.sim.engine import Engine
from cellsched.sim.metrics import summarise
from cellsched.sim.policies.cellsched import Cellsched


def test_the_expected_start_and_the_promise_are_measured_on_nodes():
    # 8 GPUs on two nodes of 4; every job runs half the window it asks for. j0 (8 GPUs)
    # runs [0, 500) of [0, 1000): the history, ratio 0.5. j1 (8 GPUs) runs from 600, window
    # 20,000, ends at 10,600. j2 (8 GPUs, window 10,000) submitted at 700 is promised
    # 20,600 and starts at 10,600 (pulled forward): it waited 9,900 s. Its expected start:
    # j1 holds 0.5 of its window from 600: 10,600, exact (no later work arrives within the
    # day). Error 0; the promise's 10,000 / 9,900.
    tr = trace((0, 500, 8, 1000), (600, 10_000, 8, 20_000), (700, 5000, 8, 10_000))
    st = setup(tr, 8, per_node=4)
    pol = Cellsched(st, expect_every=1)
    e = Engine(st.trace.jobs, st.gpus, pol, st.nodes)
    e.run()
    assert e.start == [0, 600, 10_600] and e.promised[2] == 20_600
    acc = summarise(e, st, 0.0)["expected_start"]
    assert acc["sampled"] == 1 and acc["waited_1h"] == 1
    assert acc["expected_err_p50"] == 0.0 and acc["expected_err_p90"] == 0.0
    assert acc["promise_err_p50"] == round(10_000 / 9_900, 3)
    assert acc["every"] == 1 and acc["estimate_seconds"] >= 0


def test_a_running_grant_past_most_of_history_is_expected_to_run_long():
    # 8 GPUs on two nodes of 4, team a. History: j0, j1, j2 (8 GPUs, windows of 10,000)
    # held 0.2, 0.5 and 0.9 of their windows. j3 (8 GPUs) runs [20,000, 200,000) of
    # [20,000, 220,000). j4 (8 GPUs) submitted at 120,000 is promised 220,000 and starts at
    # 200,000 when j3 ends: it waited 80,000 s. At 120,000 j3 has run half its window; of
    # the ratios, only 0.9 is above one half: j3 is expected to hold 0.9 x 200,000 and end at
    # 200,000, and j4 to start there: error 0 (the median, 0.5, with the ratio of
    # what is left once past it, would say 160,000: error 0.5). No later work arrives (j4 is
    # the only job of the last 24 h, and it arrives again after 200,000). The promise is
    # 20,000 s late: 0.25.
    tr = trace((0, 2000, 8, 10_000), (3000, 5000, 8, 10_000), (9000, 9000, 8, 10_000),
               (20_000, 180_000, 8, 200_000), (120_000, 1000, 8, 10_000))
    st = setup(tr, 8, per_node=4)
    pol = Cellsched(st, expect_every=1)
    e = Engine(st.trace.jobs, st.gpus, pol, st.nodes)
    e.run()
    assert e.start == [0, 3000, 9000, 20_000, 200_000] and e.promised[4] == 220_000
    assert pol.expected == {4: (120_000, 220_000, 200_000)}
    acc = summarise(e, st, 0.0)["expected_start"]
    assert acc["sampled"] == 1 and acc["waited_1h"] == 1
    assert acc["expected_err_p50"] == 0.0 and acc["promise_err_p50"] == 0.25


def test_no_figures_without_expect_every():
    tr = trace((0, 500, 8, 1000), (600, 10_000, 8, 20_000), (700, 5000, 8, 10_000))
    st = setup(tr, 8, per_node=4)
    e = Engine(st.trace.jobs, st.gpus, Cellsched(st, expect_every=0), st.nodes)
    e.run()
    assert "expected_start" not in summarise(e, st, 0.0)
