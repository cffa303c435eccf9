"""Metrics of one replay: what the ``simulate`` table and ``--json`` show.

Waits count jobs that ran; utilisation is busy GPU-seconds over capacity x the busy span
(first submission to last end), and ``utilisation_arriving`` the same over the span work
still arrives in (first to last submission: the drain after it, which one long wide job
can decide, left out); bounded slowdown uses a 10 s bound; Jain's index is taken
over teams of (share of GPU-time used) / (share of allowance).

A lending replay (``sim/lending.py``) adds the best-effort keys (:func:`summarise_lending`);
its waits, refusals and promises are the guaranteed jobs', its utilisation counts every
GPU-second a borrower held.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cellsched.sim.engine import Engine
from cellsched.sim.setup import SimSetup

if TYPE_CHECKING:
    from cellsched.sim.lending import Lent

BOUND_S = 10


def percentile(sorted_xs: list[int], q: float) -> float:
    """The one percentile definition (:func:`cellsched.core.stats.percentile`: nearest rank,
    the one ``cellsched report`` uses) of an already sorted list, ``q`` as a fraction; 0 when
    empty."""
    from cellsched.core.stats import percentile as nearest_rank

    p = nearest_rank(sorted_xs, round(q * 100, 9), presorted=True)
    return 0.0 if p is None else float(p)


def jain(xs: list[float]) -> float | None:
    if not xs or not any(xs):
        return None
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs))


def summarise(engine: Engine, setup: SimSetup, seconds: float) -> dict[str, object]:
    jobs = engine.jobs
    start, end = engine.start, engine.end
    waits: list[int] = []
    busy = 0
    slow = 0.0
    used: dict[str, int] = {}
    team_waits: dict[str, list[int]] = {}
    team_slow: dict[str, float] = {}
    kept = promised = 0
    first = min((j.submit for j in jobs), default=0)
    last_submit = max((j.submit for j in jobs), default=first)
    busy_arriving = 0
    for j in jobs:
        s = start[j.seq]
        if s < 0:
            continue
        run = end[j.seq] - s
        if s < last_submit:
            busy_arriving += j.gpus * (min(end[j.seq], last_submit) - s)
        w = s - j.submit
        waits.append(w)
        busy += j.gpus * run
        bsd = max(1.0, (w + run) / max(run, BOUND_S))
        slow += bsd
        used[j.team] = used.get(j.team, 0) + j.gpus * run
        team_waits.setdefault(j.team, []).append(w)
        team_slow[j.team] = team_slow.get(j.team, 0.0) + bsd
        p = engine.promised[j.seq]
        if p is not None:
            promised += 1
            kept += s <= p
    waits.sort()
    done = len(waits)
    last = max((e for e in end if e >= 0), default=first)
    span = max(1, last - first)
    shares = setup.allowance_shares()
    teams = []
    ratios = []
    for team, share in shares.items():
        got = used.get(team, 0) / busy if busy else 0.0
        tw = sorted(team_waits.get(team, []))
        teams.append({
            "team": team, "allowance_share": round(share, 4), "gpu_time_share": round(got, 4),
            "jobs": len(tw),
            "wait_mean_s": round(sum(tw) / len(tw), 1) if tw else None,
            "wait_p95_s": round(percentile(tw, 0.95), 1) if tw else None,
            "bounded_slowdown_mean": round(team_slow[team] / len(tw), 3) if tw else None,
        })
        if share > 0:
            ratios.append(got / share)
    # Jain over the teams' mean bounded slowdowns: 1.0 when every team waits alike relative
    # to its jobs' length, 1/n when one team bears all of it (the usage Jain is 1.0
    # whenever nothing is refused).
    slowdowns = [team_slow[t] / len(team_waits[t]) for t in sorted(team_waits)]
    promises = engine.policy.promises
    refused_by: dict[str, int] = {}
    for r in engine.refused.values():
        refused_by[r] = refused_by.get(r, 0) + 1
    return {
        "policy": engine.policy.name,
        "jobs": len(jobs),
        "done": done,
        "refused": len(engine.refused),
        "refused_by_reason": dict(sorted(refused_by.items())),
        "utilisation": round(busy / (engine.capacity * span), 4),
        "utilisation_arriving": round(busy_arriving / (engine.capacity * max(1, last_submit - first)), 4),
        "wait_mean_s": round(sum(waits) / done, 1) if done else 0.0,
        "wait_p50_s": round(percentile(waits, 0.50), 1),
        "wait_p95_s": round(percentile(waits, 0.95), 1),
        "wait_p99_s": round(percentile(waits, 0.99), 1),
        "bounded_slowdown_mean": round(slow / done, 3) if done else 0.0,
        "makespan_s": last - first,
        "jain_index": None if (j := jain(ratios)) is None else round(j, 4),
        "fairness_slowdown_jain": None if (fj := jain(slowdowns)) is None else round(fj, 4),
        "promise_kept": (round(kept / promised, 6) if promised else None) if promises else None,
        "guarantee_breaches": len(engine.breaches) if promises else None,
        "teams": teams,
        "replay_seconds": round(seconds, 2),
        **_expected(engine),
    }


def summarise_lending(engine: Engine, setup: SimSetup, lent: Lent, seconds: float) -> dict[str, object]:
    """:func:`summarise` of the guaranteed replay ``engine`` (``setup`` without best-effort
    jobs, ``seconds`` its replay time), with the best-effort work ``lent`` added: utilisation
    and makespan over both, and the best-effort keys (docs/simulate.md, Lending)."""
    m = summarise(engine, setup, seconds + lent.seconds)
    gbusy = sum(j.gpus * (engine.end[j.seq] - engine.start[j.seq]) for j in engine.jobs if engine.start[j.seq] >= 0)
    be = lent.jobs
    first = min([j.submit for j in engine.jobs[:1]] + [j.submit for j in be[:1]], default=0)
    last = max([e for e in engine.end if e >= 0] + [e for e in lent.done_at if e >= 0], default=first)
    span = max(1, last - first)
    cap = engine.capacity * span
    waits = sorted(s - j.submit for j, s in zip(be, lent.first_start) if s >= 0)
    turns = sorted(d - j.submit for j, d in zip(be, lent.done_at) if d >= 0)
    m.update({
        "utilisation": round((gbusy + lent.held) / cap, 4),
        "utilisation_guaranteed": round(gbusy / cap, 4),
        "useful_utilisation": round((gbusy + lent.completed) / cap, 4),
        "makespan_s": last - first,
        "best_effort_jobs": len(be),
        "best_effort_done": len(turns),
        "best_effort_refused": len(lent.refused),
        "checkpoint_interval_s": lent.checkpoint_interval,
        "best_effort_completed_gpu_hours": round(lent.completed / 3600, 3),
        "best_effort_held_gpu_hours": round(lent.held / 3600, 3),
        "lost_gpu_hours": round(lent.lost / 3600, 3),
        "preemptions": lent.preemptions,
        "preempted_jobs": sum(1 for a in lent.attempts if a > 1),
        "best_effort_wait_mean_s": round(sum(waits) / len(waits), 1) if waits else 0.0,
        "best_effort_wait_p50_s": round(percentile(waits, 0.50), 1),
        "best_effort_wait_p95_s": round(percentile(waits, 0.95), 1),
        "best_effort_turnaround_p50_s": round(percentile(turns, 0.50), 1),
        "best_effort_turnaround_p95_s": round(percentile(turns, 0.95), 1),
        "lending_seconds": round(lent.seconds, 2),
    })
    return m


def _expected(engine: Engine) -> dict[str, object]:
    """How good the expected start was (``cellsched`` with ``expect_every``): sim/expect.py."""
    pol = engine.policy
    samples = getattr(pol, "expected", None)
    if not getattr(pol, "expect_every", 0) or samples is None:
        return {}
    from cellsched.sim.expect import accuracy

    return {"expected_start": {**accuracy(samples, engine.start), "every": pol.expect_every,
                               "estimate_seconds": round(pol.expect_seconds, 2)}}


def wait_list(engine: Engine) -> list[int]:
    return sorted(engine.start[j.seq] - j.submit for j in engine.jobs if engine.start[j.seq] >= 0)


def busy_over_time(engine: Engine, points: int = 400, lent: Lent | None = None) -> tuple[list[float], list[float]]:
    """(hours since first submission, fraction of GPUs busy) sampled on a regular grid; with
    ``lent``, GPUs held by best-effort work count as busy."""
    events: list[tuple[int, int]] = []
    for j in engine.jobs:
        s = engine.start[j.seq]
        if s >= 0:
            events.append((s, j.gpus))
            events.append((engine.end[j.seq], -j.gpus))
    if lent is not None:
        for i, s, e, _, _ in lent.segments:
            events.append((s, lent.jobs[i].gpus))
            events.append((e, -lent.jobs[i].gpus))
    if not events:
        return [], []
    events.sort()
    t0 = min([j.submit for j in engine.jobs[:1]] + ([j.submit for j in lent.jobs[:1]] if lent else []))
    t1 = events[-1][0]
    step = max(1, (t1 - t0) // points)
    xs, ys = [], []
    busy = 0
    k = 0
    for i in range(points + 1):
        t = t0 + i * step
        while k < len(events) and events[k][0] <= t:
            busy += events[k][1]
            k += 1
        xs.append((t - t0) / 3600)
        ys.append(busy / engine.capacity)
    return xs, ys
