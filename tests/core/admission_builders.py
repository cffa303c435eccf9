"""Small builders for admission tests, Kueue style: ``cluster().pool("h100", 16).team(...)``
and ``req("p").gpus(8).hours(96).deadline(...)``. Plain data in, the real core out; no mocks."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from typing import Any

from cellsched.core.admission import Grant, Refusal, Request, Schedule
from cellsched.spec.cluster import ClusterConfig, Policy, Pool, Team

H = 3600
DAY = 86400
# 2026-12-01 00:00 UTC: a month start, so period arithmetic in tests is easy to read.
T0 = int(dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc).timestamp())
JAN = int(dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc).timestamp())


def at(*args: int) -> int:
    """Epoch seconds of a UTC wall time: ``at(2026, 12, 31, 20)``."""
    return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp())  # type: ignore[misc]


@dataclass
class ClusterBuilder:
    pools: list[Pool] = field(default_factory=list)
    teams: list[Team] = field(default_factory=list)
    policy_kw: dict[str, Any] = field(default_factory=dict)
    admins: tuple[str, ...] = ()

    def pool(self, name: str, gpus: int, gpu_type: str | None = None, per_node: int | None = None) -> ClusterBuilder:
        """A pool of ``gpus`` on nodes of ``per_node`` (default: one node, the flat case)."""
        self.pools.append(Pool(name=name, gpu_type=gpu_type or name.upper(), gpus=gpus,
                               gpus_per_node=per_node or gpus))
        return self

    def team(self, name: str, hours: float = 1e6, max_gpus: int | None = None, period: str = "month",
             members: tuple[str, ...] = ()) -> ClusterBuilder:
        self.teams.append(Team(name=name, allowance_gpu_hours=hours, max_gpus=max_gpus, period=period,  # type: ignore[arg-type]
                               members=members))
        return self

    def policy(self, **kw: Any) -> ClusterBuilder:
        self.policy_kw.update(kw)
        return self

    def build(self) -> ClusterConfig:
        return ClusterConfig(pools=tuple(self.pools), teams=tuple(self.teams), admins=self.admins,
                             policy=Policy(**self.policy_kw))

    def schedule(self) -> Schedule:
        return Schedule.empty(self.build())


def cluster() -> ClusterBuilder:
    return ClusterBuilder()


@dataclass(frozen=True)
class ReqBuilder:
    r: Request

    def team(self, team: str) -> ReqBuilder:
        return ReqBuilder(replace(self.r, team=team))

    def gpus(self, n: int) -> ReqBuilder:
        return ReqBuilder(replace(self.r, width=n))

    def hours(self, gpu_hours: float) -> ReqBuilder:
        return ReqBuilder(replace(self.r, gpu_seconds=round(gpu_hours * H)))

    def gpu_seconds(self, gs: int) -> ReqBuilder:
        return ReqBuilder(replace(self.r, gpu_seconds=gs))

    def pool(self, pool: str) -> ReqBuilder:
        return ReqBuilder(replace(self.r, pool=pool))

    def gpu_type(self, gpu_type: str) -> ReqBuilder:
        return ReqBuilder(replace(self.r, gpu_type=gpu_type))

    def not_before(self, t: int) -> ReqBuilder:
        return ReqBuilder(replace(self.r, not_before=t))

    def deadline(self, t: int) -> ReqBuilder:
        return ReqBuilder(replace(self.r, deadline=t))

    def build(self) -> Request:
        return self.r


def req(project: str, team: str = "interp") -> ReqBuilder:
    """One GPU for one GPU-hour of team ``interp`` until told otherwise."""
    return ReqBuilder(Request(project=project, team=team, width=1, gpu_seconds=H))


def grant(project: str, team: str, pool: str, width: int, start: int, end: int) -> Grant:
    return Grant(project, team, pool, width, start, end)


def admit_commit(sched: Schedule, r: ReqBuilder | Request, now: int) -> Grant:
    """Admit and commit a request that the test expects to be granted."""
    request = r.build() if isinstance(r, ReqBuilder) else r
    out = sched.admit(request, now)
    assert isinstance(out, Grant), out
    sched.commit(out)
    return out


def decide(sched: Schedule, r: ReqBuilder | Request, now: int) -> Grant | Refusal:
    return sched.admit(r.build() if isinstance(r, ReqBuilder) else r, now)
