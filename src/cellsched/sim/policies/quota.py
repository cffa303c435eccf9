"""Static quota: the GPUs are split once between teams by allowance share (largest
remainder), and each team runs FIFO inside its own slice. Idle slices are not lent.
A job wider than its team's slice can never run and is refused."""

from __future__ import annotations

from collections import deque

from cellsched.sim.engine import Engine
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

    def __init__(self, slices: dict[str, int]) -> None:
        self.slices = dict(slices)
        self.free = dict(slices)
        self.queues: dict[str, deque[TraceJob]] = {k: deque() for k in slices}
        self.dirty: list[str] = []

    def bind(self, engine: Engine) -> None:
        self.engine = engine

    def on_submit(self, job: TraceJob, now: int) -> None:
        if job.gpus > self.slices.get(job.team, 0):
            reason = "unknown_team" if job.team not in self.slices else "wider_than_slice"
            self.engine.refuse(job, reason)
            return
        self.queues[job.team].append(job)
        self.dirty.append(job.team)

    def on_end(self, job: TraceJob, now: int) -> None:
        self.free[job.team] += job.gpus
        self.dirty.append(job.team)

    def on_start(self, job: TraceJob, now: int) -> None:
        raise AssertionError("quota schedules no starts")

    def settle(self, now: int) -> None:
        if not self.dirty:
            return
        for team in sorted(set(self.dirty)):
            q, free = self.queues[team], self.free[team]
            while q and q[0].gpus <= free:
                j = q.popleft()
                free -= j.gpus
                self.engine.run_job(j, now)
            self.free[team] = free
        self.dirty.clear()


def make(setup: SimSetup) -> Quota:
    return Quota(partition(setup.gpus, setup.allowance_shares()))
