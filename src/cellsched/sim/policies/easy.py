"""EASY backfill: FIFO, except that when the queue head does not fit, only the head holds a
reservation (the *shadow time*, computed from the running jobs' requested ends), and any
later job may start now if it fits in the free GPUs and either ends (by its request) before
the shadow time or uses only GPUs the head will not need then.

Backfill candidates are found in arrival order without scanning the queue: waiting jobs are
kept per width, each width in a min-tree over arrival positions keyed by requested run time,
so "the first waiting job of width w asking for at most R seconds" is one descent.

On nodes (``cellsched.sim.placement``): "fits" means the node rule places it now; the
shadow time is the first requested end at which the head fits on the nodes given back by
then; a job that would run past it is backfilled only if the head still fits at the shadow
time with that job on the nodes it takes now. On a one-node pool this is the flat rule.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from cellsched.sim.engine import Engine
from cellsched.sim.placement import NodeMap, Nodes
from cellsched.sim.policies.fifo import refusal
from cellsched.sim.setup import SimSetup
from cellsched.sim.trace import TraceJob

INF = 1 << 62


class FirstFit:
    """Positions 0..n-1 in arrival order, each holding a requested run time (INF = empty)."""

    __slots__ = ("size", "tree", "seqs", "count")

    def __init__(self, n: int) -> None:
        size = 1
        while size < max(1, n):
            size *= 2
        self.size = size
        self.tree = [INF] * (2 * size)
        self.seqs: list[int] = []
        self.count = 0

    def append(self, seq: int, value: int) -> int:
        pos = len(self.seqs)
        self.seqs.append(seq)
        self._set(pos, value)
        self.count += 1
        return pos

    def remove(self, pos: int) -> None:
        self._set(pos, INF)
        self.count -= 1

    def _set(self, pos: int, value: int) -> None:
        tree = self.tree
        i = pos + self.size
        tree[i] = value
        i >>= 1
        while i:
            a, b = tree[2 * i], tree[2 * i + 1]
            m = a if a < b else b
            if tree[i] == m:
                break
            tree[i] = m
            i >>= 1

    def first(self, limit: int) -> int | None:
        """Leftmost position whose value is <= limit."""
        tree = self.tree
        if tree[1] > limit:
            return None
        i, size = 1, self.size
        while i < size:
            i *= 2
            if tree[i] > limit:
                i += 1
        return i - size


class Easy:
    name = "easy"
    promises = False

    def __init__(self, capacity: int, widths: dict[int, int], nodes: NodeMap) -> None:
        self.capacity = capacity
        self.nodes = Nodes(nodes)
        self.where: dict[int, tuple[int, ...]] = {}
        self.free = capacity
        self.classes = {w: FirstFit(n) for w, n in sorted(widths.items())}
        self.widths = [w for w in sorted(self.classes) if w <= capacity and nodes.admissible(w)]
        self.pos: dict[int, int] = {}  # waiting job seq -> position in its width class
        self.arrivals: list[int] = []  # waiting job seqs in arrival order (lazy deletion)
        self.head_at = 0
        self.running: list[tuple[int, int]] = []  # (requested end, seq), sorted
        self.req_end: dict[int, int] = {}

    def bind(self, engine: Engine) -> None:
        self.engine = engine
        self.jobs = engine.jobs

    def on_submit(self, job: TraceJob, now: int) -> None:
        why = refusal(job, self.capacity, self.nodes.map)
        if why is not None:
            self.engine.refuse(job, why)
            return
        self.pos[job.seq] = self.classes[job.gpus].append(job.seq, job.requested)
        self.arrivals.append(job.seq)

    def on_end(self, job: TraceJob, now: int) -> None:
        self.free += job.gpus
        self.nodes.give(self.where.pop(job.seq), job.gpus)
        r = self.running
        del r[bisect_left(r, (self.req_end.pop(job.seq), job.seq))]

    def on_start(self, job: TraceJob, now: int) -> None:
        raise AssertionError("easy schedules no starts")

    def _start(self, job: TraceJob, now: int, at: tuple[int, ...]) -> None:
        self.classes[job.gpus].remove(self.pos.pop(job.seq))
        self.free -= job.gpus
        self.nodes.take(at, job.gpus)
        self.where[job.seq] = at
        end = now + job.requested
        self.req_end[job.seq] = end
        insort(self.running, (end, job.seq))
        self.engine.run_job(job, now, at)

    def _head(self) -> TraceJob | None:
        arr, pos = self.arrivals, self.pos
        i = self.head_at
        while i < len(arr) and arr[i] not in pos:
            i += 1
        self.head_at = i
        if i > 4096 and i * 2 > len(arr):  # drop the started prefix now and then
            del arr[:i]
            self.head_at = i = 0
        return self.jobs[arr[i]] if i < len(arr) else None

    def settle(self, now: int) -> None:
        jobs, nodes = self.jobs, self.nodes
        head = self._head()
        while head is not None and head.gpus <= self.free:
            at = nodes.place(head.gpus)
            if at is None:
                break
            self._start(head, now, at)
            head = self._head()
        if head is None or self.free == 0:
            return
        # The head waits: its reservation is the first instant it fits on the nodes given
        # back by the running jobs' requested ends.
        later = dict(nodes.free)  # free GPUs per node at the shadow time
        shadow = now
        for end, seq in self.running:
            nodes.give(self.where[seq], jobs[seq].gpus, later)
            if nodes.place(head.gpus, later) is not None:
                shadow = end
                break
        window = shadow - now
        while self.free > 0:
            best = best_at = None
            for w in self.widths:
                if w > self.free:
                    break
                at = nodes.place(w)
                if at is None:  # nothing wider fits either
                    break
                c = self.classes[w]
                if c.count == 0:
                    continue
                # May it run past the shadow time? Only if the head still fits then.
                nodes.take(at, w, later)
                past_ok = nodes.place(head.gpus, later) is not None
                nodes.give(at, w, later)
                p = c.first(INF - 1 if past_ok else window)
                if p is not None:
                    s = c.seqs[p]
                    if best is None or s < best:
                        best, best_at = s, at
            if best is None or best_at is None:
                return
            j = jobs[best]
            if j.requested > window:
                nodes.take(best_at, j.gpus, later)
            self._start(j, now, best_at)


def make(setup: SimSetup) -> Easy:
    widths: dict[int, int] = {}
    for j in setup.trace.jobs:
        widths[j.gpus] = widths.get(j.gpus, 0) + 1
    return Easy(setup.gpus, widths, setup.nodes)
