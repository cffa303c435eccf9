"""Run one or more policies over one setup and collect their metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cellsched.sim.engine import Engine
from cellsched.sim.metrics import summarise
from cellsched.sim.policies import make
from cellsched.sim.setup import SimSetup


@dataclass
class Replay:
    policy: str
    engine: Engine
    metrics: dict[str, object]


def replay(
    setup: SimSetup,
    policy: str,
    progress: Callable[[int], None] | None = None,
) -> Replay:
    """Replay the whole trace through one policy, on a fresh cluster."""
    pol = make(policy, setup)
    engine = Engine(setup.trace.jobs, setup.gpus, pol, setup.nodes)
    t0 = time.perf_counter()
    engine.run(progress)
    seconds = time.perf_counter() - t0
    return Replay(policy, engine, summarise(engine, setup, seconds))


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
