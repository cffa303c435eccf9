"""Static quota: the GPUs are split once between teams by allowance share (largest
remainder), and each team runs FIFO inside its own slice. Idle slices are not lent.
A job wider than its team's slice can never run and is refused.

Slices are laid out on the nodes in team order, GPU after GPU, so a node may be shared by
two teams' slices; a job goes on its team's part of a node (one node if no wider than a
node, else whole nodes lying entirely in the slice: the node rule). A job its slice can
never hold that way is refused ``wider_than_slice`` too."""

from __future__ import annotations

from collections import deque

from cellsched.sim.engine import Engine
from cellsched.sim.placement import NodeMap, Nodes
from cellsched.sim.setup import SimSetup
from cellsched.sim.trace import TraceJob


def partition(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Split ``total`` GPUs in proportion to ``shares`` (largest remainder; ties by name order)."""
    s = sum(shares.values())
    if s <= 0:
        return {k: 0 for k in shares}
    exact = {k: total * v / s for k, v in shares.items()}
    out = {k: int(x) for k, x in exact.items()}
    left = total - sum(out.values())
    for k in sorted(shares, key=lambda k: (-(exact[k] - out[k]), k))[:left]:
        out[k] += 1
    return out


class Quota:
    name = "quota"
    promises = False

    def __init__(self, slices: dict[str, int], nodes: NodeMap) -> None:
        self.slices = dict(slices)
        self.free = dict(slices)
        self.queues: dict[str, deque[TraceJob]] = {k: deque() for k in slices}
        self.dirty: list[str] = []
        self.map = nodes
        self.parts: dict[str, Nodes] = {}
        node, left = 0, nodes.sizes[0] if nodes.sizes else 0
        for team, n in slices.items():  # lay the slices out on the nodes, GPU after GPU
            slots: list[tuple[int, int]] = []
            while n > 0:
                if left == 0:
                    node += 1
                    left = nodes.sizes[node]
                take = min(n, left)
                slots.append((node, take))
                n -= take
                left -= take
            self.parts[team] = Nodes(nodes, slots)
        self.where: dict[int, tuple[int, ...]] = {}

    def bind(self, engine: Engine) -> None:
        self.engine = engine

    def on_submit(self, job: TraceJob, now: int) -> None:
        part = self.parts.get(job.team)
        if part is None or job.gpus > self.slices[job.team] or not part.can_ever(job.gpus):
            if job.team not in self.slices:
                reason = "unknown_team"
            elif job.gpus <= self.slices[job.team] and not self.map.admissible(job.gpus):
                reason = "not_whole_nodes"
            else:
                reason = "wider_than_slice"
            self.engine.refuse(job, reason)
            return
        self.queues[job.team].append(job)
        self.dirty.append(job.team)

    def on_end(self, job: TraceJob, now: int) -> None:
        self.free[job.team] += job.gpus
        self.parts[job.team].give(self.where.pop(job.seq), job.gpus)
        self.dirty.append(job.team)

    def on_start(self, job: TraceJob, now: int) -> None:
        raise AssertionError("quota schedules no starts")

    def settle(self, now: int) -> None:
        if not self.dirty:
            return
        for team in sorted(set(self.dirty)):
            q, free, part = self.queues[team], self.free[team], self.parts[team]
            while q and q[0].gpus <= free:
                at = part.place(q[0].gpus)
                if at is None:
                    break
                j = q.popleft()
                free -= j.gpus
                part.take(at, j.gpus)
                self.where[j.seq] = at
                self.engine.run_job(j, now, at)
            self.free[team] = free
        self.dirty.clear()


def make(setup: SimSetup) -> Quota:
    return Quota(partition(setup.gpus, setup.allowance_shares()), setup.nodes)
