"""Which Ray node each calendar node of a pool is: the daemon's node map.

Admission assigns every grant to node indices ``0..n-1`` of its pool (docs/admission.md);
the daemon maps each index to a live Ray node of that pool (``executor.pools``: by custom
resource, node label, or Ray's accelerator-type label) and pins the grant's bundles there.
Pure functions over plain data; the map itself lives in the ledger (``cs_node_map``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from cellsched.executor.base import NodeInfo, Placement
from cellsched.executor.pools import placement_for, pool_nodes
from cellsched.spec.cluster import Pool

NodeMap = Mapping[tuple[str, int], "str | None"]


def node_count(pool: Pool) -> int:
    """How many calendar nodes the pool has (the last one may be partial)."""
    return max(1, -(-pool.gpus // pool.gpus_per_node))


def remap(pools: Iterable[Pool], infos: Sequence[NodeInfo], current: NodeMap) -> list[tuple[str, int, str | None]]:
    """The changes that keep every index on its live node, take dead nodes off their index,
    and give free indices to unused live nodes of the pool (in node-id order, so the result
    does not depend on the order Ray lists them). A pool none of whose nodes Ray has ever
    shown is left unmapped: it runs unpinned, as on one machine with logical GPUs."""
    alive = {n.node_id for n in infos if n.alive}
    taken = {nid for nid in current.values() if nid in alive}
    changes: list[tuple[str, int, str | None]] = []
    for pool in pools:
        mine = sorted(n.node_id for n in pool_nodes(infos, pool) if n.alive)
        known = any(p == pool.name for p, _ in current)
        if not mine and not known:
            continue
        free = [nid for nid in mine if nid not in taken]
        for idx in range(node_count(pool)):
            key = (pool.name, idx)
            nid = current.get(key)
            if nid is not None and nid in alive:
                continue
            new = free.pop(0) if free else None
            if new is not None:
                taken.add(new)
            if new != nid or key not in current:
                changes.append((pool.name, idx, new))
    return changes


def placement(pool: Pool, grant_nodes: Sequence[int] | None, width: int, mapping: NodeMap) -> Placement | None:
    """Where a grant's bundles go: bundle ``i`` on the Ray node of its calendar node (a grant
    no wider than a node is all on ``grant_nodes[0]``; a wider one fills whole nodes in
    order). None (run unpinned) when the grant's nodes are unknown, or when no pool has a
    node of its own (one machine with logical GPUs). An index whose node is gone, or a pool
    with no node while others have theirs (a label no node carries), pins to a node that
    does not exist, so the group stays pending and the window is recorded as a breach
    instead of landing on another grant's or another pool's GPUs."""
    if grant_nodes is None or not mapping:
        return None
    per = pool.gpus_per_node
    ids = []
    for i in range(width):
        idx = grant_nodes[0] if width <= per else grant_nodes[i // per]
        ids.append(mapping.get((pool.name, idx)) or f"unmapped:{pool.name}/{idx}")
    return placement_for(pool, ids)
