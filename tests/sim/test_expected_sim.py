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


def test_no_figures_without_expect_every():
    tr = trace((0, 500, 8, 1000), (600, 10_000, 8, 20_000), (700, 5000, 8, 10_000))
    st = setup(tr, 8, per_node=4)
    e = Engine(st.trace.jobs, st.gpus, Cellsched(st, expect_every=0), st.nodes)
    e.run()
    assert "expected_start" not in summarise(e, st, 0.0)
