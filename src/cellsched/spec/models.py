"""Project specs: what a team lead writes, validated and frozen.

A spec is the user's words; :mod:`cellsched.spec.seal` turns it into canonical JSON and a
digest. All quantities are exposed in integer units (seconds, GPU-seconds) for the core.
"""

from __future__ import annotations

import datetime as dt
import math
import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

NAME_MAX = 63
COUNT_MAX = 10_000  # runs of one best-effort job ("64 independent one-GPU trials")
# Tasks of one best-effort spec in all (the jobs' count, summed): each is a ledger row written
# under the ledger's write lock, so one spec's submit must stay cheap for the other teams.
TASKS_MAX = 10_000
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Problems(ValueError):
    """Several problems one validator found, each ``field: words``; the loader shows each
    (``spec/load.py``). With one problem it reads as a plain ``ValueError``."""

    def __init__(self, items: list[str]) -> None:
        super().__init__("; ".join(items))
        self.items = list(items)


def raise_problems(items: list[str]) -> None:
    if items:
        raise Problems(items)


def check_name(value: str) -> str:
    """A name that becomes a file name, a Ray name and a CLI argument: no paths, no spaces."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > NAME_MAX:
        raise ValueError(f"at most {NAME_MAX} characters, got {len(value)}")
    if ".." in value or not _NAME_RE.fullmatch(value):
        raise ValueError(
            "use letters, digits, '-', '_' and '.', starting with a letter or digit "
            "(no '/', '..', spaces or control characters)"
        )
    return value


Name = Annotated[str, AfterValidator(check_name)]


def _one_or_many(v: Any) -> Any:
    """One string where a list is expected stands for a list of one."""
    return (v,) if isinstance(v, str) else v


OneOrMany = BeforeValidator(_one_or_many)


def _whole(v: Any) -> Any:
    # Counts are whole numbers as written: 8, not 8.0, "8" or true (bool is an int subclass).
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("must be a whole number")
    return v


Whole = Annotated[int, BeforeValidator(_whole)]


def to_utc(value: dt.datetime | dt.date) -> dt.datetime:
    """Times without a zone are UTC by rule; times are whole seconds."""
    if not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    try:
        value = value.astimezone(dt.timezone.utc)
    except OverflowError:
        raise ValueError("out of range (years 1 to 9999, in UTC)") from None
    if value.microsecond:
        raise ValueError("times are whole seconds")
    return value


def epoch(value: dt.datetime) -> int:
    return int(value.timestamp())


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


class Budget(_Frozen):
    """The GPU budget: total GPU-hours, the width held together, where and when."""

    gpu_hours: float = Field(gt=0, le=10_000_000)
    gpus: Whole = Field(ge=1, le=100_000)
    pool: Name | None = None
    gpu_type: str | None = Field(default=None, min_length=1, max_length=64)
    not_before: dt.datetime | None = None
    deadline: dt.datetime | None = None

    @field_validator("gpu_hours", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError("must be a number")
        try:
            finite = math.isfinite(v)
        except OverflowError:
            raise ValueError("too large (at most 10000000)") from None
        if not finite:
            raise ValueError("must be finite")
        return v

    @field_validator("gpu_hours")
    @classmethod
    def _whole_gpu_seconds(cls, v: float) -> float:
        # The seal keeps integer GPU-seconds; keeping the same quantity here makes a spec
        # rebuilt from its sealed JSON equal to the one that was sealed.
        return round(v * 3600) / 3600

    @field_validator("not_before", "deadline", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        if isinstance(v, (dt.date, dt.datetime)):
            return to_utc(v)
        if isinstance(v, str):
            try:
                parsed = dt.datetime.fromisoformat(v.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise ValueError("must be a time like 2026-12-01T00:00:00Z") from None
            return to_utc(parsed)
        if v is None:
            return v
        raise ValueError("must be a time like 2026-12-01T00:00:00Z")

    @property
    def gpu_seconds(self) -> int:
        return round(self.gpu_hours * 3600)

    @property
    def duration_s(self) -> int:
        """Window length: GPU-seconds spread over the width, rounded up to a whole second."""
        return -(-self.gpu_seconds // self.gpus)

    @property
    def not_before_s(self) -> int | None:
        return None if self.not_before is None else epoch(self.not_before)

    @property
    def deadline_s(self) -> int | None:
        return None if self.deadline is None else epoch(self.deadline)

    @model_validator(mode="after")
    def _window(self) -> Budget:
        problems = []
        if self.gpu_seconds < 1:
            problems.append("gpu_hours: must be at least one GPU-second")
        if self.pool is not None and self.gpu_type is not None:
            problems.append("pool: give pool or gpu_type, not both")
        if self.not_before is not None and self.deadline is not None:
            room = epoch(self.deadline) - epoch(self.not_before)
            if self.not_before >= self.deadline:
                problems.append("not_before: must be before the deadline")
            elif self.gpu_seconds >= 1 and room < self.duration_s:
                problems.append(
                    f"deadline: window of {room} s is shorter than gpu_hours / gpus "
                    f"= {self.duration_s} s"
                )
        raise_problems(problems)
        return self


class Job(_Frozen):
    """One step of the project: a gang of ``gpus`` one-GPU ranks running ``run``."""

    name: Name
    run: list[str] | str
    gpus: Whole = Field(default=1, ge=1, le=100_000)
    cpus: Whole = Field(default=0, ge=0, le=1024)
    after: Annotated[tuple[Name, ...], OneOrMany] = Field(default=(), description="job names")
    retries: Whole = Field(default=0, ge=0, le=100)
    env: dict[str, str] = Field(default_factory=dict)
    # Independent runs of the job (best-effort work only): each is a task of its own,
    # queued, run, preempted and retried on its own (docs/lending.md).
    count: Whole = Field(default=1, ge=1, le=COUNT_MAX)

    @field_validator("run", mode="before")
    @classmethod
    def _run(cls, v: Any) -> Any:
        items = [v] if isinstance(v, str) else v
        if (
            not isinstance(items, (list, tuple))
            or not items
            or not all(isinstance(s, str) for s in items)
            or not items[0].strip()
        ):
            raise ValueError("must be a command: an argv list or a shell string")
        if any("\x00" in s for s in items):
            raise ValueError("must not contain NUL characters")
        return v if isinstance(v, str) else list(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not _ENV_KEY_RE.fullmatch(key):
                raise ValueError(f"{key!r} is not an environment variable name")
            if "\x00" in value:
                raise ValueError(f"{key}: must not contain NUL characters")
        return v

    @field_validator("after")
    @classmethod
    def _after_set(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(sorted(set(v)))


def _relative(value: str, inside: bool) -> str:
    """A relative POSIX path, normalised (``""`` and ``./`` are ``.``); ``inside`` forbids ``..``."""
    if "\x00" in value or "\\" in value:
        raise ValueError("must be a plain path (no NUL, no backslashes)")
    if value.startswith(("/", "~")):
        raise ValueError("must be a relative path")
    norm = posixpath.normpath(value or ".")
    if inside and (norm == "." or norm.split("/")[0] == ".."):
        raise ValueError("must be a file inside the code (no '..')")
    return norm


class Code(_Frozen):
    """The project's code, snapshotted at submit (:mod:`cellsched.spec.code`): a directory
    relative to the spec file, or a git repository at a commit. ``digest`` is the snapshot's,
    written by the seal (a spec file may not set it)."""

    dir: str | None = Field(default=None, max_length=4096)
    git: str | None = Field(default=None, min_length=1, max_length=4096)
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{4,64}$")
    exclude: Annotated[tuple[str, ...], OneOrMany] = Field(default=(), max_length=1000, description="patterns")
    max_mib: Whole = Field(default=100, ge=1, le=512)  # the archive is one ledger value (≤ 1 GB)
    requirements: str | None = Field(default=None, min_length=1, max_length=4096)
    digest: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("dir")
    @classmethod
    def _dir(cls, v: str | None) -> str | None:
        return None if v is None else _relative(v, inside=False)

    @field_validator("requirements")
    @classmethod
    def _requirements(cls, v: str | None) -> str | None:
        return None if v is None else _relative(v, inside=True)

    @field_validator("git")
    @classmethod
    def _git(cls, v: str | None) -> str | None:
        if v is not None and ("\x00" in v or not v.strip() or v != v.strip()):
            raise ValueError("must be a repository path or URL")
        return v

    @field_validator("exclude")
    @classmethod
    def _exclude(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from cellsched.executor._codepack import Excludes, PackError  # lazy

        patterns = tuple(sorted({p.strip() for p in v}))  # no negation, so order carries no meaning
        try:
            Excludes(patterns)
        except PackError as e:
            raise ValueError(str(e)) from None
        return patterns

    @field_validator("digest")
    @classmethod
    def _sealed_only(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None and not (info.context or {}).get("sealed"):
            raise ValueError("is written by the seal, not in a spec file")
        return v

    @model_validator(mode="after")
    def _source(self) -> Code:
        problems = []
        if self.git is None:
            if self.commit is not None:
                problems.append("commit: only with git")
            if self.dir is None:
                object.__setattr__(self, "dir", ".")  # the default: the spec file's directory
        else:
            if self.dir is not None:
                problems.append("dir: give dir or git, not both")
            if self.commit is None:
                problems.append("commit: required with git (a commit's SHA)")
        raise_problems(problems)
        return self


Kind = Literal["guaranteed", "best-effort"]


class ProjectSpec(_Frozen):
    """A project: one team, one problem, one budget, jobs run in ``after`` order.

    ``kind = "best-effort"``: no window and no guarantee; its jobs' tasks (``count`` runs of
    each) run on idle GPUs, may be preempted, and are charged to the team's best-effort
    allowance (docs/lending.md). Such a spec has no ``not_before``, ``deadline`` or
    ``replaces`` (best-effort work has no window) and no ``after`` (its tasks are
    independent); ``count`` > 1 is for best-effort work only."""

    name: Name
    team: Name
    kind: Kind = "guaranteed"
    owner: str = Field(min_length=1, max_length=128)
    problem: str = Field(min_length=1, max_length=8000)
    replaces: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*@[0-9a-f]{6,64}$")
    notify: str | None = Field(default=None, min_length=1, max_length=2000)
    budget: Budget
    jobs: tuple[Job, ...] = Field(min_length=1, max_length=1000)
    code: Code | None = None

    @field_validator("owner", "problem", "notify")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        # Stored as text columns too, and PostgreSQL's text cannot hold NUL.
        if v is not None and "\x00" in v:
            raise ValueError("must not contain NUL characters")
        return v

    @property
    def best_effort(self) -> bool:
        return self.kind == "best-effort"

    @model_validator(mode="after")
    def _jobs(self) -> ProjectSpec:
        problems = self._kind_problems()
        names: list[str] = [j.name for j in self.jobs]
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                problems.append(f"jobs.{i}.name: duplicate job name {name!r}")
            seen.add(name)
        for i, job in enumerate(self.jobs):
            if job.gpus > self.budget.gpus:
                problems.append(f"jobs.{i}.gpus: {job.gpus} is more than budget.gpus = {self.budget.gpus}")
            for dep in job.after:
                if dep not in seen:
                    problems.append(f"jobs.{i}.after: no job named {dep!r}")
                if dep == job.name:
                    problems.append(f"jobs.{i}.after: {job.name!r} cannot wait for itself")
        if not problems:  # a cycle means something only among unique, existing names
            cycle = find_cycle({j.name: j.after for j in self.jobs})
            if cycle:
                problems.append("jobs.after: cycle " + " -> ".join(cycle))
        raise_problems(problems)
        return self

    def _kind_problems(self) -> list[str]:
        """What a spec of this kind may not say (one line per field)."""
        problems = []
        if self.best_effort:
            no_window = "best-effort work has no window (it runs on idle GPUs when there are some)"
            if self.replaces is not None:
                problems.append("replaces: best-effort work has no window to replace "
                                "(cancel the old submission, then submit this one)")
            if self.budget.not_before is not None:
                problems.append(f"budget.not_before: {no_window}")
            if self.budget.deadline is not None:
                problems.append(f"budget.deadline: {no_window}")
            for i, job in enumerate(self.jobs):
                if job.after:
                    problems.append(f"jobs.{i}.after: best-effort tasks are independent, so no after "
                                    "(submit a later step as its own spec)")
            tasks = sum(job.count for job in self.jobs)
            if tasks > TASKS_MAX:
                problems.append(f"jobs: {tasks:,} tasks (the jobs' count, summed); a best-effort spec makes at "
                                f"most {TASKS_MAX:,}")
        else:
            if self.replaces is not None and self.replaces.partition("@")[0] != self.name:
                problems.append(f"replaces: {self.replaces!r} names another project (this one is {self.name!r}; "
                                "a new version keeps its name)")
            for i, job in enumerate(self.jobs):
                if job.count != 1:
                    problems.append(f"jobs.{i}.count: only best-effort work runs a job several times "
                                    '(kind = "best-effort")')
        return problems

    def tasks(self) -> list[tuple[Job, int]]:
        """A best-effort spec's tasks, in order: each job (in the spec's order) ``count`` times,
        as ``(job, index)``."""
        return [(job, i) for job in self.jobs for i in range(job.count)]

    def job_order(self) -> list[Job]:
        """Jobs in a deterministic topological order (ties by position in the spec)."""
        done: set[str] = set()
        order: list[Job] = []
        pending = list(self.jobs)
        while pending:
            ready = next(j for j in pending if all(d in done for d in j.after))
            order.append(ready)
            done.add(ready.name)
            pending.remove(ready)
        return order


def find_cycle(graph: dict[str, tuple[str, ...]]) -> list[str] | None:
    """Return one cycle in ``after`` edges as a list of names (first == last), or None."""
    remaining = dict(graph)
    changed = True
    while changed:
        changed = False
        for node, deps in list(remaining.items()):
            if not any(d in remaining for d in deps):
                del remaining[node]
                changed = True
    if not remaining:
        return None
    # Every remaining node waits for another remaining node: walk until a name repeats.
    path: list[str] = []
    node = next(iter(remaining))
    while node not in path:
        path.append(node)
        node = next(d for d in remaining[node] if d in remaining)
    return path[path.index(node):] + [node]
