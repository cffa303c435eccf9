"""Cluster config (``cluster.toml``): pools, teams and their allowances, admins, policy."""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cellsched.spec.models import Name, raise_problems

Period = Literal["month", "quarter", "year", "none"]
PullForward = Literal["start_now", "hold_oldest", "hold_when_busy", "compact"]
PULL_FORWARD_RULES: tuple[str, ...] = get_args(PullForward)  # docs/admission.md


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# Like specs: a count written as "16", 16.0 or true is a mistake, not something to coerce.
def _whole(v: Any) -> Any:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise ValueError("must be a whole number")
    return v


def _number(v: Any) -> Any:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise ValueError("must be a number")
    return v


class Pool(_Frozen):
    """A set of identical GPUs admission treats as one capacity calendar."""

    name: Name
    gpu_type: str = Field(min_length=1, max_length=64)
    gpus: int = Field(ge=1, le=1_000_000)
    gpus_per_node: int = Field(default=8, ge=1, le=1024)
    # Which Ray nodes are this pool's (docs/cluster-setup.md): nodes carrying the label
    # ``key=value``, or declaring the custom resource ``node_resource`` (one unit per GPU);
    # neither: nodes whose ``ray.io/accelerator-type`` label is ``gpu_type``.
    node_label: str | None = Field(default=None, max_length=256)
    node_resource: str | None = Field(default=None, max_length=128)

    _counts = field_validator("gpus", "gpus_per_node", mode="before")(_whole)

    @field_validator("node_label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9._/-]+=[A-Za-z0-9._-]+", v):
            raise ValueError("must be key=value (letters, digits, . _ - and / in the key)")
        return v

    @field_validator("node_resource")
    @classmethod
    def _resource(cls, v: str | None) -> str | None:
        if v is not None and (not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", v)
                              or v in ("CPU", "GPU", "memory", "object_store_memory")):
            raise ValueError("must be the name of a custom Ray resource (not CPU or GPU)")
        return v

    @model_validator(mode="after")
    def _nodes(self) -> Pool:
        problems = []
        if self.gpus_per_node > self.gpus:
            problems.append("gpus_per_node: more than the pool's gpus")
        if self.node_label is not None and self.node_resource is not None:
            problems.append("node_label: give node_label or node_resource, not both")
        raise_problems(problems)
        return self


class Team(_Frozen):
    """A team: who is in it and how many GPU-hours it may commit per period."""

    name: Name
    members: tuple[str, ...] = Field(default=(), description="user names")
    allowance_gpu_hours: float = Field(ge=0, le=1e12)
    period: Period = "month"
    max_gpus: int | None = Field(default=None, ge=1)
    # GPU-hours of best-effort work (docs/lending.md) the team may be charged per period, on
    # top of its guaranteed allowance; 0: the team cannot borrow idle GPUs (opt-in per team).
    best_effort_gpu_hours: float = Field(default=0, ge=0, le=1e12)

    _allowance = field_validator("allowance_gpu_hours", "best_effort_gpu_hours", mode="before")(_number)
    _counts = field_validator("max_gpus", mode="before")(_whole)

    @property
    def allowance_gpu_seconds(self) -> int:
        return round(self.allowance_gpu_hours * 3600)

    @property
    def best_effort_gpu_seconds(self) -> int:
        return round(self.best_effort_gpu_hours * 3600)


class Policy(_Frozen):
    """Knobs an admin turns: longest grant, notice before a start, grace before a kill."""

    max_grant_hours: float | None = Field(default=None, gt=0)
    min_notice_s: int = Field(default=0, ge=0)
    grace_s: int = Field(default=60, ge=0)
    horizon_days: int = Field(default=366, ge=1, le=3660)
    # Lending idle GPUs to best-effort work (docs/lending.md): the cluster-wide switch (only
    # teams with best_effort_gpu_hours borrow anyway), GPU-seconds charged per GPU-second a
    # borrower holds, and the longest a preempted borrower gets between SIGTERM and SIGKILL.
    lend_idle: bool = True
    best_effort_rate: float = Field(default=1.0, gt=0, le=1000)
    lend_grace_s: int = Field(default=30, ge=0, le=3600)
    # How waiting grants use freed GPUs (docs/admission.md): start_now, hold_oldest
    # (start_now, the oldest waiting grant first holding its place), hold_when_busy (default:
    # the same while at least 3 h of work waits), compact.
    pull_forward: PullForward = "hold_when_busy"
    # Variables of the Ray workers' environment jobs also get (docs/executor.md: the rest is
    # an allowlist). Never the daemon's own CELLSCHED_* settings (the ledger's URL).
    pass_env: tuple[str, ...] = Field(default=(), description="environment variable names")

    _hours = field_validator("max_grant_hours", "best_effort_rate", mode="before")(_number)
    _seconds = field_validator("min_notice_s", "grace_s", "horizon_days", "lend_grace_s", mode="before")(_whole)

    @field_validator("lend_idle", mode="before")
    @classmethod
    def _flag(cls, v: Any) -> Any:
        if not isinstance(v, bool):
            raise ValueError("must be true or false")
        return v

    @field_validator("pass_env")
    @classmethod
    def _env_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, name in enumerate(v):
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"{i}: {name!r} is not an environment variable name")
            if name.upper().startswith("CELLSCHED_"):
                raise ValueError(f"{i}: {name!r}: the daemon's own settings are never passed to jobs")
        return v

    @property
    def max_grant_s(self) -> int:
        """The longest window one grant may hold: ``max_grant_hours``, else the horizon. A
        window far longer than admission looks ahead would only hold GPUs beyond any plan,
        and each hour of it is an hour of the node calendars' index (a 1-GPU window of
        10,000,000 GPU-hours made every admission snapshot cost ~40 s and 1.6 GB)."""
        if self.max_grant_hours is None:
            return self.horizon_days * 86400
        return round(self.max_grant_hours * 3600)


class ClusterConfig(_Frozen):
    """The whole cluster as the admin declares it."""

    pools: tuple[Pool, ...] = Field(min_length=1)
    teams: tuple[Team, ...] = ()
    admins: tuple[str, ...] = Field(default=(), description="user names")
    policy: Policy = Policy()

    @model_validator(mode="after")
    def _unique(self) -> ClusterConfig:
        problems = []
        for kind, names in (("pools", [p.name for p in self.pools]), ("teams", [t.name for t in self.teams])):
            seen: set[str] = set()
            for i, n in enumerate(names):
                if n in seen:
                    problems.append(f"{kind}.{i}.name: duplicate name {n!r}")
                seen.add(n)
        raise_problems(problems)
        return self

    def pool(self, name: str) -> Pool | None:
        return next((p for p in self.pools if p.name == name), None)

    def team(self, name: str) -> Team | None:
        return next((t for t in self.teams if t.name == name), None)
