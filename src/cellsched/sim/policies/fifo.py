"""FIFO: jobs start in arrival order; a job that does not fit blocks everyone behind it."""

from __future__ import annotations

from collections import deque

from cellsched.sim.engine import Engine
from cellsched.sim.setup import SimSetup
from cellsched.sim.trace import TraceJob


class Fifo:
    name = "fifo"
    promises = False

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self.queue: deque[TraceJob] = deque()

    def bind(self, engine: Engine) -> None:
        self.engine = engine

    def on_submit(self, job: TraceJob, now: int) -> None:
        if job.gpus > self.capacity:
            self.engine.refuse(job, "wider_than_pool")
        else:
            self.queue.append(job)

    def on_end(self, job: TraceJob, now: int) -> None:
        self.free += job.gpus

    def on_start(self, job: TraceJob, now: int) -> None:  # never scheduled ahead
        raise AssertionError("fifo schedules no starts")

    def settle(self, now: int) -> None:
        q = self.queue
        while q and q[0].gpus <= self.free:
            j = q.popleft()
            self.free -= j.gpus
            self.engine.run_job(j, now)


def make(setup: SimSetup) -> Fifo:
    return Fifo(setup.gpus)
