"""Run one or more policies over one setup and collect their metrics.

A trace with best-effort jobs is replayed in two passes (``sim/lending.py``): its guaranteed
jobs through the policy, exactly as the trace without the best-effort rows, then the
best-effort queue on the GPUs that schedule leaves idle."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cellsched.sim.engine import Engine
from cellsched.sim.lending import Lent, lend
from cellsched.sim.metrics import summarise, summarise_lending
from cellsched.sim.policies import make
from cellsched.sim.setup import SimSetup


@dataclass
class Replay:
    policy: str
    engine: Engine  # the guaranteed jobs' replay (every job's, without best-effort work)
    metrics: dict[str, object]
    lent: Lent | None = None  # what the best-effort jobs did, when the trace has some


def replay(
    setup: SimSetup,
    policy: str,
    progress: Callable[[int], None] | None = None,
) -> Replay:
    """Replay the whole trace through one policy, on a fresh cluster."""
    if setup.lends:
        return replay_lending(setup, policy, progress)
    pol = make(policy, setup)
    engine = Engine(setup.trace.jobs, setup.gpus, pol, setup.nodes)
    t0 = time.perf_counter()
    engine.run(progress)
    seconds = time.perf_counter() - t0
    return Replay(policy, engine, summarise(engine, setup, seconds))


def replay_lending(
    setup: SimSetup,
    policy: str,
    progress: Callable[[int], None] | None = None,
) -> Replay:
    """The guaranteed jobs through ``policy``, then best-effort work lent their idle GPUs
    (with ``setup.checkpoint_interval``)."""
    g = setup.guaranteed()
    engine = Engine(g.trace.jobs, g.gpus, make(policy, g), g.nodes)
    t0 = time.perf_counter()
    engine.run(progress)
    seconds = time.perf_counter() - t0
    be = setup.trace.best_effort_jobs()
    lent = lend(engine, be, setup.nodes, setup.checkpoint_interval)
    metrics = summarise_lending(engine, g, lent, seconds)
    if progress is not None:
        progress(len(setup.trace.jobs))
    return Replay(policy, engine, metrics, lent)


def replay_all(
    setup: SimSetup,
    policies: Sequence[str],
    progress: Callable[[str, int], None] | None = None,
) -> list[Replay]:
    out = []
    for p in policies:
        cb = None if progress is None else (lambda n, p=p: progress(p, n))
        out.append(replay(setup, p, cb))
    return out
