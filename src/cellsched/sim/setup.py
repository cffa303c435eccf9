"""What one simulation replays: the trace, and the cluster sized and staffed for it.

``--gpus N`` replaces the cluster's pools with one pool of N GPUs (named after the first
pool). When the cluster file names no teams, every trace team gets an allowance equal to the
GPU-hours its guaranteed jobs request in the trace, for the whole replay (period ``none``),
so the whole trace is admissible; ``--allowance-scale`` multiplies every allowance (configured
or default). Best-effort jobs are charged to no guaranteed allowance, so a trace and the same
trace with its best-effort rows removed give the same cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from cellsched.sim.limits import check_options
from cellsched.sim.placement import NodeMap
from cellsched.sim.trace import Trace
from cellsched.spec.cluster import ClusterConfig, Pool, Team


@dataclass(frozen=True)
class SimSetup:
    trace: Trace
    cluster: ClusterConfig
    expect_every: int = 0  # cellsched: the expected start of every n-th waiting job (sim/expect.py)
    checkpoint_interval: int = 0  # best-effort work: seconds between checkpoints (0: none; sim/lending.py)

    @property
    def lends(self) -> bool:
        """Whether the trace has best-effort jobs (the replay lends them idle GPUs)."""
        return any(j.best_effort for j in self.trace.jobs)

    def guaranteed(self) -> SimSetup:
        """The same setup with the best-effort jobs removed (the trace renumbered)."""
        return SimSetup(self.trace.guaranteed(), self.cluster, self.expect_every, self.checkpoint_interval)

    @property
    def gpus(self) -> int:
        return sum(p.gpus for p in self.cluster.pools)

    @property
    def nodes(self) -> NodeMap:
        """The cluster's nodes, numbered pool after pool (what every policy places on)."""
        return NodeMap.of(self.cluster)

    def allowance_shares(self) -> dict[str, float]:
        """Each team's allowance as a fraction of all allowances (config order)."""
        total = sum(t.allowance_gpu_seconds for t in self.cluster.teams)
        if total <= 0:
            return {t.name: 0.0 for t in self.cluster.teams}
        return {t.name: t.allowance_gpu_seconds / total for t in self.cluster.teams}


def build_setup(
    trace: Trace,
    cluster: ClusterConfig,
    gpus: int | None = None,
    allowance_scale: float = 1.0,
    expect_every: int = 0,
    checkpoint_interval: int = 0,
) -> SimSetup:
    check_options(gpus=gpus, allowance_scale=allowance_scale, expect_every=expect_every,
                  checkpoint_interval=checkpoint_interval)
    pools = cluster.pools
    if gpus is not None:
        first = pools[0]
        pools = (Pool.model_construct(
            name=first.name, gpu_type=first.gpu_type, gpus=gpus,
            gpus_per_node=min(first.gpus_per_node, gpus),
        ),)
    if cluster.teams:
        teams = tuple(
            t.model_copy(update={"allowance_gpu_hours": t.allowance_gpu_hours * allowance_scale})
            for t in cluster.teams
        )
    else:
        asked = trace.requested_gpu_seconds()
        # Names come from the trace, not from a person: they are only keys here, so they
        # skip the Name check that a cluster file's team names get.
        teams = tuple(
            Team.model_construct(
                name=name, members=(), period="none", max_gpus=None,
                allowance_gpu_hours=asked[name] * allowance_scale / 3600,
            )
            for name in asked  # teams with guaranteed jobs, in order of first appearance
        )
    sim = ClusterConfig.model_construct(pools=pools, teams=teams, admins=cluster.admins, policy=cluster.policy)
    return SimSetup(trace, sim, expect_every, checkpoint_interval)
