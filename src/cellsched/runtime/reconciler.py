"""The reconciler: each ``tick(now)`` observes the ledger and the executor, then acts.

Rules it keeps (DESIGN §4, STYLE 8):

- **Intent first.** Every change is written to the ledger (row + event, one transaction)
  *before* the executor is asked to do it: ``reserving`` before ``reserve``, an attempt row
  ``running`` before ``launch``, ``expired``/``completed`` before ``release``. A daemon killed
  between the two finds the intent on restart and finishes the job idempotently.
- **Stateless between ticks.** Everything needed after a crash is in the ledger
  (``GrantRuntimeRow``, ``JobRunRow``, ``BreachRow``) or in the executor (groups found by
  name, results held by the rank workers until acknowledged). In-memory state is only caches
  and a debounce.
- **Results: store, then acknowledge.** ``poll`` only reads; a result is ``ack``ed after the
  transaction that records it has committed, and recording is idempotent (a result already
  recorded is not written again), so a crash between poll and commit, or between commit and
  ack, neither loses a result nor records it twice.
- **Breaches are refunds.** Every increase of ``GrantRow.breach_gs`` appends a ``BreachRow``
  (the interval it covers) in the same transaction; the service layer credits the team's
  allowance with them, in the period where the loss happened.
- **Idempotent ticks.** A tick repeated at the same ``now`` writes nothing new.
- **Never later.** Capacity freed by an early finish, a cancel or a window's end lets waiting
  grants start earlier by the cluster's ``policy.pull_forward`` rule, through the core's
  ``Schedule.start_now`` or ``Schedule.move_earlier``; nothing ever moves a grant later.

The same class drives :class:`~cellsched.executor.memory.MemoryExecutor` (virtual clock, unit
tests) and :class:`~cellsched.executor.ray_adapter.RayExecutor` (real Ray).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from sqlmodel import Session, col, or_, select

from cellsched.core.admission import Grant, start_waiting_now
from cellsched.executor.base import (
    Executor,
    ExecutorError,
    GangResult,
    GangSpec,
    round_seconds,
)
from cellsched.ledger import events
from cellsched.ledger.tables import (
    LIVE_STATES,
    BreachRow,
    EventRow,
    GrantRow,
    GrantRuntimeRow,
    JobRunRow,
    ProjectRow,
    RuntimeInfo,
)
from cellsched.runtime.clock import now_s
from cellsched.runtime.notify import notify
from cellsched.runtime.plan import AttemptView, all_ended, job_states, next_launches
from cellsched.runtime.report import build_report, render_markdown
from cellsched.ledger.lifecycle import end_grant
from cellsched.ledger.snapshot import grant_of, load_schedule
from cellsched.service import Env
from cellsched.spec.models import ProjectSpec
from cellsched.spec.seal import from_canonical

log = logging.getLogger("cellsched.daemon")

ACTOR = "daemon"


@dataclass(frozen=True)
class Settings:
    """Knobs of the reconciler (seconds unless said otherwise)."""

    # A group still not placed this long after the promised start is a guarantee breach,
    # counted from the promised start (Ray never fails an infeasible group: we must decide).
    # "Placed" means the group holds its GPUs; slow rank-worker start-up is not a breach, so
    # this can be tight.
    placement_timeout_s: int = 10
    # How often breach_gs is brought up to date while an outage lasts.
    breach_update_s: int = 60
    # An attempt the ledger says runs but the executor neither runs nor reports is lost once
    # it has been missing for two observations at least this far apart (a debounce against
    # a rank that is briefly unreachable).
    lost_after_s: float = 2.0
    # How often to look for groups of ours that no live grant owns (and release them).
    sweep_every_s: int = 10
    # Where job logs and reports go: <logs_root>/<project>/<digest12>-g<grant>/.
    logs_root: Path | None = None
    # Raise instead of logging when one grant's step fails (tests).
    strict: bool = False
    # Run notify in a background thread (the daemon) or inline (tests, --once).
    notify_in_background: bool = True


def logs_root_for(env: Env, settings: Settings | None = None) -> Path:
    if settings is not None and settings.logs_root is not None:
        return Path(settings.logs_root)
    if os.environ.get("CELLSCHED_LOGS"):
        return Path(os.environ["CELLSCHED_LOGS"])
    return env.base_dir / "logs"


def log_dir_for(root: Path, grant: GrantRow) -> Path:
    return root / grant.project / f"{grant.digest[:12]}-g{grant.id}"


def _ledger_id(env: Env) -> str:
    """This ledger's id (created once, with its event)."""
    with env.ledger.read() as s:
        info = s.get(RuntimeInfo, 1)
        if info is not None:
            return info.ledger_id
    with env.ledger.write() as s:
        info = s.get(RuntimeInfo, 1)
        if info is None:
            info = RuntimeInfo(id=1, ledger_id=uuid.uuid4().hex[:10])
            s.add(info)
            events.append(s, now_s(), "ledger_id", info.ledger_id, ACTOR, {"ledger_id": info.ledger_id})
        return info.ledger_id


@dataclass
class _Work:
    grant: GrantRow
    rt: GrantRuntimeRow | None
    project: ProjectRow


@dataclass
class TickResult:
    """What one tick did, for logs and loops (not a source of truth)."""

    actions: list[str] = field(default_factory=list)
    errors: int = 0

    def add(self, what: str) -> None:
        self.actions.append(what)
        log.info("%s", what)


class Reconciler:
    """Drives ``executor`` from the ledger of ``env``; see the module docstring."""

    def __init__(
        self,
        env: Env,
        executor: Executor,
        clock: Callable[[], int] = now_s,
        settings: Settings | None = None,
    ) -> None:
        self.env = env
        self.ex = executor
        self.clock = clock
        self.settings = settings or Settings()
        self.logs_root = logs_root_for(env, self.settings)
        self.ledger_id = _ledger_id(env)
        self.prefix = f"{executor.prefix}{self.ledger_id}/"
        self._specs: dict[str, ProjectSpec] = {}
        # (grant, job, attempt) -> (first tick it was missing, times seen missing)
        self._missing: dict[tuple[int, str, int], tuple[float, int]] = {}
        self._last_sweep: float | None = None
        # grant -> whether its group has ever been placed (a cache of the "placed" events)
        self._was_placed: dict[int, bool] = {}
        self._notifying: set[int] = set()
        self._threads: list[threading.Thread] = []

    # -- the tick ---------------------------------------------------------------------

    def tick(self, now: int | None = None) -> TickResult:
        """One observe → act pass over every grant that needs the daemon."""
        now = self.clock() if now is None else now
        res = TickResult()
        if self._last_sweep is None or now - self._last_sweep >= self.settings.sweep_every_s:
            self._guard(res, "sweep", lambda: self._sweep(now, res))
            if self.env.cluster.policy.pull_forward == "start_now":
                # Catches what no grant's end announces, such as a not_before that has passed.
                self._guard(res, "pull forward", lambda: self._pull_now(now, res))
            self._last_sweep = now
        seen: set[int] = set()
        for _ in range(3):  # an early finish can make a moved grant due in the same tick
            moved_before = sum(1 for a in res.actions if a.startswith("moved"))
            work = [w for w in self._observe(now) if w.grant.id not in seen]
            for w in work:
                seen.add(w.grant.id or 0)
                self._guard(res, f"grant {w.grant.id}", lambda w=w: self._step(w, now, res))
            if sum(1 for a in res.actions if a.startswith("moved")) == moved_before:
                break
        return res

    def _guard(self, res: TickResult, what: str, fn: Callable[[], None]) -> None:
        # One broken grant must not stop the daemon from keeping everyone else's guarantees.
        try:
            fn()
        except Exception:
            if self.settings.strict:
                raise
            res.errors += 1
            log.exception("%s: step failed; will retry next tick", what)

    def drain(self, timeout: float = 60.0) -> None:
        """Wait for background notifications (``--once``, tests, shutdown)."""
        for t in list(self._threads):
            t.join(timeout)
        self._threads = [t for t in self._threads if t.is_alive()]

    # -- observe ----------------------------------------------------------------------

    def _observe(self, now: int) -> list[_Work]:
        """Grants the daemon is handling, plus granted ones whose start has come."""
        with self.env.ledger.read() as s:
            rts = s.exec(
                select(GrantRuntimeRow)
                .where(or_(col(GrantRuntimeRow.finalized).is_(False), col(GrantRuntimeRow.notified).is_(False)))
                .order_by(col(GrantRuntimeRow.grant_id))
            ).all()
            by_id = {r.grant_id: r for r in rts}
            grants = list(s.exec(select(GrantRow).where(col(GrantRow.id).in_(list(by_id)))).all()) if by_id else []
            due = s.exec(
                select(GrantRow).where(GrantRow.state == "granted", col(GrantRow.start) <= now)
            ).all()
            grants += [g for g in due if g.id not in by_id]
            grants.sort(key=lambda g: (g.start, g.id or 0))
            out = []
            for g in grants:
                proj = s.get(ProjectRow, g.project_id)
                if proj is None:
                    continue
                out.append(_Work(g, by_id.get(g.id or 0), proj))
            return out

    def spec(self, proj: ProjectRow) -> ProjectSpec:
        sp = self._specs.get(proj.digest)
        if sp is None:
            sp = self._specs[proj.digest] = from_canonical(proj.spec_json)
        return sp

    def name_for(self, g: GrantRow) -> str:
        return f"{self.prefix}{g.project}/g{g.id}"

    # -- act --------------------------------------------------------------------------

    def _step(self, w: _Work, now: int, res: TickResult) -> None:
        g, rt = w.grant, w.rt
        if rt is None:
            if g.state != "granted":
                return
            if now >= g.end:
                self._missed(g, w.project, now, res)
                return
            rt = self._begin(g, w.project, now, res)
            if rt is None:
                return
            g = self._grant(g.id)
        if rt.finalized:
            self._notify(g, rt, w.project, res)
            return
        if g.state not in LIVE_STATES:
            self._finalize(g, rt, w.project, now, res, reason=g.state)
            return
        if now >= g.end:
            self._expire(g, rt, w.project, now, res)
            return
        self._live(g, rt, w.project, now, res)

    def _grant(self, gid: int | None) -> GrantRow:
        with self.env.ledger.read() as s:
            g = s.get(GrantRow, gid)
            assert g is not None
            return g

    def _cpus_per_gpu(self, spec: ProjectSpec) -> int:
        return max((j.cpus for j in spec.jobs), default=0)

    def _begin(self, g: GrantRow, proj: ProjectRow, now: int, res: TickResult) -> GrantRuntimeRow | None:
        """granted → reserving (intent), then ask the executor for the group."""
        name = self.name_for(g)
        log_dir = log_dir_for(self.logs_root, g)
        with self.env.ledger.write() as s:
            row = s.get(GrantRow, g.id)
            if row is None or row.state != "granted" or s.get(GrantRuntimeRow, g.id) is not None:
                return None  # someone (cancel, another daemon) got there first
            row.state = "reserving"
            s.add(row)
            rt = GrantRuntimeRow(grant_id=row.id, reservation=name, log_dir=str(log_dir), pending_since=now)
            s.add(rt)
            events.append(s, now, "reserving", row.project_id, ACTOR, {
                "grant": row.id, "reservation": name, "width": row.width,
                "late_s": max(0, now - row.start),
            })
        res.add(f"reserving {g.project_id} as {name} ({g.width} GPUs)")
        self.ex.reserve(name, g.width, self._cpus_per_gpu(self.spec(proj)))
        return rt

    def _missed(self, g: GrantRow, proj: ProjectRow, now: int, res: TickResult) -> None:
        """A window that passed entirely while no daemon ran: nothing was provided."""
        with self.env.ledger.write() as s:
            row = s.get(GrantRow, g.id)
            if row is None or row.state != "granted" or s.get(GrantRuntimeRow, g.id) is not None:
                return
            row.state = "expired"
            row.ended_at = now
            _set_breach(s, row, row.width * (row.end - row.start), now)
            s.add(row)
            s.add(GrantRuntimeRow(
                grant_id=row.id, reservation=self.name_for(row),
                log_dir=str(log_dir_for(self.logs_root, row)), pending_since=now,
            ))
            events.append(s, now, "expired", row.project_id, ACTOR, {
                "grant": row.id, "reason": "window passed before any daemon started it",
                "breach_gpu_seconds": row.breach_gs,
            })
        res.add(f"expired {g.project_id}: its window passed unserved (breach)")

    # -- a live grant -----------------------------------------------------------------

    def _live(self, g: GrantRow, rt: GrantRuntimeRow, proj: ProjectRow, now: int, res: TickResult) -> None:
        name = rt.reservation
        state = self.ex.reservation_state(name)
        if state == "missing":
            self._group_missing(g, rt, proj, now, res)
            return
        # "placed": the group holds its GPUs, its rank workers are still starting. The cluster
        # is providing the window (no breach), but nothing can be launched yet.
        held = state in ("placed", "ready")
        if g.state == "reserving":
            if held:
                self._placed(g, rt, now, res)
                g, rt = self._reload(g.id)
            if state == "ready":
                self._activate(g, rt, now, res)
                g, rt = self._reload(g.id)
            else:
                if not held:
                    self._pending(g, rt, now, res)
                return
        # active
        if not held and rt.outage_since is None:
            why = ("a node of the group was lost; Ray is re-placing its bundles" if state == "rescheduling"
                   else f"the group is {state} again")
            self._outage(g, now, res, "rescheduling", why)
            g, rt = self._reload(g.id)
        elif held and rt.outage_since is not None:
            self._close_outage(g, now, res, "group ready again" if state == "ready" else
                               "group placed again; rank workers starting")
            g, rt = self._reload(g.id)
        elif rt.outage_since is not None:
            self._breach_update(g, rt, now)
        spec = self.spec(proj)
        running = self.ex.running(name)
        results = self.ex.poll(name)
        self._record(g, results, running, now, res)
        if results:
            # Only now that the ledger has them: a crash before this line shows them again.
            self.ex.ack(name, [(r.job, r.attempt) for r in results])
        g, rt = self._reload(g.id)
        runs = self._runs(g.id)
        views = [AttemptView(r.job, r.attempt, r.state) for r in runs]
        still = [r for r in runs if r.state == "running"]
        grace = self.env.cluster.policy.grace_s
        if rt.term_sent_at is None and now >= g.end - grace:
            with self.env.ledger.write() as s:
                r2 = s.get(GrantRuntimeRow, g.id)
                if r2 is not None and r2.term_sent_at is None:
                    r2.term_sent_at = now
                    s.add(r2)
                    events.append(s, now, "terminating", g.project_id, ACTOR, {
                        "grant": g.id, "end": g.end, "grace_s": grace,
                        "jobs": sorted({r.job for r in still}),
                    })
            res.add(f"SIGTERM to {g.project_id} (window ends in {g.end - now} s)")
            self.ex.terminate(name)
            return
        states = job_states(spec, views)
        if rt.term_sent_at is not None:
            if not still:
                done = all(s in ("succeeded", "failed", "blocked") for s in states.values())
                self._finish_early(g, rt, proj, now, res, "completed" if done else "expired")
            return
        if not still and all_ended(states):
            self._finish_early(g, rt, proj, now, res, "completed")
            return
        if state != "ready":
            return
        busy = {b for rg in running for b in rg.bundles}
        for launch in next_launches(spec, views, g.width, busy):
            self._launch(g, rt, spec, launch.job, launch.attempt, launch.bundles, now, res)

    def _reload(self, gid: int | None) -> tuple[GrantRow, GrantRuntimeRow]:
        with self.env.ledger.read() as s:
            g = s.get(GrantRow, gid)
            rt = s.get(GrantRuntimeRow, gid)
            assert g is not None and rt is not None
            return g, rt

    def _runs(self, gid: int | None) -> list[JobRunRow]:
        with self.env.ledger.read() as s:
            return list(s.exec(
                select(JobRunRow).where(JobRunRow.grant_id == gid).order_by(col(JobRunRow.id))
            ).all())

    def _activate(self, g: GrantRow, rt: GrantRuntimeRow, now: int, res: TickResult) -> None:
        with self.env.ledger.write() as s:
            row = s.get(GrantRow, g.id)
            r2 = s.get(GrantRuntimeRow, g.id)
            if row is None or r2 is None or row.state != "reserving":
                return
            closed = self._close(s, row, r2, now)
            first = row.started_at is None
            row.state = "active"
            if first:
                row.started_at = now
            s.add(row)
            s.add(r2)
            events.append(s, now, "active", row.project_id, ACTOR, {
                "grant": row.id, "reservation": r2.reservation, "first": first,
                "start_delay_s": now - row.start if first else None,
                "breach_gpu_seconds": row.breach_gs, "breach_closed_gpu_seconds": closed,
            })
        res.add(f"active {g.project_id} ({g.width} GPUs ready)")

    def _close(self, s: Session, row: GrantRow, rt: GrantRuntimeRow, now: int) -> int:
        """Close an open outage at ``now`` (capped at the window's end); returns GPU-seconds."""
        if rt.outage_since is None:
            return 0
        lost = row.width * max(0, min(now, row.end) - rt.outage_since)
        rt.breach_closed_gs += lost
        rt.outage_since = None
        rt.breach_noted_at = now
        _set_breach(s, row, rt.breach_closed_gs, now)
        return lost

    def _pending(self, g: GrantRow, rt: GrantRuntimeRow, now: int, res: TickResult) -> None:
        """Reserving and not placed (pending or rescheduling): a group never placed is a
        breach after the timeout, counted from the promised start; one that was placed
        before and no longer is, from now (or from when an active group went missing).
        Keep asking either way."""
        if rt.outage_since is not None:
            self._breach_update(g, rt, now)
            return
        if g.started_at is None and not self._ever_placed(g):
            if now - g.start >= self.settings.placement_timeout_s:
                self._outage(g, now, res, "unplaceable",
                             f"a group of {g.width} one-GPU bundles could not be placed within "
                             f"{self.settings.placement_timeout_s} s: the cluster has fewer free GPUs "
                             "than declared; still trying", since=g.start)
            return
        self._outage(g, now, res, "rescheduling",
                     "the group held its GPUs before and no longer does; still trying")

    def _ever_placed(self, g: GrantRow) -> bool:
        """Whether this grant's group has held its GPUs at some point (a ``placed`` event)."""
        gid = g.id or 0
        known = self._was_placed.get(gid)
        if known is None:
            with self.env.ledger.read() as s:
                evs = s.exec(select(EventRow).where(
                    EventRow.kind == "placed", EventRow.subject == g.project_id)).all()
                known = any(json.loads(e.data).get("grant") == gid for e in evs)
            self._was_placed[gid] = known
        return known

    def _placed(self, g: GrantRow, rt: GrantRuntimeRow, now: int, res: TickResult) -> None:
        """Reserving, and the group holds its GPUs (its rank workers may still be starting):
        the cluster provides the window from now, so an open outage closes here, not when
        the workers answer. The first placement of a grant is a ``placed`` event."""
        if rt.outage_since is not None:
            self._close_outage(g, now, res, "group placed; rank workers starting")
        if self._ever_placed(g):
            return
        with self.env.ledger.write() as s:
            row = s.get(GrantRow, g.id)
            if row is None or row.state != "reserving":
                return
            events.append(s, now, "placed", row.project_id, ACTOR, {
                "grant": row.id, "reservation": rt.reservation, "width": row.width,
                "placement_delay_s": now - row.start,
            })
        self._was_placed[g.id or 0] = True
        res.add(f"placed {g.project_id} ({g.width} GPUs held)")

    def _outage(self, g: GrantRow, now: int, res: TickResult, kind: str, message: str,
                since: int | None = None) -> None:
        with self.env.ledger.write() as s:
            row = s.get(GrantRow, g.id)
            r2 = s.get(GrantRuntimeRow, g.id)
            if row is None or r2 is None or r2.outage_since is not None:
                return
            r2.outage_since = now if since is None else since
            r2.breach_noted_at = now
            _set_breach(s, row, r2.breach_closed_gs + row.width * max(0, min(now, row.end) - r2.outage_since), now)
            s.add(row)
            s.add(r2)
            events.append(s, now, kind, row.project_id, ACTOR, {
                "grant": row.id, "width": row.width, "since": r2.outage_since,
                "breach_gpu_seconds": row.breach_gs, "message": message,
            })
        res.add(f"{kind} {g.project_id}: {message}")

    def _close_outage(self, g: GrantRow, now: int, res: TickResult, message: str) -> None:
        with self.env.ledger.write() as s:
            row = s.get(GrantRow, g.id)
            r2 = s.get(GrantRuntimeRow, g.id)
            if row is None or r2 is None or r2.outage_since is None:
                return
            lost = self._close(s, row, r2, now)
            s.add(row)
            s.add(r2)
            events.append(s, now, "restored", row.project_id, ACTOR, {
                "grant": row.id, "breach_gpu_seconds": row.breach_gs, "this_outage_gpu_seconds": lost,
                "message": message,
            })
        res.add(f"restored {g.project_id}: {message}")

    def _breach_update(self, g: GrantRow, rt: GrantRuntimeRow, now: int) -> None:
        if rt.outage_since is None or now - (rt.breach_noted_at or 0) < self.settings.breach_update_s:
            return
        with self.env.ledger.write() as s:
            row = s.get(GrantRow, g.id)
            r2 = s.get(GrantRuntimeRow, g.id)
            if row is None or r2 is None or r2.outage_since is None:
                return
            r2.breach_noted_at = now
            _set_breach(s, row, r2.breach_closed_gs + row.width * max(0, min(now, row.end) - r2.outage_since), now)
            s.add(row)
            s.add(r2)
            events.append(s, now, "breach", row.project_id, ACTOR, {
                "grant": row.id, "breach_gpu_seconds": row.breach_gs, "since": r2.outage_since,
            })

    def _group_missing(self, g: GrantRow, rt: GrantRuntimeRow, proj: ProjectRow, now: int,
                       res: TickResult) -> None:
        """The group is gone (never created after a crash, removed from outside, Ray
        restarted): whatever ran in it is lost; ask for it again."""
        runs = [r for r in self._runs(g.id) if r.state == "running"]
        if g.state == "active" or runs:
            with self.env.ledger.write() as s:
                row = s.get(GrantRow, g.id)
                r2 = s.get(GrantRuntimeRow, g.id)
                if row is None or r2 is None or row.state not in LIVE_STATES:
                    return
                lost = []
                for r in runs:
                    jr = s.get(JobRunRow, r.id)
                    if jr is not None and jr.state == "running":
                        jr.state, jr.ended_at, jr.detail = "lost", now, "its placement group vanished"
                        s.add(jr)
                        lost.append([jr.job, jr.attempt])
                if row.state == "active":
                    row.state = "reserving"
                    if r2.outage_since is None:
                        r2.outage_since = now
                        r2.breach_noted_at = now
                r2.pending_since = now
                s.add(row)
                s.add(r2)
                events.append(s, now, "group_missing", row.project_id, ACTOR, {
                    "grant": row.id, "reservation": r2.reservation, "lost_attempts": lost,
                })
            res.add(f"group of {g.project_id} is missing; asking again")
        self.ex.reserve(rt.reservation, g.width, self._cpus_per_gpu(self.spec(proj)))

    # -- attempts ---------------------------------------------------------------------

    def _launch(self, g: GrantRow, rt: GrantRuntimeRow, spec: ProjectSpec, job_name: str, attempt: int,
                bundles: tuple[int, ...], now: int, res: TickResult) -> None:
        job = next(j for j in spec.jobs if j.name == job_name)
        with self.env.ledger.write() as s:
            dup = s.exec(select(JobRunRow).where(
                JobRunRow.grant_id == g.id, JobRunRow.job == job_name, JobRunRow.attempt == attempt
            )).first()
            if dup is not None:
                return
            s.add(JobRunRow(grant_id=g.id or 0, job=job_name, attempt=attempt, state="running",
                            gpus=job.gpus, started_at=now))
            events.append(s, now, "attempt_started", g.project_id, ACTOR, {
                "grant": g.id, "job": job_name, "attempt": attempt, "bundles": list(bundles),
            })
        gang = GangSpec(
            reservation=rt.reservation, project=g.project, job=job_name, attempt=attempt,
            run=job.run, bundles=bundles, log_dir=rt.log_dir, env=dict(job.env),
        )
        try:
            self.ex.launch(gang)
        except ExecutorError as e:
            self._end_attempt(g, job_name, attempt, now, "lost", f"could not launch: {e}")
            res.add(f"launch of {g.project_id}/{job_name}#{attempt} failed: {e}")
            return
        res.add(f"launched {g.project_id}/{job_name}#{attempt} on bundles {list(bundles)}")

    def _end_attempt(self, g: GrantRow, job: str, attempt: int, now: int, state: str, detail: str) -> None:
        with self.env.ledger.write() as s:
            jr = s.exec(select(JobRunRow).where(
                JobRunRow.grant_id == g.id, JobRunRow.job == job, JobRunRow.attempt == attempt
            )).first()
            if jr is None or jr.state != "running":
                return
            jr.state, jr.ended_at, jr.detail = state, now, detail
            s.add(jr)
            events.append(s, now, "attempt_ended", g.project_id, ACTOR, {
                "grant": g.id, "job": job, "attempt": attempt, "outcome": state, "detail": detail,
            })

    def _record(self, g: GrantRow, results: Iterable[GangResult], running: Iterable[Any], now: int,
                res: TickResult) -> None:
        """Write results; an attempt neither running nor reported (twice, ``lost_after_s``
        apart) has an unknown fate: ``lost`` (it will be retried)."""
        results = list(results)
        if results:
            self._write_results(g, results, now, res)
        reported = {(r.job, r.attempt) for r in results}
        alive = {(rg.job, rg.attempt) for rg in running}
        for jr in self._runs(g.id):
            key = (g.id or 0, jr.job, jr.attempt)
            if jr.state != "running" or (jr.job, jr.attempt) in reported | alive:
                self._missing.pop(key, None)
                continue
            first, count = self._missing.get(key, (now, 0))
            count += 1
            self._missing[key] = (first, count)
            if count >= 2 and now - first >= self.settings.lost_after_s:
                self._missing.pop(key, None)
                self._end_attempt(g, jr.job, jr.attempt, now, "lost",
                                  "fate unknown: neither running nor reported by the executor "
                                  "(daemon restarted or rank workers lost)")
                res.add(f"lost {g.project_id}/{jr.job}#{jr.attempt}: fate unknown; will retry")

    def _write_results(self, g: GrantRow, results: list[GangResult], now: int, res: TickResult) -> None:
        """Record results, once each: the executor shows a result until it is acknowledged
        (after this transaction), so one already recorded (a crash between commit and ack,
        or ``release`` returning what ``poll`` showed) is skipped here."""
        with self.env.ledger.write() as s:
            for r in results:
                jr = s.exec(select(JobRunRow).where(
                    JobRunRow.grant_id == g.id, JobRunRow.job == r.job, JobRunRow.attempt == r.attempt
                )).first()
                if jr is not None and _has_result(jr):
                    continue
                late = jr is not None and jr.state != "running"
                if jr is None:  # not ours by the ledger (should not happen): keep the facts anyway
                    jr = JobRunRow(grant_id=g.id or 0, job=r.job, attempt=r.attempt, state="running",
                                   gpus=len(r.exit_codes))
                if not late:
                    jr.state = r.outcome
                    jr.detail = r.detail
                else:
                    jr.detail = f"{jr.detail}; late result: {r.outcome} {r.detail}".strip()
                # One rounding rule for both ends, so a job's order in time survives it.
                jr.started_at = round_seconds(r.started_at)
                jr.ended_at = round_seconds(r.ended_at)
                jr.gpu_seconds = r.gpu_seconds
                jr.exit_codes = json.dumps(list(r.exit_codes))
                jr.gpu_ids = json.dumps(list(r.gpu_ids))
                s.add(jr)
                events.append(s, now, "attempt_ended", g.project_id, ACTOR, {
                    "grant": g.id, "job": r.job, "attempt": r.attempt, "outcome": r.outcome,
                    "exit_codes": list(r.exit_codes), "gpu_seconds": r.gpu_seconds,
                    "detail": r.detail, "late": late,
                })
                res.add(f"{r.outcome} {g.project_id}/{r.job}#{r.attempt} exit {list(r.exit_codes)}")

    # -- the end of a grant -----------------------------------------------------------

    def _finish_early(self, g: GrantRow, rt: GrantRuntimeRow, proj: ProjectRow, now: int,
                      res: TickResult, state: str) -> None:
        """Every job has ended: cut the window at ``now``, refund the rest, let waiting grants
        start earlier (all one transaction), then release the group and report."""
        with self.env.ledger.write() as s:
            row = s.get(GrantRow, g.id)
            r2 = s.get(GrantRuntimeRow, g.id)
            if row is None or r2 is None or row.state not in LIVE_STATES:
                return
            self._close(s, row, r2, now)
            s.add(r2)
            refund = end_grant(s, row, now, state, ACTOR, {"breach_gpu_seconds": row.breach_gs})
            moved = self._pull_forward(s, now)
        res.add(f"{state} {g.project_id}: refunded {refund} GPU-seconds")
        for m in moved:
            res.add(m)
        self._finalize(self._grant(g.id), rt, proj, now, res, reason=state)

    def _expire(self, g: GrantRow, rt: GrantRuntimeRow, proj: ProjectRow, now: int, res: TickResult) -> None:
        """The window is over: ``expired`` (intent), then SIGKILL + release in finalize."""
        placed = self._ever_placed(g)  # held its GPUs, even if its workers never answered
        with self.env.ledger.write() as s:
            row = s.get(GrantRow, g.id)
            r2 = s.get(GrantRuntimeRow, g.id)
            if row is None or r2 is None or row.state not in LIVE_STATES:
                return
            never = row.started_at is None and not placed
            if never and r2.outage_since is None:
                r2.outage_since = row.start  # never placed at all
            self._close(s, row, r2, now)
            row.state = "expired"
            row.ended_at = now
            s.add(row)
            s.add(r2)
            events.append(s, now, "expired", row.project_id, ACTOR, {
                "grant": row.id, "end": row.end, "breach_gpu_seconds": row.breach_gs,
                "reason": "window ended" if not never else "window ended before the group was placed",
            })
        res.add(f"expired {g.project_id}: window over")
        self._finalize(self._grant(g.id), rt, proj, now, res, reason="expired")

    def _finalize(self, g: GrantRow, rt: GrantRuntimeRow, proj: ProjectRow, now: int, res: TickResult,
                  reason: str) -> None:
        """The grant has ended (completed, expired, cancelled, replaced): release the group,
        close attempts, write the report; then notify. Idempotent."""
        results = self.ex.release(rt.reservation)
        if results:
            self._write_results(g, results, now, res)
        why = {"expired": "killed at the window's end", "cancelled": "grant cancelled",
               "replaced": "grant replaced by a new version"}.get(reason, "group released")
        spec = self.spec(proj)
        with self.env.ledger.write() as s:
            row = s.get(GrantRow, g.id)
            r2 = s.get(GrantRuntimeRow, g.id)
            if row is None or r2 is None or r2.finalized:
                return
            self._close(s, row, r2, now)
            runs = list(s.exec(select(JobRunRow).where(JobRunRow.grant_id == g.id).order_by(col(JobRunRow.id))).all())
            for jr in runs:
                if jr.state == "running":
                    jr.state, jr.ended_at = "killed", now
                    jr.detail = f"{why}; result not collected"
                    s.add(jr)
            if row.ended_at is None:
                row.ended_at = now
            report = build_report(row, proj, spec, runs, r2.log_dir, now)
            md = render_markdown(report)
            row.report_json = json.dumps({**report, "markdown": md}, sort_keys=True)
            r2.finalized = True
            r2.notified = not spec.notify
            s.add(row)
            s.add(r2)
            events.append(s, now, "report", row.project_id, ACTOR, {
                "grant": row.id, "state": row.state, "succeeded": report["succeeded"],
                "used_gpu_seconds": report["gpu_seconds"]["used"],
                "refunded_gpu_seconds": row.refunded_gs, "breach_gpu_seconds": row.breach_gs,
            })
            # A cancel (service layer) freed capacity too, and so did a window's end for a
            # grant that under start_now could not start before it: waiting grants may move up.
            pull = reason in ("cancelled", "replaced") or (
                reason == "expired" and self.env.cluster.policy.pull_forward == "start_now")
            moved = self._pull_forward(s, now) if pull else []
        for m in moved:
            res.add(m)
        res.add(f"report {g.project_id}: {report['state']}, succeeded={report['succeeded']}")
        self._notify(self._grant(g.id), self._reload(g.id)[1], proj, res)

    def _pull_now(self, now: int, res: TickResult) -> None:
        with self.env.ledger.read() as s:
            if s.exec(_waiting(now).limit(1)).first() is None:
                return  # no write lock for nothing
        with self.env.ledger.write() as s:
            for m in self._pull_forward(s, now):
                res.add(m)

    def _pull_forward(self, s: Session, now: int) -> list[str]:
        """Waiting grants start earlier where freed capacity allows (never later), by the
        cluster's ``policy.pull_forward`` (docs/admission.md), exactly as the simulator does:
        ``start_now`` starts, longest first, each grant whose whole window fits now;
        ``compact`` moves each, in (start, id) order, to the earliest window that fits."""
        rule = self.env.cluster.policy.pull_forward
        sched = load_schedule(s, self.env.cluster, now)
        rows = s.exec(_waiting(now).order_by(col(GrantRow.start), col(GrantRow.id))).all()
        waiting: list[tuple[GrantRow, int]] = []
        for row in rows:
            if row.pool not in sched.pools or row.team not in sched.teams:
                continue
            proj = s.get(ProjectRow, row.project_id)
            nb = self.spec(proj).budget.not_before_s if proj is not None else None
            earliest = max(now, nb or now)
            if rule == "start_now" and earliest > now:
                continue  # it may not start yet
            waiting.append((row, earliest))
        # A ValueError means the schedule is over-committed (a pool shrank): leave it be.
        moves: list[tuple[GrantRow, Grant]] = []
        if rule == "start_now":
            by_id = {row.id or 0: row for row, _ in waiting}
            try:
                started = start_waiting_now(sched, [(row.id or 0, grant_of(row)) for row, _ in waiting], now)
            except ValueError:
                started = []
            moves = [(by_id[k], new) for k, _, new in started]
        else:
            for row, earliest in waiting:
                try:
                    new = sched.move_earlier(grant_of(row), earliest)
                except ValueError:
                    continue
                if new.start < row.start:
                    moves.append((row, new))
        out = []
        for row, new in moves:
            old = (row.start, row.end)
            row.start, row.end = new.start, new.end
            s.add(row)
            events.append(s, now, "moved_earlier", row.project_id, ACTOR, {
                "grant": row.id, "from_start": old[0], "from_end": old[1],
                "start": row.start, "end": row.end,
            })
            out.append(f"moved {row.project_id} earlier by {old[0] - row.start} s")
        return out

    # -- reports on disk and notify ---------------------------------------------------

    def _notify(self, g: GrantRow, rt: GrantRuntimeRow, proj: ProjectRow, res: TickResult) -> None:
        if g.report_json is None:
            return
        data = json.loads(g.report_json)
        md = data.pop("markdown", "")
        path = self._write_files(rt, data, md)
        if rt.notified:
            return
        target = self.spec(proj).notify
        gid = g.id or 0
        if not target:
            return
        if gid in self._notifying:
            return
        self._notifying.add(gid)

        def run() -> None:
            err = notify(target, data, path)
            try:
                with self.env.ledger.write() as s:
                    r2 = s.get(GrantRuntimeRow, gid)
                    if r2 is not None and not r2.notified:
                        r2.notified = True
                        s.add(r2)
                        kind = "notified" if err is None else "notify_failed"
                        payload: dict[str, Any] = {"grant": gid, "target": _redact(target)}
                        if err is not None:
                            payload["error"] = err
                        events.append(s, self.clock(), kind, g.project_id, ACTOR, payload)
                if err is None:
                    log.info("notified %s: %s", g.project_id, _redact(target))
                else:
                    log.warning("notify for %s failed (report kept in the ledger and %s): %s",
                                g.project_id, path, err)
            finally:
                self._notifying.discard(gid)

        res.add(f"notify {g.project_id}: {_redact(target)}")
        if self.settings.notify_in_background:
            t = threading.Thread(target=run, name=f"notify-{gid}", daemon=True)
            self._threads.append(t)
            t.start()
        else:
            run()

    def _write_files(self, rt: GrantRuntimeRow, data: dict[str, Any], md: str) -> Path | None:
        d = Path(rt.log_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
            p = d / "report.json"
            text = json.dumps(data, indent=2, sort_keys=True) + "\n"
            if not p.exists() or p.read_text() != text:
                tmp = d / ".report.json.tmp"
                tmp.write_text(text)
                tmp.replace(p)
                (d / "report.md").write_text(md)
            return p
        except OSError as e:
            log.warning("cannot write report files in %s: %s (the ledger has the report)", d, e)
            return None

    # -- groups nobody owns -------------------------------------------------------------

    def _sweep(self, now: int, res: TickResult) -> None:
        """Release groups of this ledger that no unfinished grant owns (a crash between a
        grant's end and its release, or a grant deleted by hand): nothing leaks."""
        names = [n for n in self.ex.reservations() if n.startswith(self.prefix)]
        if not names:
            return
        with self.env.ledger.read() as s:
            keep = {
                r.reservation
                for r in s.exec(select(GrantRuntimeRow).where(col(GrantRuntimeRow.finalized).is_(False))).all()
            }
        for n in names:
            if n in keep:
                continue
            results = self.ex.release(n)
            with self.env.ledger.write() as s:
                events.append(s, now, "orphan_released", n, ACTOR, {
                    "reservation": n, "unreported_results": len(results),
                })
            res.add(f"released orphan group {n}")


def _waiting(now: int):  # type: ignore[no-untyped-def]
    """Grants not started whose window is still ahead: what a pull-forward may move."""
    return select(GrantRow).where(GrantRow.state == "granted", col(GrantRow.start) > now)


def _has_result(jr: JobRunRow) -> bool:
    """Whether an executor result was recorded for this attempt: only results set the exit
    codes (one per rank, so never empty); the reconciler's own verdicts (``lost`` when the
    fate is unknown, ``killed`` at finalize) leave them empty."""
    return jr.exit_codes not in ("", "[]")


def _set_breach(s: Session, row: GrantRow, total: int, now: int) -> None:
    """Bring ``row.breach_gs`` up to ``total`` and record the increase as a ``BreachRow``.

    Breach time accrues from an outage's start up to ``now`` (never past the window's end),
    so an increase of ``d`` GPU-seconds is the interval of ``d / width`` seconds ending at
    ``min(now, end)``: that is what lets the refund land in the period where the loss
    happened. Never decreases (the rows are append-only, and so is the loss)."""
    added = total - row.breach_gs
    if added <= 0 or row.width <= 0:
        return
    row.breach_gs = total
    until = min(now, row.end)
    s.add(BreachRow(grant_id=row.id or 0, team=row.team, start=until - added // row.width, end=until,
                    width=row.width, gpu_seconds=added, recorded_at=now))


def _redact(target: str) -> str:
    """URLs may carry tokens: keep scheme and host only in logs and events."""
    if target.startswith(("http://", "https://")):
        scheme, _, rest = target.partition("://")
        return f"{scheme}://{rest.split('/', 1)[0].split('@')[-1]}/…"
    return target
