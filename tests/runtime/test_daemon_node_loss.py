"""A node removed mid-job under the reconciler (``ray.cluster_utils.Cluster``, in a
subprocess so the session's Ray is untouched): the gang is lost, the outage is a breach, the
job is retried in the same window once Ray has re-placed the group. Slow (~30 s).

The job sleeps a minute in its first attempt (the one the node loss takes) and ends at once in
its retry. Ray's own metrics are off in the script (``RAY_enable_metrics_collection=0``):
nothing here reads them, and with a node gone the driver's ``ray.shutdown()`` spent seconds on
metric exports that no longer succeed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    os.environ["RAY_enable_metrics_collection"] = "0"  # before Ray starts: see the docstring
    import ray
    from cellsched.executor.testing import start_two_node_ray
    from ray.util import get_placement_group, placement_group_table
    from sqlmodel import select
    from cellsched.executor import RayExecutor
    from cellsched.ledger.tables import GrantRow, GrantRuntimeRow, JobRunRow
    from cellsched.receipt import create_keys, key_paths
    from cellsched.runtime.clock import now_s
    from cellsched.runtime.reconciler import Reconciler, Settings
    from cellsched.service import open_env, submit
    from cellsched.spec.models import ProjectSpec

    tmp = Path(sys.argv[1])
    cfg = tmp / "cluster.toml"
    cfg.write_text('[policy]\\ngrace_s = 2\\n[[pools]]\\nname = "h100"\\ngpu_type = "H100"\\ngpus = 8\\n'
                   'gpus_per_node = 4\\n[[teams]]\\nname = "t"\\nmembers = ["u"]\\nallowance_gpu_hours = 100\\n')
    create_keys(*key_paths(cfg))
    env = open_env(cfg, f"sqlite:///{tmp}/ledger.db")

    cluster, nodes = start_two_node_ray()
    rec = Reconciler(env, RayExecutor(peer_grace_s=1.0), settings=Settings(strict=True,
                     notify_in_background=False, logs_root=tmp / "logs"))
    spec = ProjectSpec.model_validate({"name": "fragile", "team": "t", "owner": "u", "problem": "x",
        "budget": {"gpu_hours": 8 * 600 / 3600, "gpus": 8, "pool": "h100"},
        "jobs": [{"name": "train", "gpus": 8,
                  "run": '[ "$CELLSCHED_ATTEMPT" = 1 ] && sleep 60; echo ok'}]})
    g = submit(env, spec, "u", now_s()).grant

    def runs():
        with env.ledger.read() as s:
            return [(r.job, r.attempt, r.state) for r in
                    s.exec(select(JobRunRow).where(JobRunRow.grant_id == g.id).order_by(JobRunRow.id))]

    def drive(cond, timeout=90):
        end = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < end, ("timed out", runs())
            rec.tick()
            time.sleep(0.1)

    drive(lambda: runs() == [("train", 1, "running")])
    name = rec.name_for(g)
    where = placement_group_table(get_placement_group(name))["bundles_to_node_id"]
    victim = next(n for n in nodes if n.node_id == where[5])  # one of the gang's two whole nodes
    t = time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    drive(lambda: runs() and runs()[0][2] == "lost")
    lost_after = time.monotonic() - t
    cluster.add_node(num_cpus=1, num_gpus=4)
    def finished():
        with env.ledger.read() as s:
            rt = s.get(GrantRuntimeRow, g.id)
            return rt is not None and rt.finalized
    drive(finished)
    with env.ledger.read() as s:
        done = s.get(GrantRow, g.id)
    rep = json.loads(done.report_json)
    print("RESULT " + json.dumps({"runs": runs(), "state": done.state, "breach": done.breach_gs,
                                  "lost_after_s": lost_after, "succeeded": rep["succeeded"],
                                  "gpus_free": ray.available_resources().get("GPU")}), flush=True)
    ray.shutdown()
    cluster.shutdown()
""")


def test_node_removed_mid_job_is_a_lost_attempt_retried_in_the_window(tmp_path: Path) -> None:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                       text=True, timeout=240, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    (line,) = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    out = json.loads(line.removeprefix("RESULT "))
    print(out)
    assert [tuple(r) for r in out["runs"]] == [("train", 1, "lost"), ("train", 2, "succeeded")]
    assert out["state"] == "completed" and out["succeeded"]
    assert out["breach"] > 0  # the group was short of a node for a while
