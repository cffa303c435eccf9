"""Pools on real nodes: which Ray nodes belong to a pool, and how to pin a grant to them.

Pure functions over plain data (``NodeInfo``, and any object with a pool's fields:
``gpu_type``, ``node_label``, ``node_resource``, as ``cellsched.spec.cluster.Pool`` has);
nothing here imports ray or the spec package.

A pool's nodes are found, in order of precedence, by:

- ``node_resource = "pool_a100"``: nodes that declare that custom resource (``ray start
  --resources '{"pool_a100": 8}'``, one unit per GPU); each bundle then holds one unit;
- ``node_label = "key=value"``: nodes carrying that label (``ray start --labels key=value``);
- neither: nodes whose ``ray.io/accelerator-type`` label is the pool's ``gpu_type`` (Ray sets
  it itself when it detects the GPUs, e.g. ``H100``, ``A100``; ``ray start --labels`` can set
  it where detection does not).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from .base import NodeInfo, Placement

ACCELERATOR_LABEL = "ray.io/accelerator-type"
NODE_ID_LABEL = "ray.io/node-id"  # Ray sets it on every node (ray.util.placement_group)


class PoolLike(Protocol):
    """The fields of a cluster-config pool this module reads."""

    @property
    def gpu_type(self) -> str: ...
    @property
    def node_label(self) -> str | None: ...
    @property
    def node_resource(self) -> str | None: ...


def parse_label(text: str) -> tuple[str, str]:
    """``"key=value"`` → ``(key, value)``; ValueError naming what is wrong."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key or not value:
        raise ValueError(f"node label {text!r} must be key=value")
    return key, value


def pool_label_selector(pool: PoolLike) -> dict[str, str]:
    """The labels every node of ``pool`` carries ({} when the pool is found by resource)."""
    if getattr(pool, "node_resource", None):
        return {}
    label = getattr(pool, "node_label", None)
    if label:
        key, value = parse_label(label)
        return {key: value}
    return {ACCELERATOR_LABEL: pool.gpu_type}


def pool_bundle_resources(pool: PoolLike) -> dict[str, float]:
    """Extra resources each bundle of a grant in ``pool`` holds (one unit per GPU)."""
    resource = getattr(pool, "node_resource", None)
    return {resource: 1.0} if resource else {}


def node_in_pool(node: NodeInfo, pool: PoolLike) -> bool:
    """Whether ``node`` (alive or not) is one of ``pool``'s nodes."""
    for resource in pool_bundle_resources(pool):
        if node.resources.get(resource, 0) <= 0:
            return False
    return all(node.labels.get(k) == v for k, v in pool_label_selector(pool).items())


def pool_nodes(nodes: Iterable[NodeInfo], pool: PoolLike) -> list[NodeInfo]:
    """The live nodes of ``pool`` that have GPUs, sorted by node id: a deterministic order
    for numbering new nodes. The numbering itself (calendar node index → node id) is the
    daemon's to keep: ids change when a host restarts, so sorting again would renumber."""
    return sorted((n for n in nodes if n.alive and n.gpus > 0 and node_in_pool(n, pool)),
                  key=lambda n: n.node_id)


def pool_capacity(nodes: Iterable[NodeInfo], pool: PoolLike) -> int:
    """GPUs Ray has on the live nodes of ``pool`` (0 when no node matches)."""
    return sum(n.gpus for n in pool_nodes(nodes, pool))


def placement_for(pool: PoolLike, node_ids: Sequence[str]) -> Placement:
    """The placement of a grant in ``pool`` whose bundle ``i`` goes on ``node_ids[i]``."""
    return Placement(tuple(node_ids), pool_label_selector(pool), pool_bundle_resources(pool))
