"""Node loss on a real multi-node Ray (``ray.cluster_utils.Cluster``), in a subprocess so it
does not disturb the session's Ray. Slow: ~10 s of cluster start, ~4 s crash detection.

Ray's own metrics are off in the script (``RAY_enable_metrics_collection=0``): nothing here
reads them, and with a node gone the driver's ``ray.shutdown()`` spent 6-18 s on metric
exports that no longer succeed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cellsched.executor.testing import run_cluster_script

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    os.environ["RAY_enable_metrics_collection"] = "0"  # before Ray starts: see the docstring
    import ray
    from cellsched.executor import testing
    from cellsched.executor.testing import start_two_node_ray
    from ray.util import placement_group_table
    from cellsched.executor import GangSpec, RayExecutor

    def until(fn, timeout=60):
        return testing.until(fn, timeout, every=0.05)

    logs = sys.argv[1]
    cluster, nodes = start_two_node_ray()
    ex = RayExecutor()
    n = "cellsched/test/nodeloss"
    ex.reserve(n, 6)
    until(lambda: ex.reservation_state(n) == "ready")
    env = "echo $LOCAL_RANK/$LOCAL_WORLD_SIZE; exec sleep 60"
    ex.launch(GangSpec(n, "proj", "wide", 0, env, range(6), logs))
    until(lambda: len(ex.running(n)) == 1)
    where = placement_group_table(ray.util.get_placement_group(n))["bundles_to_node_id"]
    per_node = {}
    for b in range(6):
        per_node.setdefault(where[b], []).append(b)
    small = min(per_node, key=lambda k: len(per_node[k]))
    victim = next(x for x in nodes if x.node_id == small)
    def local_ranks():
        # every rank has printed its LOCAL_RANK; the ranks' nodes are not the driver's: their
        # logs come through Ray
        ex.pull_logs(n)
        try:
            said = [open(f"{logs}/wide/attempt-0/rank-{r}.log").read() for r in range(6)]
        except FileNotFoundError:
            return None
        return all(x.endswith("\\n") for x in said) and [x.strip() for x in said]
    local = until(local_ranks)
    t = time.monotonic()
    cluster.remove_node(victim, allow_graceful=False)
    (lost,) = until(lambda: ex.poll(n))
    detect = time.monotonic() - t
    ex.ack(n, [lost.key])
    state_after = ex.reservation_state(n)
    cluster.add_node(num_cpus=1, num_gpus=4)
    until(lambda: ex.reservation_state(n) == "ready")
    ex.launch(GangSpec(n, "proj", "wide", 1, "true", range(6), logs))
    (again,) = until(lambda: ex.poll(n))
    ex.release(n)
    free = until(lambda: ray.available_resources().get("GPU") == 8 and 8)
    print("RESULT " + json.dumps({
        "lost_bundles": per_node[small], "local": local, "outcome": lost.outcome,
        "codes": lost.exit_codes, "detail": lost.detail, "detect_s": detect,
        "state_after": state_after, "retry": again.outcome, "free": free}), flush=True)
    ray.shutdown()
    cluster.shutdown()
""")


def test_node_loss_loses_gang_and_group_heals(tmp_path: Path) -> None:
    out = run_cluster_script(SCRIPT, str(tmp_path))
    print(out)
    lost = out["lost_bundles"]
    assert out["outcome"] == "lost"
    assert [c is None for c in out["codes"]] == [b in lost for b in range(6)]
    assert {c for c in out["codes"] if c is not None} == {-9}  # survivors killed
    # ranks are numbered per node: four on one node, two on the other
    assert sorted(out["local"]) == ["0/2", "0/4", "1/2", "1/4", "2/4", "3/4"]
    assert out["state_after"] in ("rescheduling", "pending")
    assert out["retry"] == "succeeded" and out["free"] == 8
