"""Where the baselines put a job *now*: free GPUs per node, by the same node rule as the
admission core (``cellsched.core.nodes``): a job no wider than a node goes on one node, a
wider one on whole nodes of one pool (its width a multiple of the node size; any other width
is refused ``not_whole_nodes`` by every policy alike).

Nodes are numbered across the cluster, pool after pool in config order (``NodeMap``), which
is also how the engine checks that no node is ever over-committed. A narrow job goes to the
fullest node it fits (best fit; ties by lower index), a wide one to the lowest-numbered
free nodes. A pool that is one node places exactly as a flat count of free GPUs does.
"""

from __future__ import annotations

from dataclasses import dataclass

from cellsched.core.nodes import node_sizes, whole_nodes
from cellsched.spec.cluster import ClusterConfig


@dataclass(frozen=True)
class NodeMap:
    """The cluster's nodes numbered globally: per pool, its first index and node size."""

    sizes: tuple[int, ...]  # GPUs of every node, all pools
    pools: tuple[tuple[str, int, int, int], ...]  # (pool, first node, nodes, gpus_per_node)

    @classmethod
    def of(cls, cluster: ClusterConfig) -> NodeMap:
        sizes: list[int] = []
        pools = []
        for p in cluster.pools:
            per = min(p.gpus_per_node, p.gpus)
            ns = node_sizes(p.gpus, per)
            pools.append((p.name, len(sizes), len(ns), per))
            sizes.extend(ns)
        return cls(tuple(sizes), tuple(pools))

    def offset(self, pool: str) -> int:
        for name, first, _, _ in self.pools:
            if name == pool:
                return first
        raise KeyError(pool)

    def per_node_gpus(self, node: int, width: int) -> int:
        """GPUs a job of ``width`` holds on each of its nodes, if ``node`` is one of them."""
        for _, first, n, per in self.pools:
            if first <= node < first + n:
                return min(width, per)
        raise IndexError(node)

    def admissible(self, width: int) -> bool:
        """Whether some pool can ever hold a job of ``width`` by the node rule."""
        return any(_shape(width, per, n, self.sizes[first:first + n]) is not None
                   for _, first, n, per in self.pools)


def _shape(width: int, per: int, n: int, sizes: tuple[int, ...]) -> tuple[int, int] | None:
    """(GPUs per node, nodes) of ``width`` in a pool, or None if it can never fit there."""
    if width <= per:
        return (width, 1) if max(sizes, default=0) >= width else None
    k = whole_nodes(width, per)
    if k is None or k > sum(1 for s in sizes if s == per):
        return None
    return per, k


class Nodes:
    """Free GPUs per node of a set of node slots (a whole cluster, or one team's slice)."""

    def __init__(self, nodes: NodeMap, slots: list[tuple[int, int]] | None = None) -> None:
        """``slots``: (global node, GPUs of it available here); default every node whole."""
        self.map = nodes
        if slots is None:
            slots = list(enumerate(nodes.sizes))
        # per pool: (per_node, [(global node, size)])
        self.groups: list[tuple[int, list[tuple[int, int]]]] = []
        for _, first, n, per in nodes.pools:
            mine = [(g, s) for g, s in slots if first <= g < first + n and s > 0]
            if mine:
                self.groups.append((per, mine))
        self.size = {g: s for g, s in slots}
        self.free = dict(self.size)

    def can_ever(self, width: int) -> bool:
        for per, mine in self.groups:
            if width <= per:
                if any(s >= width for _, s in mine):
                    return True
            else:
                k = whole_nodes(width, per)
                if k is not None and sum(1 for _, s in mine if s == per) >= k:
                    return True
        return False

    def place(self, width: int, free: dict[int, int] | None = None) -> tuple[int, ...] | None:
        """Nodes a job of ``width`` would take now (on ``free``, default the current state)."""
        free = self.free if free is None else free
        for per, mine in self.groups:
            if width <= per:
                best = None
                for g, _ in mine:
                    f = free[g]
                    if f >= width and (best is None or f < free[best]):
                        best = g
                        if f == width:
                            break
                if best is not None:
                    return (best,)
            else:
                k = whole_nodes(width, per)
                if k is None:
                    continue
                picked = [g for g, s in mine if s == per and free[g] == per][:k]
                if len(picked) == k:
                    return tuple(picked)
        return None

    def take(self, nodes: tuple[int, ...], width: int, free: dict[int, int] | None = None) -> None:
        free = self.free if free is None else free
        for g in nodes:
            free[g] -= self.map.per_node_gpus(g, width)

    def give(self, nodes: tuple[int, ...], width: int, free: dict[int, int] | None = None) -> None:
        free = self.free if free is None else free
        for g in nodes:
            free[g] += self.map.per_node_gpus(g, width)
