"""Pools on nodes (``executor/pools.py``), log tails, and the twin's placement: no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellsched.executor import (
    Behaviour,
    GangSpec,
    MemoryExecutor,
    NodeInfo,
    Placement,
    ReservationConflict,
    attempt_tails,
    log_tail,
    placement_for,
    pool_capacity,
    pool_label_selector,
    pool_nodes,
)
from cellsched.spec.cluster import Pool

H100 = {"ray.io/accelerator-type": "H100"}
A100 = {"ray.io/accelerator-type": "A100"}


def node(nid: str, gpus: int = 8, labels: dict[str, str] | None = None, alive: bool = True,
         **resources: float) -> NodeInfo:
    return NodeInfo(nid, "10.0.0.1", gpus, {"ray.io/node-id": nid, **(labels or {})}, alive,
                    {"GPU": float(gpus), **resources})


def pool(gpu_type: str = "H100", **kw: str) -> Pool:
    return Pool(name="p", gpu_type=gpu_type, gpus=16, **kw)


CLUSTER = [
    node("h2", labels=H100),
    node("h1", labels=H100),
    node("h3", labels=H100, alive=False),
    node("a1", labels={**A100, "cellsched/pool": "a100-ib"}),
    node("head", gpus=0, labels=H100),
    node("r1", labels={}, pool_x=8),
]


@pytest.mark.parametrize(("p", "selector", "nodes", "capacity"), [
    (pool("H100"), H100, ["h1", "h2"], 16),  # dead h3 and GPU-less head left out
    (pool("A100"), A100, ["a1"], 8),
    (pool("B200"), {"ray.io/accelerator-type": "B200"}, [], 0),
    (pool("x", node_label="cellsched/pool=a100-ib"), {"cellsched/pool": "a100-ib"}, ["a1"], 8),
    (pool("x", node_resource="pool_x"), {}, ["r1"], 8),
    (pool("x", node_resource="pool_y"), {}, [], 0),
])
def test_pool_nodes_and_capacity(p: Pool, selector: dict[str, str], nodes: list[str],
                                 capacity: int) -> None:
    assert pool_label_selector(p) == selector
    assert [n.node_id for n in pool_nodes(CLUSTER, p)] == nodes
    assert pool_capacity(CLUSTER, p) == capacity


def test_placement_for_a_pool() -> None:
    assert placement_for(pool("H100"), ["h1", "h1"]) == Placement(("h1", "h1"), H100)
    got = placement_for(pool("x", node_resource="pool_x"), ["r1"])
    assert (got.label_selector, got.bundle_resources) == ({}, {"pool_x": 1.0})
    with pytest.raises(ValueError, match="one node id per bundle"):
        Placement(())


@pytest.mark.parametrize(("text", "max_bytes", "tail"), [
    ("a\nb\nc\n", 100, "a\nb\nc\n"),
    ("line-1\nline-2\nline-3\n", 10, "line-3\n"),  # starts at a line boundary
    ("x" * 50, 10, "x" * 10),  # no boundary in reach: the bytes as they are
    (None, 10, ""),  # no log
])
def test_log_tail(tmp_path: Path, text: str | None, max_bytes: int, tail: str) -> None:
    p = tmp_path / "j" / "attempt-0" / "rank-0.log"
    if text is not None:
        p.parent.mkdir(parents=True)
        p.write_text(text)
    assert log_tail(str(p), max_bytes) == tail
    assert attempt_tails(str(tmp_path), "j", 0, 2, max_bytes) == (tail, "")


def twin(nodes: list[NodeInfo]) -> MemoryExecutor:
    return MemoryExecutor({"train": Behaviour(duration=10)}, capacity=64, nodes=nodes)


@pytest.mark.parametrize(("placement", "state"), [
    (Placement(("h1",) * 8, H100), "ready"),
    (Placement(("h1",) * 4 + ("h2",) * 4, H100), "ready"),
    (Placement(("h1",) * 8, A100), "pending"),  # the node is of another type
    (Placement(("h3",) * 8, H100), "pending"),  # dead
    (Placement(("zz",) * 8, H100), "pending"),  # unknown
    (Placement(("h1",) * 8, {}, {"pool_x": 1}), "pending"),  # h1 has no pool_x
    (Placement(("r1",) * 8, {}, {"pool_x": 1}), "ready"),
])
def test_twin_places_only_where_the_placement_fits(placement: Placement, state: str) -> None:
    ex = twin(CLUSTER)
    ex.reserve("cellsched/a", 8, placement=placement)
    assert ex.reservation_state("cellsched/a") == state


def test_twin_counts_gpus_per_node_and_frees_them() -> None:
    ex = twin(CLUSTER)
    ex.reserve("cellsched/a", 6, placement=Placement(("h1",) * 6, H100))
    ex.reserve("cellsched/b", 4, placement=Placement(("h1",) * 4, H100))  # 2 left on h1
    ex.reserve("cellsched/c", 2, placement=Placement(("h1",) * 2, H100))
    assert [ex.reservation_state(f"cellsched/{x}") for x in "abc"] == ["ready", "pending",
                                                                       "ready"]
    ex.release("cellsched/a")
    ex.advance(1)
    assert ex.reservation_state("cellsched/b") == "ready"
    with pytest.raises(ReservationConflict):
        ex.reserve("cellsched/b", 4, placement=Placement(("h2",) * 4, H100))
    with pytest.raises(ValueError, match="names 2 nodes for 4 bundles"):
        ex.reserve("cellsched/d", 4, placement=Placement(("h2",) * 2, H100))


def test_twin_nodes_and_pull_logs(tmp_path: Path) -> None:
    assert twin(CLUSTER).nodes() == sorted(CLUSTER, key=lambda n: n.node_id)
    plain = MemoryExecutor(capacity=8)
    assert [(n.gpus, n.alive) for n in plain.nodes()] == [(8, True)]
    plain.reserve("cellsched/a", 1)
    plain.launch(GangSpec("cellsched/a", "p", "train", 0, "true", [0], str(tmp_path)))
    assert plain.pull_logs("cellsched/a") == 0 and plain.pull_logs("cellsched/none") == 0
