"""The discrete-event engine: one heap of ``(time, priority, seq)`` on a virtual clock.

Submissions come from the trace in order (merged with the heap rather than pushed into it);
job ends and scheduled starts are heap events. At one instant, ends are handled first, then
submissions, then scheduled starts, and then the policy gets ``settle(now)`` once before the
clock moves on. Ties are broken by sequence numbers, never by dict or set order, so the same
trace and policy always give the same result.

The engine runs jobs itself (a start is a record plus an END event after the job's run time):
the in-memory executor twin in ``cellsched.executor.memory`` models gangs, ranks and signals,
which a 100k-job replay neither needs nor can afford. What the simulator shares with
``cellsched serve`` is the admission core (:class:`cellsched.core.admission.Schedule`).
"""

from __future__ import annotations

from heapq import heappop, heappush
from typing import Callable, Protocol

from cellsched.sim.placement import NodeMap
from cellsched.sim.trace import TraceJob

END, SUBMIT, START = 0, 1, 2


class OverCommit(AssertionError):
    """A policy started more GPUs than the cluster has: a bug in the policy, never input."""


class Policy(Protocol):
    name: str
    promises: bool

    def bind(self, engine: Engine) -> None: ...
    def on_submit(self, job: TraceJob, now: int) -> None: ...
    def on_end(self, job: TraceJob, now: int) -> None: ...
    def on_start(self, job: TraceJob, now: int) -> None: ...
    def settle(self, now: int) -> None: ...


class Engine:
    """Replays ``jobs`` (sorted by submit, then seq) through ``policy`` on ``capacity`` GPUs.

    With ``nodes`` (the cluster's nodes), every start names the nodes the job runs on, and
    the engine refuses outright a start that over-commits any node or breaks the node rule.
    After :meth:`run`, ``start[i]``/``end[i]`` hold job ``i``'s times (-1 if it never ran),
    ``refused[i]`` the reason code of a refusal, ``promised[i]`` the start a promising policy
    announced at submission, ``placed[i]`` the nodes it ran on."""

    def __init__(self, jobs: list[TraceJob], capacity: int, policy: Policy, nodes: NodeMap | None = None) -> None:
        n = len(jobs)
        self.jobs = jobs
        self.capacity = capacity
        self.policy = policy
        self.now = 0
        self.busy = 0
        self.start = [-1] * n
        self.end = [-1] * n
        self.promised: list[int | None] = [None] * n
        self.refused: dict[int, str] = {}
        self.nodes = nodes
        self.node_busy = [0] * len(nodes.sizes) if nodes is not None else []
        self.placed: dict[int, tuple[int, ...]] = {}
        self.breaches: list[tuple[int, str]] = []  # (seq, what) for promises not kept
        self._heap: list[tuple[int, int, int, int]] = []  # (time, priority, seq, job seq)
        self._seq = 0

    # -- what policies call ------------------------------------------------------------

    def at(self, time: int, kind: int, job: TraceJob) -> None:
        """Schedule an event; ``time`` may not be in the past."""
        if time < self.now:
            raise ValueError(f"event at {time} is before now ({self.now})")
        self._seq += 1
        heappush(self._heap, (time, kind, self._seq, job.seq))

    def run_job(self, job: TraceJob, now: int, nodes: tuple[int, ...] | None = None) -> None:
        """Start ``job`` now on ``job.gpus`` GPUs (on ``nodes``, global indices, when the
        engine checks nodes); it ends after its run time."""
        i = job.seq
        if self.start[i] >= 0:
            raise AssertionError(f"job {job.job_id} started twice")
        if i in self.refused:
            raise AssertionError(f"job {job.job_id} started after being refused")
        self.busy += job.gpus
        if self.busy > self.capacity:
            raise OverCommit(f"{self.policy.name}: {self.busy} GPUs busy of {self.capacity} at t={now}")
        if self.nodes is not None:
            self._occupy(job, nodes, 1)
        self.start[i] = now
        p = self.promised[i]
        if p is not None and now > p:
            self.breaches.append((i, f"started at {now}, promised {p}"))
        self.at(now + job.run, END, job)

    def _occupy(self, job: TraceJob, nodes: tuple[int, ...] | None, sign: int) -> None:
        m = self.nodes
        assert m is not None
        if sign > 0:
            if not nodes or len(set(nodes)) != len(nodes):
                raise OverCommit(f"{self.policy.name}: job {job.job_id} started on no nodes or twice on one")
            per = [m.per_node_gpus(g, job.gpus) for g in nodes]
            if sum(per) != job.gpus or (len(nodes) > 1 and any(p != m.sizes[g] for p, g in zip(per, nodes))):
                raise OverCommit(f"{self.policy.name}: job {job.job_id} of {job.gpus} GPUs placed on {nodes}")
            self.placed[job.seq] = nodes
        busy, sizes = self.node_busy, m.sizes
        for g in self.placed[job.seq]:
            busy[g] += sign * m.per_node_gpus(g, job.gpus)
            if busy[g] > sizes[g]:
                raise OverCommit(f"{self.policy.name}: node {g} has {busy[g]} GPUs busy of {sizes[g]} at t={self.now}")

    def promise(self, job: TraceJob, start: int) -> None:
        self.promised[job.seq] = start

    def refuse(self, job: TraceJob, reason: str) -> None:
        self.refused[job.seq] = reason

    # -- the loop ----------------------------------------------------------------------

    def run(self, progress: Callable[[int], None] | None = None, every: int = 2000) -> None:
        """Replay everything; ``progress(jobs submitted so far)`` is called now and then."""
        jobs, heap, policy = self.jobs, self._heap, self.policy
        policy.bind(self)
        n = len(jobs)
        nxt = 0
        on_end, on_submit, on_start, settle = policy.on_end, policy.on_submit, policy.on_start, policy.settle
        while nxt < n or heap:
            t = jobs[nxt].submit if nxt < n else None
            if heap and (t is None or heap[0][0] < t or (heap[0][0] == t and heap[0][1] < SUBMIT)):
                t = heap[0][0]
            self.now = t
            # One instant: ends, then submissions, then starts; then settle (which may add
            # events at this same instant, handled in another round before time moves on).
            while True:
                while heap and heap[0][0] == t and heap[0][1] == END:
                    j = jobs[heappop(heap)[3]]
                    self.busy -= j.gpus
                    if self.nodes is not None:
                        self._occupy(j, None, -1)
                    self.end[j.seq] = t
                    on_end(j, t)
                while nxt < n and jobs[nxt].submit == t:
                    j = jobs[nxt]
                    nxt += 1
                    on_submit(j, t)
                    if progress is not None and nxt % every == 0:
                        progress(nxt)
                while heap and heap[0][0] == t and heap[0][1] == START:
                    on_start(jobs[heappop(heap)[3]], t)
                settle(t)
                if not (heap and heap[0][0] == t):
                    break
        if progress is not None:
            progress(n)
        for i, j in enumerate(jobs):
            if self.start[i] < 0 and i not in self.refused:
                raise AssertionError(f"{policy.name}: job {j.job_id} neither ran nor was refused")
