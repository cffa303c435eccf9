"""Invariants under hypothesis, for every policy: no over-commit at any instant, every job
runs exactly once (or is refused), runs for its run time; cellsched never starts a job later
than promised, under both pull-forward rules; and the indexed start_now pass gives exactly
the schedule of the core's plain rule (``start_waiting_now``)."""

from __future__ import annotations

from simbuild import run, setup, trace
from hypothesis import given, settings
from hypothesis import strategies as st

from cellsched.core.admission import Hold, start_waiting_now
from cellsched.sim.compress import Waiting
from cellsched.sim.engine import Engine
from cellsched.sim.metrics import summarise
from cellsched.sim.policies import POLICIES
from cellsched.sim.policies.cellsched import Cellsched

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
    for p in (*POLICIES, "compact"):
        e = run("cellsched", stp, rule="compact") if p == "compact" else run(p, stp)
        check_engine(e, cap)
        for j in e.jobs:
            assert (j.seq in e.refused) == (j.gpus > cap) or p == "quota"
        if p in ("cellsched", "compact"):
            for j in e.jobs:
                if e.start[j.seq] >= 0:
                    assert e.start[j.seq] <= e.promised[j.seq]
            m = summarise(e, stp, 0)
            assert m["guarantee_breaches"] == 0 and m["promise_kept"] in (1.0, None)


class PlainWaiting(Waiting):
    """The start_now rule as the core writes it plainly (``start_waiting_now``, what the
    daemon runs): the oracle for the simulator's indexed pass."""

    def _start_now(self, now):  # noqa: ANN001, ANN202
        for seq, g, ng in start_waiting_now(self.schedule, list(self.grants.items()), now, self.hold):
            self._take(seq, g, ng, now)
            yield seq, g, ng


def run_plain(stp, reserve=None):  # noqa: ANN001, ANN202
    pol = Cellsched(stp) if reserve is None else Cellsched(stp, reserve=reserve)
    pol.waiting = PlainWaiting(pol.schedule, "start_now", pol.waiting.hold)
    e = Engine(stp.trace.jobs, stp.gpus, pol, stp.nodes)
    e.run()
    return e


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(job, min_size=1, max_size=60), cap=st.integers(1, 12))
def test_indexed_start_now_equals_the_plain_pass(rows, cap):
    stp = setup(build(rows, cap), cap)
    fast, plain = run("cellsched", stp), run_plain(stp)
    assert fast.start == plain.start
    assert fast.promised == plain.promised


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(job, min_size=1, max_size=60), nodes=st.integers(1, 4), per_node=st.sampled_from([2, 4]),
       count=st.integers(0, 3), min_width=st.sampled_from([1, 2, 4]), biggest=st.integers(0, 2),
       ahead=st.sampled_from([0, 10, 40]), backlog=st.sampled_from([0, 0, 30, 200]))
def test_indexed_pass_equals_the_plain_pass_on_nodes_with_reservations(rows, nodes, per_node, count, min_width,
                                                                       biggest, ahead, backlog):
    """The ``count`` oldest waiting grants at least ``min_width`` wide hold their place
    (moved to their earliest window; with ``backlog`` only while their pool has that much
    work waiting), then the ``biggest`` largest, before others start:
    the index (heaps of the oldest that may hold and of the largest, then widths) and the core's plain rule give the same schedule, on one
    node and on several, and every promise holds."""
    reserve = Hold(count, min_width, biggest, ahead, backlog)
    cap = nodes * per_node
    rows = [(s, d, g if g <= per_node else per_node * (g // per_node), x, t) for s, d, g, x, t in rows]
    stp = setup(build(rows, cap), cap, per_node=per_node)
    fast, plain = run("cellsched", stp, reserve=reserve), run_plain(stp, reserve)
    assert fast.start == plain.start
    assert fast.promised == plain.promised
    for j in fast.jobs:
        if fast.start[j.seq] >= 0:
            assert fast.start[j.seq] <= fast.promised[j.seq]


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


def test_indexed_start_now_equals_the_plain_pass_on_a_real_prefix():
    """3,000 jobs of itp.csv on 1,100 GPUs: real widths (1 to 64), real congestion."""
    from pathlib import Path

    import pytest

    from cellsched.sim.trace import load_trace

    itp = Path(__file__).resolve().parents[3] / "shared" / "traces" / "itp.csv"
    if not itp.exists():
        pytest.skip("../shared/traces/itp.csv is not here")
    tr = load_trace(itp)
    tr.jobs = tr.jobs[:3000]
    from simbuild import cluster

    from cellsched.sim.setup import build_setup

    stp = build_setup(tr, cluster(1100))
    fast, plain = run("cellsched", stp), run_plain(stp)
    assert fast.start == plain.start
    stp = build_setup(tr, cluster(1100, per_node=8))  # on nodes, the oldest holding its place
    assert run("cellsched", stp).start == run_plain(stp).start
    assert sum(1 for j in fast.jobs if fast.start[j.seq] < fast.promised[j.seq]) > 100  # it did pull forward


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(job, min_size=1, max_size=40), cap=st.integers(2, 10), limit=st.integers(1, 4))
def test_team_limits_hold_and_promises_too(rows, cap, limit):
    """Team ``a`` may hold at most ``limit`` GPUs at once, and team ``b`` has a monthly
    allowance: the core can refuse a start the pool allows, and the simulator's index then
    holds the grant back. Same schedule as the plain rule; no limit or promise broken."""
    from cellsched.sim.setup import build_setup
    from cellsched.spec.cluster import ClusterConfig, Pool, Team

    feb = 31 * 86400  # 1970-02-01: the replay crosses a month boundary
    tr = build([(feb - 150 + s, d, g, x, t) for s, d, g, x, t in rows], cap)
    config = ClusterConfig(
        pools=(Pool(name="p", gpu_type="g", gpus=cap, gpus_per_node=cap),),
        teams=(Team(name="a", allowance_gpu_hours=1e6, period="none", max_gpus=limit),
               Team(name="b", allowance_gpu_hours=0.4, period="month"),
               Team(name="c", allowance_gpu_hours=1e6, period="none")),
    )
    stp = build_setup(tr, config)
    e = run("cellsched", stp)
    check_engine(e, cap)
    assert e.start == run_plain(stp).start
    held = []
    for j in e.jobs:
        if j.team == "a" and e.start[j.seq] >= 0:
            held += [(e.start[j.seq], 1, j.gpus), (e.end[j.seq], 0, -j.gpus)]
        if j.seq not in e.refused:
            assert e.start[j.seq] <= e.promised[j.seq]
    for month in (0, 1):  # team b's allowance, month by month, by the part of each run in it
        lo, hi = (0, feb) if month == 0 else (feb, 2 * feb)
        used = sum(j.gpus * max(0, min(e.end[j.seq], hi) - max(e.start[j.seq], lo))
                   for j in e.jobs if j.team == "b" and e.start[j.seq] >= 0)
        assert used <= 0.4 * 3600
    busy = 0
    for _, _, d in sorted(held):
        busy += d
        assert busy <= limit
