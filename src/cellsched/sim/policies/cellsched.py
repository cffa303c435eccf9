"""cellsched: every job is admitted at submission by the real admission core.

Each trace job is a one-job project: ``Schedule.admit`` gives it the earliest window that
fits the pool calendar and its team's allowance (that start is the *promise*), or a refusal.
The job starts at its window's start at the latest. When GPUs come free (a job ends, early
or on time), the waiting grants are pulled forward by the cluster's ``policy.pull_forward``
rule, the same one ``cellsched serve`` applies (``cellsched.sim.compress``): by default
(``hold_when_busy``) the oldest waiting grant moves to its earliest window while 3 h of work
wait, then each waiting grant whose whole window fits now starts now; with ``compact`` every waiting grant
moves to the earliest window the calendar then allows. Never later than promised.
Every grant is on nodes (the core's node rule); a job runs on its grant's nodes as they
stand when it starts (a grant pulled forward may have moved to other nodes).
"""

from __future__ import annotations

import time

from cellsched.core.admission import Grant, Refusal, Request, Schedule
from cellsched.core.expect import ARRIVALS_S, expected_starts
from cellsched.sim.compress import Waiting
from cellsched.sim.expect import History, recent_arrivals
from cellsched.sim.engine import START, Engine
from cellsched.sim.setup import SimSetup
from cellsched.sim.trace import TraceJob


class Cellsched:
    name = "cellsched"
    promises = True

    def __init__(self, setup: SimSetup, rule: str | None = None, reserve: int | None = None,
                 expect_every: int | None = None) -> None:
        self.schedule = Schedule.empty(setup.cluster)
        nodes = setup.nodes
        self.offset = {p: nodes.offset(p) for p in self.schedule.pools}
        self.grants: dict[int, Grant] = {}  # job seq -> its grant as it now stands
        self.rule_name = rule or setup.cluster.policy.pull_forward
        self.waiting = Waiting(self.schedule, self.rule_name, reserve)
        self._forget_at = 0
        # The expected start, measured (sim/expect.py): every expect_every-th waiting job.
        self.expect_every = setup.expect_every if expect_every is None else expect_every
        self.history = History()
        self.expected: dict[int, tuple[int, int, int]] = {}  # seq -> (submit, promise, expected)
        self.expect_seconds = 0.0
        self.pool_shapes = {name: (p.gpus, p.gpus_per_node) for name, (p, _) in self.schedule.pools.items()}

    def bind(self, engine: Engine) -> None:
        self.engine = engine

    def on_submit(self, job: TraceJob, now: int) -> None:
        self._pull_forward(now)  # grants already waiting come before newcomers
        req = Request(job.job_id, job.team, job.gpus, job.gpus * job.requested)
        out = self.schedule.admit(req, now)
        if isinstance(out, Refusal):
            self.engine.refuse(job, out.reason)
            return
        out = self.schedule.commit(out)
        self.grants[job.seq] = out
        self.engine.promise(job, out.start)
        if out.start == now:
            self.engine.run_job(job, now, self._where(out))
        else:
            self.waiting.add(job.seq, out)
            self.engine.at(out.start, START, job)
            if self.expect_every and job.seq % self.expect_every == 0:
                self._expect(job, out, now)

    def _expect(self, job: TraceJob, g: Grant, now: int) -> None:
        t0 = time.process_time()
        got = expected_starts(self.pool_shapes, list(self.grants.items()), self.history.ratios(now), now,
                              want=(job.seq,), waiting_set=lambda s: Waiting(s, self.rule_name),
                              arrivals=recent_arrivals(self.engine.jobs, self.engine.refused, job.seq, now),
                              period=ARRIVALS_S)
        self.expected[job.seq] = (job.submit, g.start, got.get(job.seq, g.start))
        self.expect_seconds += time.process_time() - t0

    def on_start(self, job: TraceJob, now: int) -> None:
        g = self.grants.get(job.seq)
        if g is None or g.start != now or self.engine.start[job.seq] >= 0:
            # A stale event: the grant moved earlier. Under start_now its old window, free
            # from here on, is capacity given back at this instant (see _pull_forward); a
            # compacting pass has already given it to whoever could use it.
            if self.waiting.rule == "start_now":
                self.waiting.freed()
            return
        self.waiting.remove(job.seq, g)
        self.engine.run_job(job, now, self._where(g))

    def on_end(self, job: TraceJob, now: int) -> None:
        g = self.grants.pop(job.seq)
        if g.end < now:
            raise AssertionError(f"job {job.job_id} ran past its window")
        if self.expect_every:
            self.history.add(now, job.team, now - g.start, g.end - g.start)
        self.schedule.release(g, now)
        self.waiting.freed()

    def settle(self, now: int) -> None:
        self._pull_forward(now)
        if now >= self._forget_at:  # the past can no longer be reserved: keep calendars short
            for _, cal in self.schedule.pools.values():
                cal.forget_before(now)
            for team in self.schedule.teams.values():
                if team.calendar is not None:
                    team.calendar.forget_before(now)
            self._forget_at = now + 3600

    def _pull_forward(self, now: int) -> None:
        grants, engine, jobs = self.grants, self.engine, self.engine.jobs
        start_now = self.waiting.rule == "start_now"
        for seq, old, new in self.waiting.run(now):
            grants[seq] = new
            if new.start == now:
                engine.run_job(jobs[seq], now, self._where(new))
            else:
                engine.at(new.start, START, jobs[seq])
            # Under start_now the old window is given back from where the new one no longer
            # covers it, and a stale START then says so (events can be sparse). The START
            # still booked at the old start says it when that is the place.
            back = max(old.start, new.end)
            if start_now and old.start < back < old.end:
                engine.at(back, START, jobs[seq])


    def _where(self, g: Grant) -> tuple[int, ...]:
        """The grant's nodes, numbered across the cluster (as the engine checks them)."""
        first = self.offset[g.pool]
        return tuple(first + n for n in g.nodes or ())


def make(setup: SimSetup) -> Cellsched:
    return Cellsched(setup)
