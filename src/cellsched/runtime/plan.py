"""What to run next inside one grant: a pure function of the spec and the attempts so far.

No I/O and no clock: the reconciler observes the ledger and the executor, calls
:func:`job_states` and :func:`next_launches`, then acts on the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from cellsched.spec.models import ProjectSpec

# A job's state as the daemon sees it.
#   succeeded: an attempt succeeded          running: an attempt is running
#   failed:    out of retries                killed: stopped by the window's end or a cancel
#   blocked:   a job it waits for failed     ready: may start now     waiting: for `after`
JOB_DONE = ("succeeded", "failed", "killed", "blocked")

# An attempt lost with its node (or whose fate a crashed daemon never learnt) is not the
# job's fault, so it does not use up ``retries``; but a job that keeps getting lost must
# not loop forever inside its window.
MAX_LOST_ATTEMPTS = 3


@dataclass(frozen=True)
class AttemptView:
    """The part of a ``JobRunRow`` planning needs."""

    job: str
    attempt: int
    state: str  # running | succeeded | failed | killed | lost | interrupted (counts as nothing)


def job_states(spec: ProjectSpec, attempts: Iterable[AttemptView]) -> dict[str, str]:
    """Every job's state, in the spec's topological order."""
    by_job: dict[str, list[AttemptView]] = {j.name: [] for j in spec.jobs}
    for a in attempts:
        by_job.setdefault(a.job, []).append(a)
    out: dict[str, str] = {}
    for job in spec.job_order():
        runs = sorted(by_job[job.name], key=lambda a: a.attempt)
        states = [a.state for a in runs]
        if "succeeded" in states:
            out[job.name] = "succeeded"
        elif "running" in states:
            out[job.name] = "running"
        elif states.count("failed") > job.retries or states.count("lost") >= MAX_LOST_ATTEMPTS:
            out[job.name] = "failed"
        elif states and states[-1] == "killed":
            out[job.name] = "killed"
        elif any(out[d] in ("failed", "killed", "blocked") for d in job.after):
            out[job.name] = "blocked"
        elif all(out[d] == "succeeded" for d in job.after):
            out[job.name] = "ready"
        else:
            out[job.name] = "waiting"
    return out


def next_attempt(attempts: Iterable[AttemptView], job: str) -> int:
    """Attempt numbers start at 1 and never repeat (the executor is idempotent on them)."""
    return 1 + max((a.attempt for a in attempts if a.job == job), default=0)


@dataclass(frozen=True)
class Launch:
    job: str
    attempt: int
    bundles: tuple[int, ...]


def next_launches(
    spec: ProjectSpec, attempts: Sequence[AttemptView], width: int, busy: Iterable[int]
) -> list[Launch]:
    """Ready jobs that fit in the free bundles, in topological order (a job that does not
    fit yet lets a later, narrower one go first); lowest bundle indices first."""
    states = job_states(spec, attempts)
    free = sorted(set(range(width)) - set(busy))
    out = []
    for job in spec.job_order():
        if states[job.name] != "ready" or job.gpus > len(free):
            continue
        take, free = tuple(free[: job.gpus]), free[job.gpus :]
        out.append(Launch(job.name, next_attempt(attempts, job.name), take))
    return out


def all_ended(states: dict[str, str]) -> bool:
    return all(s in JOB_DONE for s in states.values())
