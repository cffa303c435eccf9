"""Several Ray nodes of two GPU types, no shared filesystem, nothing but Ray on the workers.

One ``ray.cluster_utils.Cluster`` in a subprocess (the session's Ray stays untouched): a
GPU-less head (the daemon's node) and three workers of 4 logical GPUs, two labelled H100 and
one A100, each with its own node-local directory and a ``PYTHONPATH`` on which ``import
cellsched`` fails (``testing.no_cellsched_dir``): a rank worker that did not get cellsched
from the package the executor ships cannot even start. The driver's log directory is none of
the nodes'. Slow: ~15 s of cluster start, then ~20 s.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cellsched.executor.testing import run_cluster_script

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import ray
    from ray.util import get_placement_group, placement_group_table
    from cellsched.executor import (GangSpec, Placement, RayExecutor, attempt_tails,
                                    placement_for, pool_capacity)
    from cellsched.executor import testing
    from cellsched.executor.testing import start_labelled_ray
    from cellsched.spec.cluster import Pool

    def until(fn, timeout=60):
        return testing.until(fn, timeout, every=0.05)

    root = Path(sys.argv[1])
    home = str(root / "daemon-logs")  # the driver's log_dir: on no node
    t0 = time.monotonic()
    cluster, (h1, h2, a1) = start_labelled_ray(
        [(4, {"ray.io/accelerator-type": "H100"}), (4, {"ray.io/accelerator-type": "H100"}),
         (4, {"ray.io/accelerator-type": "A100"})], root)
    up_s = time.monotonic() - t0
    ex = RayExecutor(peer_grace_s=1.0)
    out = {"up_s": up_s}
    nodes = ex.nodes()
    h100 = Pool(name="h100", gpu_type="H100", gpus=8, gpus_per_node=4)
    a100 = Pool(name="a100", gpu_type="A100", gpus=4, gpus_per_node=4)
    b200 = Pool(name="b200", gpu_type="B200", gpus=4, gpus_per_node=4)
    labelled = Pool(name="lab", gpu_type="x", gpus=4, gpus_per_node=4,
                    node_label="ray.io/accelerator-type=A100")
    out["capacity"] = [pool_capacity(nodes, p) for p in (h100, a100, b200, labelled)]
    out["nodes"] = sorted((n.gpus, n.labels.get("ray.io/accelerator-type", "-"), n.alive)
                          for n in nodes)

    def where(name):
        return placement_group_table(get_placement_group(name))["bundles_to_node_id"]

    def lines(path):
        return Path(path).read_text().splitlines() if Path(path).exists() else []

    # -- an 8-GPU gang on two whole H100 nodes ------------------------------------------
    t = time.monotonic()
    wide = "cellsched/test/wide"
    ex.reserve(wide, 8, placement=placement_for(h100, [h2.node_id] * 4 + [h1.node_id] * 4))
    until(lambda: ex.reservation_state(wide) == "ready")
    out["wide_ready_s"] = time.monotonic() - t
    out["wide_where"] = [{h1.node_id: "h1", h2.node_id: "h2"}.get(where(wide)[b], "other")
                         for b in range(8)]
    ranks = [ray.get_actor(f"{wide}/rank-{b}", namespace="cellsched") for b in range(8)]
    infos = ray.get([r.info.remote() for r in ranks])
    out["shipped"] = [i["shipped"] for i in infos]
    out["module"] = infos[0]["module"]
    env_line = ("echo RANK=$RANK NODE_RANK=$NODE_RANK NNODES=$NNODES LOCAL_RANK=$LOCAL_RANK "
                "LWS=$LOCAL_WORLD_SIZE WS=$WORLD_SIZE MA=$MASTER_ADDR MP=$MASTER_PORT; ")
    run = env_line + "for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 0.25; done"
    # bundles in reverse: rank 0 is on bundle 7 (h1), so NODE_RANK 0 is h1's
    gang = GangSpec(wide, "proj", "train", 0, run, list(range(7, -1, -1)), home)
    ex.launch(gang)
    until(lambda: ex.running(wide))
    out["fate_running"] = ex.attempt_fate(wide, "train", 0, 8, home)
    until(lambda: ex.pull_logs(wide) >= 0 and "tick-2" in lines(gang.log_path(0)), timeout=30)
    out["mid_pull"] = len(lines(gang.log_path(0)))
    (res,) = until(lambda: ex.poll(wide), timeout=30)
    out["wide_outcome"] = res.outcome
    out["pulled_after"] = ex.pull_logs(wide)
    t = time.monotonic()
    out["pulled_again"] = ex.pull_logs(wide)  # what a tick costs when nothing grew
    out["pull_idle_s"] = time.monotonic() - t
    out["wide_logs"] = [lines(gang.log_path(r)) for r in range(8)]
    out["tails"] = attempt_tails(home, "train", 0, 8, max_bytes=20)
    # node-local copies sit under the node's own directory, the daemon's are a copy
    node_dirs = {h1.node_id: root / "node-0", h2.node_id: root / "node-1"}
    on_node = [node_dirs[where(wide)[b]] / "home" for b in gang.bundles]
    out["node_local"] = [
        (on_node[r] / gang.log_path(r).lstrip("/")).read_text()
        == Path(gang.log_path(r)).read_text() for r in range(8)]
    out["lock_home"] = [os.path.exists(gang.lock_path(r)) for r in range(8)]
    ex.ack(wide, [res.key])
    out["fate_ended"] = ex.attempt_fate(wide, "train", 0, 8, home)

    # -- a 4-GPU gang on the A100 node ---------------------------------------------------
    narrow = "cellsched/test/narrow"
    ex.reserve(narrow, 4, placement=placement_for(a100, [a1.node_id] * 4))
    until(lambda: ex.reservation_state(narrow) == "ready")
    out["narrow_where"] = sorted(set(where(narrow).values())) == [a1.node_id]
    # a pool label no node has; a node of the wrong type: asked for now (every GPU is held, as
    # before) and checked once the gang below is done, 2 s later at least
    nowhere = "cellsched/test/nowhere"
    ex.reserve(nowhere, 2, placement=placement_for(b200, [h1.node_id] * 2))
    wrong = "cellsched/test/wrongtype"
    ex.reserve(wrong, 2, placement=Placement((h1.node_id, h1.node_id),
                                             {"ray.io/accelerator-type": "A100"}))
    asked = time.monotonic()
    # ... running a code snapshot whose data file is edited after packing
    from cellsched.executor import _codepack
    code = root / "code"
    code.mkdir()
    (code / "data.txt").write_text("sealed\\n")
    digest, blob = _codepack.pack(code)
    (code / "data.txt").write_text("edited after the seal\\n")
    g4 = GangSpec(narrow, "proj", "eval", 0,
                  env_line + "cat data.txt; echo CODE=$CELLSCHED_CODE_DIR", [0, 1, 2, 3], home,
                  code_digest=digest, code_blob=blob)
    ex.launch(g4)
    (r4,) = until(lambda: ex.poll(narrow), timeout=30)
    ex.ack(narrow, [r4.key])
    ex.pull_logs(narrow)
    snaps = ray.get([ray.get_actor(f"{narrow}/rank-{b}", namespace="cellsched").snapshot.remote()
                     for b in range(4)])
    out["narrow_code"] = sorted(r["code"] for s in snaps for r in s["records"])
    out["narrow_code_dir"] = str(root / "node-2" / "code" / digest)
    out["narrow_outcome"] = r4.outcome
    out["narrow_logs"] = [lines(g4.log_path(r)) for r in range(4)]

    # -- a pool label no node has; a node of the wrong type (asked for above) ---------------
    time.sleep(max(0.0, 2 - (time.monotonic() - asked)))  # still pending 2 s after they were asked for
    out["pending"] = [ex.reservation_state(nowhere), ex.reservation_state(wrong)]
    out["pending_results"] = ex.release(nowhere) + ex.release(wrong)

    # -- release, then the attempt's fate with no ranks left to ask ----------------------
    out["released"] = [r.outcome for r in ex.release(wide)] + [r.outcome for r in ex.release(narrow)]
    # release dropped the node-local logs it had whole at home; the locks stay (proof)
    out["left_on_nodes"] = [((on_node[r] / gang.log_path(r).lstrip("/")).exists(),
                             (on_node[r] / gang.lock_path(r).lstrip("/")).exists())
                            for r in range(8)]

    # -- without shipping: the node has no cellsched, the rank cannot start ----------------
    bare = "cellsched/test/unshipped"
    unshipped = RayExecutor(ship=False)
    unshipped.reserve(bare, 1, placement=placement_for(a100, [a1.node_id]))
    try:
        ray.get(ray.get_actor(f"{bare}/rank-0", namespace="cellsched").info.remote(),
                timeout=30)
        out["unshipped"] = "started"
    except Exception as e:  # the creation task's ImportError, as an actor error
        out["unshipped"] = "cellsched is not installed on this node" in str(e) or repr(e)[:500]
    unshipped.release(bare)

    # a task per node claims the locks: "unknown" (ask again later) if a worker starts too
    # slowly for launch_timeout_s, which a loaded test machine can do
    t = time.monotonic()
    fates = []
    until(lambda: fates.append(ex.attempt_fate(wide, "train", 0, 8, home)) or
          fates[-1] != "unknown", timeout=90)
    out["fate_gone"], out["fate_gone_asked"] = fates[-1], len(fates)
    out["fate_gone_s"] = time.monotonic() - t
    out["free"] = until(lambda: ray.available_resources().get("GPU") == 12 and 12)
    print("RESULT " + json.dumps(out), flush=True)
    ray.shutdown()
    cluster.shutdown()
""")


def test_placement_nodes_and_logs_on_a_cluster_without_cellsched(tmp_path: Path) -> None:
    out = run_cluster_script(SCRIPT, str(tmp_path))
    print({k: v for k, v in out.items() if not k.endswith("_logs")})
    # nodes() and the pools' capacity: H100 on two nodes, A100 on one, B200 on none
    assert out["nodes"] == [[0, "-", True], [4, "A100", True], [4, "H100", True],
                            [4, "H100", True]]
    assert out["capacity"] == [8, 4, 0, 4]
    # the group is exactly where the placement said: bundles 0-3 on h2, 4-7 on h1
    assert out["wide_where"] == ["h2"] * 4 + ["h1"] * 4
    # the rank workers run cellsched from the shipped package (the node's own path has none)
    assert out["shipped"] == [True] * 8
    assert "py_modules_files" in out["module"]
    # rank r runs on bundle 7-r: ranks 0-3 on h1 (NODE_RANK 0), 4-7 on h2 (NODE_RANK 1)
    envs = [dict(kv.split("=", 1) for kv in logs[0].split()) for logs in out["wide_logs"]]
    assert [e["RANK"] for e in envs] == [str(r) for r in range(8)]
    assert [e["NODE_RANK"] for e in envs] == ["0"] * 4 + ["1"] * 4
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "2", "3"] * 2
    assert {(e["LWS"], e["WS"], e["NNODES"]) for e in envs} == {("4", "8", "2")}
    assert len({(e["MA"], e["MP"]) for e in envs}) == 1 and envs[0]["MP"].isdigit()
    # logs come home through Ray: part while running, all of it after, nothing twice
    assert out["fate_running"] == "alive"
    assert 2 <= out["mid_pull"] < 9
    assert out["wide_outcome"] == "succeeded"
    assert out["pulled_again"] == 0
    assert all(logs[1:] == [f"tick-{i}" for i in range(1, 9)] for logs in out["wide_logs"])
    assert out["tails"] == ["tick-7\ntick-8\n"] * 8
    assert out["node_local"] == [True] * 8
    assert out["lock_home"] == [False] * 8  # locks stay on their nodes
    assert out["fate_ended"] == "dead"
    # the 4-GPU gang stays on its one node
    assert out["narrow_where"] is True and out["narrow_outcome"] == "succeeded"
    envs4 = [dict(kv.split("=", 1) for kv in logs[0].split()) for logs in out["narrow_logs"]]
    assert [(e["NODE_RANK"], e["LOCAL_RANK"], e["LWS"]) for e in envs4] == [
        ("0", str(r), "4") for r in range(4)]
    # its code: the snapshot as packed, unpacked once in the node's own cache, fetched once
    assert [logs[1:] for logs in out["narrow_logs"]] == [
        ["sealed", "CODE=" + out["narrow_code_dir"]]] * 4
    assert out["narrow_code"] == ["cached"] * 3 + ["shipped"]
    # the nodes really have no cellsched: unshipped, the rank worker cannot start
    assert out["unshipped"] is True
    # no node carries the label (or the node is of another type): pending, not an error
    assert out["pending"] == ["pending", "pending"] and out["pending_results"] == []
    assert out["released"] == []
    assert out["left_on_nodes"] == [[False, True]] * 8
    assert out["fate_gone"] == "dead"
    assert out["free"] == 12
