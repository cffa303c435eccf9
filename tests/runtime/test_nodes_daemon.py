"""The daemon pins grants to the nodes admission chose (on the twin, both databases), and
the node map (pure) keeps live nodes on their indices."""

from __future__ import annotations

import json
from pathlib import Path

from cellsched.executor import Behaviour, MemoryExecutor
from cellsched.executor.base import NodeInfo
from cellsched.ledger.snapshot import nodes_of
from cellsched.runtime import nodes as N
from cellsched.service import Env
from cellsched.spec.cluster import Pool

from runtime_builders import T0, Harness, job, project, submit

H100 = {"ray.io/accelerator-type": "H100"}


def node(nid: str, gpus: int = 8, labels: dict[str, str] = H100, alive: bool = True) -> NodeInfo:
    return NodeInfo(nid, "10.0.0.1", gpus, labels, alive)


POOL = Pool(name="h100", gpu_type="H100", gpus=16, gpus_per_node=8)


def test_remap_keeps_live_nodes_replaces_dead_ones_and_ignores_unlabelled_pools() -> None:
    a, b, c = node("a"), node("b"), node("c")
    first = N.remap([POOL], [c, b, a], {})
    assert first == [("h100", 0, "a"), ("h100", 1, "b")]  # node-id order, whatever Ray's order
    now = {(p, i): n for p, i, n in first}
    assert N.remap([POOL], [a, b, c], now) == []  # stable
    # b dies: its index goes to the spare node c; a keeps its index.
    assert N.remap([POOL], [a, node("b", alive=False), c], now) == [("h100", 1, "c")]
    # no spare: the index is unmapped until one comes
    assert N.remap([POOL], [a], now) == [("h100", 1, None)]
    # a pool on no labelled node (one machine, logical GPUs) stays unmapped: unpinned
    assert N.remap([POOL], [node("x", labels={})], {}) == []


def test_placement_pins_a_narrow_grant_to_one_node_and_a_wide_one_to_whole_nodes() -> None:
    mapping = {("h100", 0): "a", ("h100", 1): "b"}
    narrow = N.placement(POOL, [1], 4, mapping)
    assert narrow is not None and narrow.nodes == ("b",) * 4 and narrow.label_selector == H100
    wide = N.placement(POOL, [0, 1], 16, mapping)
    assert wide is not None and wide.nodes == ("a",) * 8 + ("b",) * 8
    gone = N.placement(POOL, [1], 2, {("h100", 0): "a", ("h100", 1): None})
    assert gone is not None and gone.nodes == ("unmapped:h100/1",) * 2  # stays pending: a breach
    assert N.placement(POOL, [0], 2, {}) is None  # unmapped pool: as on one machine
    assert N.placement(POOL, None, 2, mapping) is None  # a grant from before nodes were stored


def test_the_daemon_runs_each_grant_on_its_assigned_nodes(env: Env, tmp_path: Path) -> None:
    a = submit(env, project("narrow", [job("t", gpus=4)], gpus=4, window_s=100))
    b = submit(env, project("whole", [job("t", gpus=8)], gpus=8, window_s=100))
    h = Harness(env, tmp_path, {"t": Behaviour(10)})
    h.ex = MemoryExecutor({"t": Behaviour(10)}, now=T0, nodes=[node("ray-b"), node("ray-a")])
    h.restart()
    h.tick(T0)
    assert [e.data for e in h.events("node_mapped")] and len(h.events("node_mapped")) == 2
    by_index = {json.loads(e.data)["index"]: json.loads(e.data)["node"] for e in h.events("node_mapped")}
    assert by_index == {0: "ray-a", 1: "ray-b"}
    for g in (a, b):
        idx = nodes_of(h.grant(g.id))
        assert idx is not None
        name = h.runtime(g.id).reservation  # type: ignore[union-attr]
        placed = h.ex._resv[name].placement  # the twin's record of where it was asked to go
        assert placed is not None and set(placed.nodes) == {by_index[i] for i in idx}
    for g in (a, b):
        assert h.run_until_done(g.id).state == "completed"
    assert h.attempts(a.id) == [("t", 1, "succeeded")] and h.attempts(b.id) == [("t", 1, "succeeded")]


def test_a_pool_no_node_carries_is_never_run_on_other_pools_gpus() -> None:
    """On a cluster whose pools have nodes of their own, a pool none matches is pinned to no
    node (pending, a breach), not run unpinned on whatever GPUs are free; on one machine
    (no pool has a node) everything runs unpinned as before."""
    a100 = Pool(name="a100", gpu_type="A100", gpus=8, gpus_per_node=8)
    mapping = {("h100", 0): "a", ("h100", 1): "b"}
    nowhere = N.placement(a100, [0], 4, mapping)
    assert nowhere is not None and nowhere.nodes == ("unmapped:a100/0",) * 4
    assert N.placement(a100, [0], 4, {}) is None


def test_the_daemon_records_each_pools_gpus_and_submit_refuses_a_pool_without_nodes(
        cluster_file: Path, ledger_url: str, tmp_path: Path) -> None:
    from cellsched.ledger.lease import acquire, pool_without_nodes, state
    from cellsched.service import open_env

    text = cluster_file.read_text() + '\n[[pools]]\nname = "a100"\ngpu_type = "A100"\ngpus = 8\ngpus_per_node = 8\n'
    cluster_file.write_text(text)
    env = open_env(cluster_file, ledger_url)
    h100, a100 = env.cluster.pools
    acquire(env.ledger)
    h = Harness(env, tmp_path)
    h.ex = MemoryExecutor(None, now=T0, nodes=[node("ray-a"), node("ray-b")])
    h.restart()
    h.tick(T0)
    assert state(env.ledger).pool_gpus == {"h100": 16, "a100": 0}
    with env.ledger.read() as s:
        assert pool_without_nodes(s, h100) is None
        line = pool_without_nodes(s, a100)
    assert line is not None and line.startswith("pool a100: no Ray node has its label ray.io/accelerator-type=A100")
    # Submit to it: bad input naming the field, nothing written.
    import pytest

    from cellsched import service
    from cellsched.errors import BadInput
    from cellsched.ledger.snapshot import ledger_seq

    with env.ledger.read() as s:
        before = ledger_seq(s)
    with pytest.raises(BadInput, match=r"^budget.pool: pool a100: no Ray node has its label"):
        service.submit(env, project("on-a100", [job("t", gpus=4)], gpus=4, pool="a100"), "alice", T0 + 5)
    with env.ledger.read() as s:
        assert ledger_seq(s) == before
    # An A100 node joins: the census follows at the next sweep.
    h.ex._nodes = [node("ray-a"), node("ray-b"), node("ray-c", labels={"ray.io/accelerator-type": "A100"})]
    h.tick(T0 + 30)
    assert state(env.ledger).pool_gpus == {"h100": 16, "a100": 8}
    with env.ledger.read() as s:
        assert pool_without_nodes(s, a100) is None
    env.ledger.dispose()


def test_grants_on_a_lost_node_move_to_free_nodes_and_run_there(env: Env, tmp_path: Path) -> None:
    """The node under two running grants dies with no spare to take its index: their
    attempts end lost, both move to the other node (free for their windows), their groups
    are asked for again there, the jobs run again and complete; the time without GPUs is a
    breach; the ledger still audits."""
    from cellsched.ledger import events as E

    a = submit(env, project("first", [job("t", gpus=4)], gpus=4, window_s=200))
    b = submit(env, project("second", [job("t", gpus=4)], gpus=4, window_s=200))
    (on,) = nodes_of(a)  # type: ignore[misc]
    assert nodes_of(b) == [on]  # best fit: both on one node
    other = 1 - on
    ray = {0: "ray-a", 1: "ray-b"}  # the node map numbers Ray's nodes in node-id order
    h = Harness(env, tmp_path, {"t": Behaviour(60)})
    h.ex = MemoryExecutor({"t": Behaviour(60)}, now=T0, nodes=[node("ray-a"), node("ray-b")])
    h.restart()
    h.run(T0 + 5)
    assert [r.state for g in (a, b) for r in h.runs(g.id)] == ["running"] * 2
    h.ex._nodes = [node(ray[on], alive=False), node(ray[other])]
    for g in (a, b):
        h.ex.lose_bundles(h.runtime(g.id).reservation, range(4))  # type: ignore[union-attr]
    h.run(T0 + 30)
    moved = {json.loads(e.data)["grant"]: json.loads(e.data) for e in h.events("moved_nodes")}
    assert set(moved) == {a.id, b.id} and all(m["to"] == [other] and m["lost"] == [on] for m in moved.values())
    for g in (a, b):
        assert nodes_of(h.grant(g.id)) == [other]
        name = h.runtime(g.id).reservation  # type: ignore[union-attr]
        placed = h.ex._resv[name].placement
        assert placed is not None and set(placed.nodes) == {ray[other]}
        assert 0 < h.grant(g.id).breach_gs <= 4 * 10  # lost at +5, placed again within seconds
    # Admission no longer counts the lost node: 8 more GPUs wait for the movers to end (the
    # old calendar had a whole free node for them), and come at once when it is back.
    c = submit(env, project("third", [job("t", gpus=8)], gpus=8, window_s=50), now=T0 + 30)
    assert nodes_of(c) == [other] and c.start >= T0 + 30 + 60
    for g in (a, b):
        assert h.run_until_done(g.id).state == "completed"
        assert [s for _, _, s in h.attempts(g.id)] == ["lost", "succeeded"]
    h.ex._nodes = [node(ray[on]), node(ray[other])]  # a node comes back under that index
    h.run(h.now + 11)
    d = submit(env, project("fourth", [job("t", gpus=8)], gpus=8, window_s=50), now=h.now)
    assert nodes_of(d) == [on] and d.start == h.now
    with env.ledger.read() as s:
        result = E.audit(s)
    assert result.ok, result.problem
