"""Small builders for simulator tests: traces as tables of rows, clusters in one line."""

from __future__ import annotations

from cellsched.sim.engine import Engine
from cellsched.sim.policies import make
from cellsched.sim.setup import SimSetup, build_setup
from cellsched.sim.trace import Trace, TraceJob
from cellsched.spec.cluster import ClusterConfig, Pool, Team


def trace(*rows: tuple) -> Trace:
    """Rows of (submit, duration, gpus[, requested[, team]]); requested defaults to duration."""
    jobs = []
    for i, r in enumerate(rows):
        submit, duration, gpus = r[:3]
        requested = r[3] if len(r) > 3 else duration
        team = r[4] if len(r) > 4 else "a"
        jobs.append(TraceJob(i, f"j{i}", submit, duration, gpus, team, requested))
    jobs.sort(key=lambda j: (j.submit, j.seq))
    jobs = [TraceJob(k, j.job_id, j.submit, j.duration, j.gpus, j.team, j.requested) for k, j in enumerate(jobs)]
    return Trace("test", jobs)


def cluster(gpus: int, teams: dict[str, float] | None = None, per_node: int | None = None) -> ClusterConfig:
    """One pool of ``gpus`` on nodes of ``per_node`` (default: one node, the flat case)."""
    # One node of more than 1,024 GPUs is past what a cluster file accepts: built directly.
    pool = Pool.model_construct(name="p", gpu_type="g", gpus=gpus, gpus_per_node=per_node or gpus)
    return ClusterConfig(
        pools=(pool,),
        teams=tuple(Team(name=n, allowance_gpu_hours=h, period="none") for n, h in (teams or {}).items()),
    )


def setup(tr: Trace, gpus: int, teams: dict[str, float] | None = None, scale: float = 1.0,
          per_node: int | None = None) -> SimSetup:
    return build_setup(tr, cluster(gpus, teams, per_node), allowance_scale=scale)


def run(policy: str, st: SimSetup, **kw) -> Engine:  # noqa: ANN003
    if policy == "cellsched" and kw:
        from cellsched.sim.policies.cellsched import Cellsched

        pol = Cellsched(st, **kw)
    else:
        pol = make(policy, st)
    e = Engine(st.trace.jobs, st.gpus, pol, st.nodes)
    e.run()
    return e


def starts(e: Engine) -> list[int]:
    return list(e.start)
