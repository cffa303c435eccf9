"""FIFO: jobs start in arrival order; a job that does not fit blocks everyone behind it.
Jobs are placed on nodes by the node rule (``cellsched.sim.placement``)."""

from __future__ import annotations

from collections import deque

from cellsched.sim.engine import Engine
from cellsched.sim.placement import NodeMap, Nodes
from cellsched.sim.setup import SimSetup
from cellsched.sim.trace import TraceJob


def refusal(job: TraceJob, capacity: int, nodes: NodeMap) -> str | None:
    """Why a baseline can never run ``job`` (the core's reason codes), or None."""
    if job.gpus > capacity:
        return "wider_than_pool"
    if not nodes.admissible(job.gpus):
        return "not_whole_nodes"
    return None


class Fifo:
    name = "fifo"
    promises = False

    def __init__(self, capacity: int, nodes: NodeMap) -> None:
        self.capacity = capacity
        self.free = capacity
        self.nodes = Nodes(nodes)
        self.queue: deque[TraceJob] = deque()
        self.where: dict[int, tuple[int, ...]] = {}

    def bind(self, engine: Engine) -> None:
        self.engine = engine

    def on_submit(self, job: TraceJob, now: int) -> None:
        why = refusal(job, self.capacity, self.nodes.map)
        if why is not None:
            self.engine.refuse(job, why)
        else:
            self.queue.append(job)

    def on_end(self, job: TraceJob, now: int) -> None:
        self.free += job.gpus
        self.nodes.give(self.where.pop(job.seq), job.gpus)

    def on_start(self, job: TraceJob, now: int) -> None:  # never scheduled ahead
        raise AssertionError("fifo schedules no starts")

    def settle(self, now: int) -> None:
        q = self.queue
        while q and q[0].gpus <= self.free:
            at = self.nodes.place(q[0].gpus)
            if at is None:
                return
            j = q.popleft()
            self.free -= j.gpus
            self.nodes.take(at, j.gpus)
            self.where[j.seq] = at
            self.engine.run_job(j, now, at)


def make(setup: SimSetup) -> Fifo:
    return Fifo(setup.gpus, setup.nodes)
