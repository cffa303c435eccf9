"""Metrics of one replay: what the ``simulate`` table and ``--json`` show.

Waits count jobs that ran; utilisation is busy GPU-seconds over capacity x the busy span
(first submission to last end); bounded slowdown uses a 10 s bound; Jain's index is taken
over teams of (share of GPU-time used) / (share of allowance).
"""

from __future__ import annotations

from cellsched.sim.engine import Engine
from cellsched.sim.setup import SimSetup

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
    for j in jobs:
        s = start[j.seq]
        if s < 0:
            continue
        run = end[j.seq] - s
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
    first = min((j.submit for j in jobs), default=0)
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


def busy_over_time(engine: Engine, points: int = 400) -> tuple[list[float], list[float]]:
    """(hours since first submission, fraction of GPUs busy) sampled on a regular grid."""
    events: list[tuple[int, int]] = []
    for j in engine.jobs:
        s = engine.start[j.seq]
        if s >= 0:
            events.append((s, j.gpus))
            events.append((engine.end[j.seq], -j.gpus))
    if not events:
        return [], []
    events.sort()
    t0 = min(j.submit for j in engine.jobs)
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
