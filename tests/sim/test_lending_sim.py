"""Lending idle GPUs to best-effort work in the simulator (issue 16, point 5): guaranteed
jobs start exactly when they do with the best-effort rows removed; borrowers never
over-commit a node, are preempted only by a guaranteed start on their node, and keep the
work up to their last checkpoint; the best-effort share is seeded; the class column is read."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from simbuild import cluster, setup, trace
from typer.testing import CliRunner

from cellsched.cli.app import app
from cellsched.errors import BadInput
from cellsched.sim.run import replay
from cellsched.sim.setup import SimSetup, build_setup
from cellsched.sim.trace import mark_best_effort, parse_trace


def lending(tr, gpus, checkpoint=0, best_effort=(), per_node=None, policy="cellsched"):
    for i in best_effort:
        tr.jobs[i].best_effort = True
    s = setup(tr, gpus, per_node=per_node)
    return replay(SimSetup(s.trace, s.cluster, 0, checkpoint), policy)


# -- hand-worked ----------------------------------------------------------------------------

@pytest.mark.parametrize("checkpoint, restart_work, lost", [(300, 2100, 90), (0, 3000, 990), (1000, 3000, 990)])
def test_a_window_preempts_a_borrower_who_keeps_its_last_checkpoint(checkpoint, restart_work, lost):
    # One node of 4. G0 (2 GPUs, 0-1000); G1 (4 GPUs, 500 s) gets the window 1000-1500.
    # B (best-effort, 2 GPUs, 3000 s of work) starts at 10 on the 2 idle GPUs; G1's start
    # at 1000 takes them: B has run 990 s, kept 900 (3 checkpoints of 300; none without
    # checkpoints, none either every 1000 s), restarts at 1500 for the rest.
    r = lending(trace((0, 1000, 2), (0, 500, 4), (10, 3000, 2)), 4, checkpoint, best_effort=[2])
    assert r.engine.start == [0, 1000] and r.engine.end == [1000, 1500]
    lent = r.lent
    assert lent.segments == [(0, 10, 1000, (0,), False), (0, 1500, 1500 + restart_work, (0,), True)]
    assert lent.completed == 2 * 3000
    assert lent.lost == 2 * lost
    assert lent.held == 2 * 990 + 2 * restart_work == lent.completed + lent.lost
    assert lent.preemptions == 1 and lent.attempts == [2]
    m = r.metrics
    assert m["best_effort_completed_gpu_hours"] == round(6000 / 3600, 3)
    assert m["lost_gpu_hours"] == round(2 * lost / 3600, 3)
    assert m["preemptions"] == 1 and m["promise_kept"] == 1.0 and m["guarantee_breaches"] == 0
    assert m["best_effort_wait_p50_s"] == 0 and m["best_effort_turnaround_p50_s"] == 1500 + restart_work - 10
    # Every GPU-second: G0 2 x 1000, G1 4 x 500, B held, over 4 GPUs to B's end.
    assert m["utilisation"] == round((2000 + 2000 + lent.held) / (4 * (1500 + restart_work)), 4)


def test_the_most_recently_started_borrower_goes_first():
    # One node of 4: G0 (2 GPUs, 0-100); b0 and b1 (1 GPU each) borrow at 1 and 2; G1
    # (3 GPUs) starts at 100 and needs one of them: b1, started last. It restarts at 200.
    r = lending(trace((0, 100, 2), (1, 1000, 1), (2, 1000, 1), (50, 100, 3)), 4, best_effort=[1, 2])
    assert r.engine.start == [0, 100]
    assert sorted(r.lent.segments) == [(0, 1, 1001, (0,), True), (1, 2, 100, (0,), False),
                                       (1, 200, 1200, (0,), True)]


def test_a_borrower_wider_than_a_node_takes_whole_idle_nodes():
    # Two nodes of 4. G (2 GPUs, 0-50) on one; a's 8-GPU borrower waits for both nodes
    # whole, and b's 1-GPU one behind it does not wait for it: it goes where G is (best fit).
    tr = trace((0, 50, 2, 50, "g"), (1, 100, 8, 100, "a"), (2, 10, 1, 10, "b"))
    r = lending(tr, 8, best_effort=[1, 2], per_node=4)
    seg = {i: (s, e, nodes) for i, s, e, nodes, _ in r.lent.segments}
    assert seg[1] == (2, 12, r.engine.placed[0])
    assert seg[0] == (50, 150, (0, 1))


def test_the_queue_serves_the_team_with_the_least_recent_use_first():
    # One GPU. a0 runs 0-100; then a1 (queued first) and b0 wait: b has used nothing, so b0
    # goes first; FIFO within a team otherwise.
    tr = trace((0, 100, 1, 100, "a"), (1, 10, 1, 10, "a"), (2, 10, 1, 10, "b"), (3, 10, 1, 10, "a"))
    r = lending(tr, 1, best_effort=[0, 1, 2, 3])
    assert r.lent.first_start == [0, 110, 100, 120]


def test_teams_of_equal_usage_take_turns():
    # Two GPUs, held by G until 100; a0, a1 (team a) and b0, b1 (team b) queue meanwhile.
    # Neither team has used anything: at 100 one job each (core/bequeue's turns), not a0, a1.
    tr = trace((0, 100, 2, 100, "g"), (1, 10, 1, 10, "a"), (2, 10, 1, 10, "a"), (3, 10, 1, 10, "b"),
               (4, 10, 1, 10, "b"))
    r = lending(tr, 2, best_effort=[1, 2, 3, 4])
    assert r.lent.first_start == [100, 110, 100, 110]


# -- hypothesis: the guaranteed schedule does not see best-effort work ----------------------

row = st.tuples(
    st.integers(0, 300),  # submit
    st.integers(1, 80),  # true duration
    st.sampled_from([1, 1, 1, 2, 3, 4, 8]),  # gpus (8: two whole nodes of 4)
    st.integers(0, 60),  # over-ask
    st.sampled_from(["a", "b", "c"]),
    st.booleans(),  # best-effort
)


def csv_text(rows, with_class: bool) -> str:
    head = "job_id,submit_s,duration_s,gpus,team,requested_s" + (",class" if with_class else "")
    lines = [head]
    for i, (s, d, g, extra, team, be) in enumerate(rows):
        if with_class:
            lines.append(f"j{i},{s},{d},{g},{team},{d + extra},{'best-effort' if be else 'guaranteed'}")
        elif not be:
            lines.append(f"j{i},{s},{d},{g},{team},{d + extra}")
    return "\n".join(lines) + "\n"


def check_nodes(r, nodes) -> None:
    """Independently of the lending code: per node, guaranteed plus borrowed GPUs never
    exceed its size; a borrower stops early only at a guaranteed start on one of its nodes;
    each borrower's work adds up (kept checkpoints + its last run = its work)."""
    e, lent = r.engine, r.lent
    per = nodes.pools[0][3]
    ev = []
    g_starts = set()
    for j in e.jobs:
        if e.start[j.seq] >= 0:
            for g in e.placed[j.seq]:
                w = min(j.gpus, per)
                ev += [(e.start[j.seq], 1, g, w), (e.end[j.seq], 0, g, -w)]
                g_starts.add((e.start[j.seq], g))
    done: dict[int, int] = {}
    C = lent.checkpoint_interval
    for i, s, t, placed, completed in lent.segments:
        j = lent.jobs[i]
        assert s >= j.submit and t > s
        for g in placed:
            w = min(j.gpus, per)
            ev += [(s, 1, g, w), (t, 0, g, -w)]
        if completed:
            done[i] = done.get(i, 0) + (t - s)
        else:
            assert any((t, g) in g_starts for g in placed), "preempted with no guaranteed start there"
            done[i] = done.get(i, 0) + ((t - s) // C * C if C else 0)
    busy = [0] * len(nodes.sizes)
    for _, _, g, d in sorted(ev):  # ends before starts at one instant
        busy[g] += d
        assert busy[g] <= nodes.sizes[g], "node over-committed"
    for i, j in enumerate(lent.jobs):
        assert done.get(i, 0) == j.run or i in lent.refused
    assert lent.held == lent.completed + lent.lost


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(row, min_size=1, max_size=30), gpus=st.sampled_from([4, 8, 12]),
       checkpoint=st.sampled_from([0, 7, 30]))
def test_guaranteed_starts_are_those_of_the_trace_without_best_effort_jobs(rows, gpus, checkpoint):
    cl = cluster(gpus, per_node=4)
    full = build_setup(parse_trace(io.StringIO(csv_text(rows, True)), "t.csv"), cl, checkpoint_interval=checkpoint)
    kept = [r for r in rows if not r[5]]
    for policy in ("cellsched", "easy"):
        r = replay(full, policy)
        if kept:
            alone = replay(build_setup(parse_trace(io.StringIO(csv_text(rows, False)), "t.csv"), cl), policy)
            assert [j.job_id for j in alone.engine.jobs] == [j.job_id for j in r.engine.jobs]
            assert alone.engine.start == r.engine.start
            assert alone.engine.promised == r.engine.promised
            assert alone.engine.placed == r.engine.placed
        if r.lent is None:
            assert all(not x[5] for x in rows)
            continue
        check_nodes(r, full.nodes)
        if policy == "cellsched":
            assert r.metrics["promise_kept"] in (1.0, None) and r.metrics["guarantee_breaches"] == 0


# -- the share, the column, the CLI ---------------------------------------------------------

def test_the_best_effort_share_is_seeded():
    tr = trace(*[(i, 10, 1) for i in range(200)])
    a, b, c = (mark_best_effort(tr, 0.3, seed) for seed in (1, 1, 2))
    pick = [[j.seq for j in t.jobs if j.best_effort] for t in (a, b, c)]
    assert pick[0] == pick[1] and pick[0] != pick[2] and len(pick[0]) == len(pick[2]) == 60
    assert not any(j.best_effort for j in tr.jobs)  # the input is left alone
    assert a.summary()["best_effort_jobs"] == 60 and "share 0.3, seed 1" in a.summary_line()
    narrow = mark_best_effort(trace(*[(i, 10, 1 + i % 2) for i in range(200)]), 0.3, 1, widest=1)
    assert {j.gpus for j in narrow.jobs if j.best_effort} == {1} and narrow.summary()["best_effort_jobs"] == 60
    with pytest.raises(BadInput, match="--best-effort-share must be a number from 0 to 1"):
        mark_best_effort(tr, 1.5)


def test_the_class_column_is_read():
    tr = parse_trace(io.StringIO("job_id,submit_s,duration_s,gpus,team,class\na,0,10,1,x,best-effort\n"
                                 "b,0,10,1,x,guaranteed\nc,0,10,1,x,\n"), "t.csv")
    assert [j.best_effort for j in tr.jobs] == [True, False, False]
    assert tr.guaranteed().jobs[0].job_id == "b" and [j.seq for j in tr.guaranteed().jobs] == [0, 1]


def invoke(*args: str):
    return CliRunner().invoke(app, ["simulate", *args], catch_exceptions=False)


@pytest.fixture
def files(tmp_path):
    rows = ["job_id,submit_s,duration_s,gpus,team"]
    for i in range(40):
        rows.append(f"j{i},{i * 30},{600 + 37 * (i % 11)},{[1, 1, 2, 4, 8][i % 5]},t{i % 3}")
    plain = tmp_path / "jobs.csv"
    plain.write_text("\n".join(rows) + "\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("job_id,submit_s,duration_s,gpus,team,class\na,0,10,1,x,guaranteed\nb,0,10,1,x,scavenger\n")
    good = tmp_path / "class.csv"
    good.write_text("job_id,submit_s,duration_s,gpus,team,class\na,0,10,1,x,guaranteed\nb,0,10,1,x,best-effort\n")
    cl = tmp_path / "c.toml"
    cl.write_text("[[pools]]\nname = 'p'\ngpu_type = 'g'\ngpus = 16\ngpus_per_node = 8\n")
    return plain, bad, good, cl


def test_simulate_lends_with_a_share_and_says_so(files):
    plain, _, _, cl = files
    args = ["--trace", str(plain), "--cluster", str(cl), "-p", "cellsched", "--best-effort-share", "0.3"]
    r = invoke(*args, "--checkpoint-interval", "60", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    m = data["policies"]["cellsched"]
    assert data["trace"]["best_effort_jobs"] == 12 and data["checkpoint_interval_s"] == 60
    assert m["jobs"] == 28 and m["best_effort_jobs"] == 12 and m["best_effort_done"] == 12
    assert m["promise_kept"] == 1.0 and m["best_effort_completed_gpu_hours"] > 0
    for k in ("best_effort_held_gpu_hours", "preemptions", "lost_gpu_hours", "best_effort_wait_p95_s",
              "best_effort_turnaround_p95_s", "utilisation_guaranteed", "useful_utilisation"):
        assert k in m
    table = invoke(*args)
    assert table.exit_code == 0 and "best-effort work lent idle GPUs" in table.stdout


@pytest.mark.parametrize("which, extra, message", [
    (1, [], "bad.csv:3: column class: 'scavenger' is not guaranteed or best-effort"),
    (2, ["--best-effort-share", "0.5"], "the class column already says which jobs are best-effort"),
    (0, ["--best-effort-share", "-0.1"], "--best-effort-share must be a number from 0 to 1"),
    (0, ["--best-effort-share", "0.3", "--checkpoint-interval", "-5"], "--checkpoint-interval must be at least 0"),
])
def test_bad_best_effort_input_is_exit_2_one_line(files, which, extra, message):
    r = invoke("--trace", str(files[which]), "--cluster", str(files[3]), *extra)
    assert r.exit_code == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
