"""Invariants under hypothesis, for every policy: no over-commit at any instant, every job
runs exactly once (or is refused), runs for its run time; cellsched never starts a job later
than promised, and its fast compression gives exactly the exhaustive pass's schedule."""

from __future__ import annotations

from simbuild import run, setup, trace
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsched.sim.metrics import summarise
from cellsched.sim.policies import POLICIES

job = st.tuples(
    st.integers(0, 200),  # submit
    st.integers(1, 60),  # true duration
    st.sampled_from([1, 1, 1, 2, 3, 4, 8]),  # gpus
    st.integers(0, 60),  # over-ask
    st.sampled_from(["a", "b", "c"]),
)


def build(rows, cap):  # noqa: ANN001
    return trace(*[(s, d, g, d + extra, team) for s, d, g, extra, team in rows])


def check_engine(e, cap):  # noqa: ANN001
    events = []
    for j in e.jobs:
        s, t = e.start[j.seq], e.end[j.seq]
        if j.seq in e.refused:
            assert s < 0 and t < 0
            continue
        assert s >= j.submit, "started before submission"
        assert t - s == j.run, "ran for something else than its run time"
        events.append((s, 1, j.gpus))
        events.append((t, 0, -j.gpus))
    busy = 0
    for _, _, d in sorted(events):  # ends before starts at one instant
        busy += d
        assert busy <= cap, "over-commit"


@settings(max_examples=120, deadline=None)
@given(rows=st.lists(job, min_size=1, max_size=40), cap=st.integers(1, 10))
def test_invariants_every_policy(rows, cap):
    tr = build(rows, cap)
    stp = setup(tr, cap)
    for p in POLICIES:
        e = run(p, stp)
        check_engine(e, cap)
        for j in e.jobs:
            assert (j.seq in e.refused) == (j.gpus > cap) or p == "quota"
        if p == "cellsched":
            for j in e.jobs:
                if e.start[j.seq] >= 0:
                    assert e.start[j.seq] <= e.promised[j.seq]
            m = summarise(e, stp, 0)
            assert m["guarantee_breaches"] == 0 and m["promise_kept"] in (1.0, None)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(job, min_size=1, max_size=60), cap=st.integers(1, 12))
def test_fast_compression_equals_exhaustive(rows, cap):
    stp = setup(build(rows, cap), cap)
    fast = run("cellsched", stp, exhaustive=False)
    slow = run("cellsched", stp, exhaustive=True)
    assert fast.start == slow.start
    assert fast.promised == slow.promised


def test_same_input_same_output():
    import random

    rnd = random.Random(7)
    rows = [(rnd.randint(0, 5000), rnd.randint(1, 900), rnd.choice([1, 1, 2, 4, 8]), rnd.randint(0, 600),
             rnd.choice("abc")) for _ in range(400)]
    stp = setup(build(rows, 16), 16)
    for p in POLICIES:
        a = summarise(run(p, stp), stp, 0)
        b = summarise(run(p, stp), stp, 0)
        assert a == b


def test_fast_compression_equals_exhaustive_on_a_real_prefix():
    """A real trace prefix where a grant that could slide when a long job ended could only
    jump once earlier grants had taken the slide (job 1299 of itp.csv): a shortcut that
    computes jump runs once per region misses it."""
    from pathlib import Path

    import pytest

    from cellsched.sim.trace import load_trace

    itp = Path(__file__).resolve().parents[3] / "shared" / "traces" / "itp.csv"
    if not itp.exists():
        pytest.skip("../shared/traces/itp.csv is not here")
    tr = load_trace(itp)
    tr.jobs = tr.jobs[:1400]
    from simbuild import cluster

    from cellsched.sim.setup import build_setup

    stp = build_setup(tr, cluster(1100))
    fast = run("cellsched", stp, exhaustive=False)
    slow = run("cellsched", stp, exhaustive=True)
    assert fast.start == slow.start
