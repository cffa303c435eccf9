"""``cellsched simulate`` through the real CLI: table, JSON keys, HTML, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cellsched.cli.app import app

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "examples" / "sim-cluster.toml"
ITP = REPO.parent / "shared" / "traces" / "itp.csv"
KEYS = {"utilisation", "wait_mean_s", "wait_p50_s", "wait_p95_s", "wait_p99_s", "refused", "promise_kept",
        "guarantee_breaches"}


@pytest.fixture
def trace_file(tmp_path):
    p = tmp_path / "jobs.csv"
    rows = ["job_id,submit_s,duration_s,gpus,team"]
    for i in range(60):
        rows.append(f"j{i},{i * 30},{600 + 37 * (i % 11)},{[1, 1, 2, 4, 8][i % 5]},t{i % 3}")
    p.write_text("\n".join(rows) + "\n")
    return p


def invoke(*args: str):
    return CliRunner().invoke(app, ["simulate", *args], catch_exceptions=False)


def test_json_has_every_policy_and_key(trace_file):
    r = invoke("--trace", str(trace_file), "--cluster", str(CLUSTER), "--gpus", "16", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data["policies"]) == {"cellsched", "easy", "fifo", "quota"}
    for name, m in data["policies"].items():
        assert KEYS <= set(m), name
        assert (m["promise_kept"] is None) == (name != "cellsched")
    assert data["policies"]["cellsched"]["promise_kept"] == 1.0
    assert data["policies"]["cellsched"]["guarantee_breaches"] == 0
    assert data["trace"]["jobs"] == 60


def test_pull_forward_flag_overrides_the_cluster(trace_file):
    base = ["--trace", str(trace_file), "--cluster", str(CLUSTER), "--gpus", "8", "-p", "cellsched", "--json"]
    runs = {rule: json.loads(invoke(*base, "--pull-forward", rule).stdout)
            for rule in ("start_now", "hold_oldest", "hold_when_busy", "compact")}
    assert json.loads(invoke(*base).stdout)["pull_forward"] == "hold_when_busy"  # the default
    for rule, data in runs.items():
        assert data["pull_forward"] == rule
        assert data["policies"]["cellsched"]["promise_kept"] == 1.0


def test_table_and_html(trace_file, tmp_path):
    out = tmp_path / "sim.html"
    r = invoke("--trace", str(trace_file), "--cluster", str(CLUSTER), "--gpus", "16", "-p", "cellsched",
               "-p", "easy", "--estimate-factor", "2", "--html", str(out))
    assert r.exit_code == 0, r.output
    assert "cellsched" in r.stdout and "easy" in r.stdout and "fifo" not in r.stdout
    page = out.read_text()
    assert "wait-time CDF" in page and "utilisation over time" in page and "<svg" in page
    assert "pull_forward hold_when_busy" in page


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trace", "missing.csv"], "missing.csv: no such file"),
        (["--policy", "sjf"], "unknown policy 'sjf'"),
        (["--gpus", "0"], "--gpus must be at least 1"),
        (["--estimate-factor", "0.5"], "estimate-factor"),
        (["--pull-forward", "later"], "--pull-forward: must be start_now, hold_oldest, hold_when_busy or compact"),
    ],
)
def test_bad_input_is_exit_2_one_line(trace_file, args, message):
    base = {"--trace": str(trace_file), "--cluster": str(CLUSTER)}
    full = []
    for k, v in base.items():
        if k not in args:
            full += [k, v]
    r = invoke(*full, *args)
    assert r.exit_code == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_cluster_file(trace_file, tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[[pools]]\nname = 'x'\n")
    r = invoke("--trace", str(trace_file), "--cluster", str(bad))
    assert r.exit_code == 2 and str(bad) in r.stderr


@pytest.mark.skipif(not ITP.exists(), reason="../shared/traces/itp.csv is not here")
def test_itp_prefix_keeps_every_promise():
    from cellsched.sim.run import replay
    from cellsched.sim.setup import build_setup
    from cellsched.sim.trace import load_trace
    from cellsched.spec.load import load_cluster

    tr = load_trace(ITP)
    assert len(tr.jobs) == 69_351 and not tr.bad_rows
    tr.jobs = tr.jobs[:1500]
    m = replay(build_setup(tr, load_cluster(CLUSTER)), "cellsched").metrics
    assert m["refused"] == 0 and m["promise_kept"] == 1.0 and m["guarantee_breaches"] == 0


@pytest.mark.slow  # scheduled first: it computes while the Ray tests beside it mostly wait
@pytest.mark.timeout(600)  # ~3 CPU minutes; room for a loaded machine
@pytest.mark.skipif(not ITP.exists(), reason="../shared/traces/itp.csv is not here")
def test_itp_full_trace_meets_the_quality_target():
    """Issue 15, point 1, at 1,100 GPUs on nodes of 8 (examples/sim-cluster.toml), factor
    1.5, under the default ``hold_when_busy`` (the oldest waiting grant holds its place
    while 3 h of work wait): every promise kept, nothing refused, p99 wait no longer than
    EASY's, utilisation at least EASY's - 0.005 and the mean wait at most 0.6 x EASY's. The
    other sizes and factors are in benchmarks/tail.py and docs/simulate.md (where they
    miss). ~3 CPU minutes."""
    from cellsched.sim.run import replay
    from cellsched.sim.setup import build_setup
    from cellsched.sim.trace import load_trace
    from cellsched.spec.load import load_cluster

    config = load_cluster(CLUSTER)
    assert config.policy.pull_forward == "hold_when_busy"
    setup = build_setup(load_trace(ITP), config)
    cs, easy = (replay(setup, p).metrics for p in ("cellsched", "easy"))
    assert cs["refused"] == 0 and cs["promise_kept"] == 1.0 and cs["guarantee_breaches"] == 0
    assert cs["wait_p99_s"] <= easy["wait_p99_s"]
    assert cs["utilisation"] >= easy["utilisation"] - 0.005
    assert cs["wait_mean_s"] <= 0.6 * easy["wait_mean_s"]


@pytest.mark.slow
@pytest.mark.skipif(not ITP.exists(), reason="../shared/traces/itp.csv is not here")
def test_itp_full_trace_on_one_node_meets_the_first_target():
    """The first published target on the real trace, 1,100 GPUs as one node (the flat
    calendar, whose schedules the one-node pool reproduces exactly), factor 1.5, the default
    ``start_now``: every promise kept, nothing refused, EASY's utilisation matched and its
    mean wait beaten by 40%."""
    from cellsched.sim.run import replay
    from cellsched.sim.setup import build_setup
    from cellsched.sim.trace import load_trace
    from cellsched.spec.cluster import ClusterConfig, Pool
    from cellsched.spec.load import load_cluster

    config = load_cluster(CLUSTER)
    one_node = Pool.model_construct(name="main", gpu_type="a100", gpus=1100, gpus_per_node=1100)
    policy = config.policy.model_copy(update={"pull_forward": "start_now"})
    setup = build_setup(load_trace(ITP), ClusterConfig.model_construct(
        pools=(one_node,), teams=config.teams, admins=config.admins, policy=policy))
    cs, easy = (replay(setup, p).metrics for p in ("cellsched", "easy"))
    assert cs["refused"] == 0 and cs["promise_kept"] == 1.0 and cs["guarantee_breaches"] == 0
    assert cs["utilisation"] >= easy["utilisation"]
    assert cs["wait_mean_s"] < 0.6 * easy["wait_mean_s"]
