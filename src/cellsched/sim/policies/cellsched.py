"""cellsched: every job is admitted at submission by the real admission core.

Each trace job is a one-job project: ``Schedule.admit`` gives it the earliest window that
fits the pool calendar and its team's allowance (that start is the *promise*), or a refusal.
The job starts at its window's start. When it ends (true duration <= requested), the rest of
its window is released (``Schedule.release``) and the waiting grants are compressed with
``Schedule.move_earlier``: they may start earlier, never later than promised.

Compression is exact and done in order of current start (ties by submission): a grant whose
turn comes is moved to the earliest window the calendar then allows. One pass in that order
is a fixed point, because a move only takes capacity before the mover's old start and only
gives back capacity at or after it. ``cellsched.sim.compress`` finds, without trying them
all, the grants that could move, with the same result as trying every one; it is opt-in
(``exhaustive=False``) because, as measured so far, trying every grant is faster (see
docs/simulate.md).
"""

from __future__ import annotations

from cellsched.core.admission import Grant, Refusal, Request, Schedule
from cellsched.sim.compress import Compressor
from cellsched.sim.engine import START, Engine
from cellsched.sim.setup import SimSetup
from cellsched.sim.trace import TraceJob


class Cellsched:
    name = "cellsched"
    promises = True

    def __init__(self, setup: SimSetup, exhaustive: bool = True) -> None:
        self.schedule = Schedule.empty(setup.cluster)
        self.grants: dict[int, Grant] = {}  # job seq -> its grant as it now stands
        self.compressor = Compressor(self.schedule, exhaustive=exhaustive)
        self.moves = 0
        self.tries = 0
        self._forget_at = 0

    def bind(self, engine: Engine) -> None:
        self.engine = engine

    def on_submit(self, job: TraceJob, now: int) -> None:
        self._compress(now)  # grants already waiting come before newcomers
        req = Request(job.job_id, job.team, job.gpus, job.gpus * job.requested)
        out = self.schedule.admit(req, now)
        if isinstance(out, Refusal):
            self.engine.refuse(job, out.reason)
            return
        self.schedule.commit(out)
        self.grants[job.seq] = out
        self.engine.promise(job, out.start)
        if out.start == now:
            self.engine.run_job(job, now)
        else:
            self.compressor.add(job.seq, out)
            self.engine.at(out.start, START, job)

    def on_start(self, job: TraceJob, now: int) -> None:
        g = self.grants.get(job.seq)
        if g is None or g.start != now or self.engine.start[job.seq] >= 0:
            return  # a stale event: the grant moved earlier and already started
        self.compressor.remove(job.seq, g)
        self.engine.run_job(job, now)

    def on_end(self, job: TraceJob, now: int) -> None:
        g = self.grants.pop(job.seq)
        if g.end < now:
            raise AssertionError(f"job {job.job_id} ran past its window")
        self.schedule.release(g, now)
        self.compressor.freed(g.pool, now, g.end)

    def settle(self, now: int) -> None:
        self._compress(now)
        if now >= self._forget_at:  # the past can no longer be reserved: keep calendars short
            for _, cal in self.schedule.pools.values():
                cal.forget_before(now)
            for team in self.schedule.teams.values():
                if team.calendar is not None:
                    team.calendar.forget_before(now)
            self._forget_at = now + 3600

    def _compress(self, now: int) -> None:
        if not self.compressor.pending():
            return
        grants, engine, jobs = self.grants, self.engine, engine_jobs(self.engine)
        for seq, old, new in self.compressor.run(now):
            grants[seq] = new
            self.moves += 1
            if new.start == now:
                engine.run_job(jobs[seq], now)
            else:
                engine.at(new.start, START, jobs[seq])
        self.tries = self.compressor.tries


def engine_jobs(engine: Engine):  # type: ignore[no-untyped-def]
    return engine.jobs


def make(setup: SimSetup) -> Cellsched:
    return Cellsched(setup)
