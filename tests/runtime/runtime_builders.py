"""Builders for runtime tests: specs in a line, and a reconciler on the in-memory twin."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlmodel import col, select

from cellsched import service
from cellsched.executor import Behaviour, MemoryExecutor
from cellsched.ledger.tables import EventRow, GrantRow, GrantRuntimeRow, JobRunRow
from cellsched.runtime.reconciler import Reconciler, Settings
from cellsched.service import Env
from cellsched.spec.models import ProjectSpec

T0 = 1_800_000_000  # a fixed instant (2027): every test runs on the same virtual clock
ADMIN = "root-admin"


def job(name: str, gpus: int = 1, after: tuple[str, ...] = (), retries: int = 0,
        run: Any = "true", env: dict[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "gpus": gpus, "after": list(after), "retries": retries, "run": run,
            "env": env or {}}


def project(name: str, jobs: list[dict[str, Any]], gpus: int = 4, window_s: int = 100,
            team: str = "interp", notify: str | None = None, **budget: Any) -> ProjectSpec:
    data: dict[str, Any] = {
        "name": name, "team": team, "owner": "alice", "problem": f"What does {name} show?",
        "budget": {"gpu_hours": gpus * window_s / 3600, "gpus": gpus, "pool": "h100", **budget},
        "jobs": jobs,
    }
    if notify is not None:
        data["notify"] = notify
    return ProjectSpec.model_validate(data)


def member(env: Env, team: str = "interp") -> str:
    t = env.cluster.team(team)
    assert t is not None and t.members
    return t.members[0]


def submit(env: Env, spec: ProjectSpec, now: int = T0) -> GrantRow:
    out = service.submit(env, spec, member(env, spec.team), now)
    assert out.granted, out.refusal
    assert out.grant is not None
    return out.grant


class Harness:
    """A reconciler over a ``MemoryExecutor``, ticking once per virtual second."""

    def __init__(self, env: Env, tmp: Path, script: Any = None, capacity: int | None = None,
                 ready_delay: float = 0.0, **settings: Any) -> None:
        self.env = env
        # ready_delay: rank workers' start-up (the group is "placed" meanwhile)
        self.ex = MemoryExecutor(script, capacity=capacity, now=T0, ready_delay=ready_delay)
        kw: dict[str, Any] = dict(strict=True, notify_in_background=False, placement_timeout_s=10,
                                  logs_root=tmp / "logs")
        kw.update(settings)
        self.settings = Settings(**kw)
        self._ticked = False
        self.rec = self.restart()

    def restart(self, executor: Any = None, down_since: int | None = None) -> Reconciler:
        """A new daemon (no memory) over the same ledger and the same cluster (``down_since``:
        the previous daemon's last heartbeat, as ``serve`` passes it)."""
        self.rec = Reconciler(self.env, executor or self.ex, clock=lambda: int(self.ex.now),
                              settings=self.settings, down_since=down_since)
        return self.rec

    @property
    def now(self) -> int:
        return int(self.ex.now)

    def tick(self, t: int | None = None) -> Any:
        if t is not None:
            self.ex.advance(t)
        self._ticked = True
        return self.rec.tick(self.now)

    def run(self, until: int, step: int = 1) -> None:
        if not self._ticked:
            self.tick()
        t = self.now
        while t < until:
            t = min(until, t + step)
            self.tick(t)

    def run_until_done(self, gid: int | None, limit: int = 1000) -> GrantRow:
        if not self._ticked:
            self.tick()
        end = self.now + limit
        while self.now < end:
            self.tick(self.now + 1)
            g = self.grant(gid)
            rt = self.runtime(gid)
            if rt is not None and rt.finalized:
                return g
        raise AssertionError(f"grant {gid} not finished by {end}")

    # -- reads -----------------------------------------------------------------------

    def grant(self, gid: int | None) -> GrantRow:
        with self.env.ledger.read() as s:
            g = s.get(GrantRow, gid)
            assert g is not None
            return g

    def runtime(self, gid: int | None) -> GrantRuntimeRow | None:
        with self.env.ledger.read() as s:
            return s.get(GrantRuntimeRow, gid)

    def runs(self, gid: int | None) -> list[JobRunRow]:
        with self.env.ledger.read() as s:
            return list(s.exec(select(JobRunRow).where(JobRunRow.grant_id == gid)
                               .order_by(col(JobRunRow.id))).all())

    def attempts(self, gid: int | None) -> list[tuple[str, int, str]]:
        return [(r.job, r.attempt, r.state) for r in self.runs(gid)]

    def events(self, kind: str | None = None) -> list[EventRow]:
        with self.env.ledger.read() as s:
            q = select(EventRow).order_by(col(EventRow.seq))
            if kind:
                q = q.where(EventRow.kind == kind)
            return list(s.exec(q).all())

    def report(self, gid: int | None) -> dict[str, Any]:
        g = self.grant(gid)
        assert g.report_json is not None
        return json.loads(g.report_json)


__all__ = ["Behaviour", "Harness", "T0", "job", "project", "submit"]
