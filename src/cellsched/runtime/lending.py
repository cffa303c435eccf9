"""The daemon's side of lending (docs/lending.md): every tick, best-effort tasks are started
on GPUs no window holds, and taken back before a window needs them.

Each task attempt gets a placement group of its own (``<prefix>be/t<task>-a<attempt>``)
pinned to the calendar node :func:`cellsched.core.lending.plan` chose, so it never runs in
a grant's group (nor with a grant's code, environment or working directory). Reclaim is
SIGTERM (``terminate``), then, ``lend_grace_s`` later, ``release`` (SIGKILL, GPUs free).
The rank workers also hold a deadline of their own (``term_at``/``kill_at``: the first
instant the calendar, as it stood at the start, needs those GPUs), so a borrower leaves in
time even while no daemon runs.

Order within a tick: this runs before the grants are handled, so GPUs released for a window
starting now are free when its group is asked for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from cellsched.core import lending as L
from cellsched.core.bequeue import USAGE_WINDOW_S, QueuedTask, order
from cellsched.core.nodes import node_sizes
from cellsched.executor.base import ExecutorError, Fenced, GangSpec
from cellsched.fmt import gpu_h
from cellsched.ledger import events
from cellsched.ledger.lending import TaskView, TaskWriter, live_tasks
from cellsched.ledger.tables import LIVE_STATES, BestEffortRow, GrantRow, ProjectRow
from cellsched.runtime import nodes as N
from cellsched.runtime.logs import be_log_dir
from cellsched.spec.models import Job, ProjectSpec
from cellsched.spec.seal import from_canonical

if TYPE_CHECKING:
    from cellsched.runtime.reconciler import Reconciler, TickResult

log = logging.getLogger("cellsched.daemon")



def team_usage(s: Session, now: int) -> dict[str, int]:
    """GPU-seconds of best-effort work charged per team since ``now − USAGE_WINDOW_S``."""
    out: dict[str, int] = {}
    rows = s.exec(select(events.EventRow.data).where(events.EventRow.kind == "be_ended")
                  .where(col(events.EventRow.at) >= now - USAGE_WINDOW_S)).all()
    teams: dict[int, str] = {}
    for data in rows:
        d = json.loads(data)
        be = int(d["be"])
        if be not in teams:
            row = s.get(BestEffortRow, be)
            teams[be] = row.team if row is not None else ""
        out[teams[be]] = out.get(teams[be], 0) + int(d.get("charged_gpu_seconds", 0))
    return out


class Lender:
    """Lending for one reconciler (its executor, ledger, node map and lease epoch)."""

    def __init__(self, rec: Reconciler) -> None:
        self.rec = rec
        self.writer = TaskWriter(rec.env.ledger, rec.epoch, "daemon")
        policy = rec.env.cluster.policy
        self.grace = int(getattr(policy, "lend_grace_s", 30))
        self.rate = float(getattr(policy, "best_effort_rate", 1.0))
        self.enabled = bool(getattr(policy, "lend_idle", True))
        self._specs: dict[str, ProjectSpec] = {}
        self.tasks: list[TaskView] = []
        # Nodes borrowers hold, or left lately (node -> when): a group asked for there may
        # wait for a borrower's grace before that is the cluster's failure.
        self._lent_at: dict[L.NodeKey, int] = {}
        self._now = 0
        self.ends: dict[int, int] = {}  # live grants' window ends
        self.by_id: dict[int, TaskView] = {}
        self.specs: dict[str, ProjectSpec] = {}
        self.rest: list[L.Want] = []  # queued tasks no free GPUs were found for this tick
        self.held: dict[int, int] = {}  # per submission, GPUs its tasks hold
        self.slots: list[tuple[int, str, str, int, list[int]]] = []  # idle bundles offered
        self.left: dict[int, list[TaskView]] = {}  # per lending grant, borrowers ended this tick
        self.sizes: dict[L.NodeKey, int] = {}
        self.holds: list[L.Hold] = []
        # Task attempts whose group was missing at this daemon's first look: gone with the
        # last daemon (its local Ray), so held until that daemon's last heartbeat at most.
        # None until the first tick.
        self._gone_with_daemon: set[tuple[int, int]] | None = None

    def on_nodes(self, pool: str, nodes: tuple[int, ...] | None) -> bool:
        """Did a borrower hold GPUs of these nodes of ``pool`` lately (None: any node)?"""
        if not self._lent_at:
            return False
        recent = self.rec.rules.placement_timeout_s + self.grace + 2 * self.rec.settings.lend_lead_s
        return any(self._now - at <= recent for (p, n), at in self._lent_at.items()
                   if p == pool and (nodes is None or n in nodes))

    def name_for(self, tv: TaskView, attempt: int) -> str:
        return f"{self.rec.prefix}be/t{tv.task.id}-a{attempt}"

    def _spec(self, s: Session, project_id: str) -> ProjectSpec:
        spec = self._specs.get(project_id)
        if spec is None:
            row = s.get(ProjectRow, project_id)
            assert row is not None
            spec = self._specs[project_id] = from_canonical(row.spec_json)
        return spec

    def tick(self, now: int, res: TickResult) -> None:
        rec = self.rec
        cluster = rec.env.cluster
        with rec.env.ledger.read() as s:
            tasks = live_tasks(s)
            if not tasks:
                self.tasks, self.rest, self.slots = [], [], []
                return
            specs = {tv.be.project_id: self._spec(s, tv.be.project_id) for tv in tasks}
            grants = s.exec(select(GrantRow).where(col(GrantRow.state).in_(LIVE_STATES))).all()
            usage = team_usage(s, now)
        self.sizes = {(p.name, i): n for p in cluster.pools for i, n in enumerate(node_sizes(p.gpus, p.gpus_per_node))}
        self.holds = list(_holds(grants, cluster))
        self.ends = {g.id or 0: g.end for g in grants}
        self.tasks = tasks
        self._now = now
        for tv in tasks:
            if tv.task.node is not None:
                self._lent_at[(tv.be.pool, tv.task.node)] = now
        running = [tv for tv in tasks if tv.task.state in ("running", "preempting")]
        self.left = {}
        first = self._gone_with_daemon is None
        if first:
            self._gone_with_daemon = {(tv.task.id or 0, tv.task.attempt) for tv in running
                                      if tv.task.name is None or rec.ex.reservation_state(tv.task.name) == "missing"}
        for tv in running:
            rec._guard(res, f"task {tv.task.id}", lambda tv=tv: self._follow(tv, specs[tv.be.project_id], now, res))
        # Plan with what the ledger says now (the follow-ups above may have ended some).
        with rec.env.ledger.read() as s:
            tasks = live_tasks(s)
        self.tasks = tasks
        self._plan(tasks, specs, usage, now, res)

    # -- one running task -----------------------------------------------------------------

    def _follow(self, tv: TaskView, spec: ProjectSpec, now: int, res: TickResult) -> None:
        ex, t, be = self.rec.ex, tv.task, tv.be
        assert t.name is not None
        job = _job(spec, t.job)
        pid = f"{be.project_id}/{t.job}[{t.index}]#{t.attempt}"
        results = ex.poll(t.name)
        state = ex.reservation_state(t.name)
        if state == "missing" and not results and ex.attempt_fate(
                t.name, f"{t.job}-{t.index}", t.attempt, t.gpus,
                self.dir_of(be)) != "dead":
            # Its group went away (with the daemon's local Ray): no new attempt until this
            # one is proven dead, so that no task ever runs twice at once.
            return
        if results or state == "missing" or (t.state == "preempting" and now >= (t.reclaim_at or now) + self.grace):
            final = ex.stop(t.name) or results  # (released once its end is written: nothing lost)
            r = final[0] if final else None
            outcome = r.outcome if r is not None else "lost"
            codes = list(r.exit_codes) if r is not None else []
            at = now
            down = self.rec.rules.down_since
            if (r is None and down is not None and t.started_at is not None
                    and (t.id, t.attempt) in (self._gone_with_daemon or ())):
                at = max(t.started_at, min(now, down))  # gone with the last daemon: charged until then
            new = self.writer.ended(t.id or 0, t.attempt, now, outcome, codes, job.retries, self.rate,
                                    held_until=at)
            ex.release(t.name)
            if new is not None and t.lender is not None:
                self.left.setdefault(t.lender, []).append(tv)
            if new is not None:
                held = t.gpus * max(0, now - (t.started_at or now))
                res.add(f"{'preempted' if t.state == 'preempting' else outcome} {pid} "
                        f"({gpu_h(held / 3600)} held): {new}")
            return
        if t.state == "running":
            why = None
            if be.state != "queued":
                why = f"submission {be.state}"
            elif be.charged_gs + self.accruing(be.id or 0, now) >= be.budget_gs:
                why = "budget spent"
            elif state == "pending" and now - (t.started_at or now) > self.rec.rules.placement_timeout_s + self.grace:
                why = "its lent GPUs could not be had"
            if why is not None:
                self._reclaim(tv, now, why, res)
                return
        if state == "ready" and t.state == "running" and not ex.running(t.name):
            self._launch(tv, spec, job, now, res)

    def accruing(self, be_id: int, now: int) -> int:
        """What the running tasks of submission ``be_id`` will be charged for their time so far."""
        return sum(self.charge_so_far(o, now) for o in self.tasks
                   if o.be.id == be_id and o.task.state in ("running", "preempting"))

    def charge_so_far(self, tv: TaskView, now: int) -> int:
        return int(tv.task.gpus * max(0, now - (tv.task.started_at or now)) * self.rate)

    def _reclaim(self, tv: TaskView, now: int, why: str, res: TickResult) -> None:
        t = tv.task
        if self.writer.preempting(t.id or 0, now, why) and t.name is not None:
            self.rec.ex.terminate(t.name)
            res.add(f"SIGTERM to best-effort {tv.be.project_id}/{t.job}[{t.index}] ({why}; "
                    f"SIGKILL in {self.grace} s)")

    def _launch(self, tv: TaskView, spec: ProjectSpec, job: Job, now: int, res: TickResult) -> None:
        from cellsched.service import code_blob

        rec, t, be = self.rec, tv.task, tv.be
        assert t.name is not None
        digest = spec.code.digest if spec.code is not None else None
        blob = None if digest is None or rec.ex.has_code(digest) else code_blob(rec.env, digest)
        env = {**job.env, "CELLSCHED_BEST_EFFORT": "1", "CELLSCHED_TASK_INDEX": str(t.index),
               "CELLSCHED_PREEMPTED": str(t.preemptions)}
        # The ranks' own deadline: where the calendar (as it stands) needs these GPUs,
        # counting every borrower now on the node (the daemon may reclaim the others first).
        node = (be.pool, t.node if t.node is not None else 0)
        lent = sum(o.task.gpus for o in self.tasks if o.task.node == t.node and o.be.pool == be.pool
                   and o.task.lender is None and o.task.state in ("running", "preempting"))
        if t.lender is not None:  # a grant's idle bundles: gone before its window's end
            end = self.ends.get(t.lender)
            kill_at = None if end is None else end - self.rec.settings.lend_lead_s
        else:
            kill_at = L.free_until(node, self.sizes.get(node, 0), self.holds, lent, now)
        term_at = None if kill_at is None else kill_at - self.grace
        gang = GangSpec(
            reservation=t.name, project=spec.name, job=f"{t.job}-{t.index}", attempt=t.attempt, run=job.run,
            bundles=tuple(range(t.gpus)), log_dir=self.dir_of(be),
            env=env, term_at=term_at, kill_at=kill_at, pass_env=rec.pass_env,
            code_digest=digest, code_blob=blob,
            code_requirements=spec.code.requirements if spec.code is not None else None,
        )
        try:
            rec.ex.launch(gang)
        except Fenced:
            raise
        except ExecutorError as e:
            res.add(f"launch of best-effort {be.project_id}/{t.job}[{t.index}] failed: {e}")
            return
        res.add(f"launched best-effort {be.project_id}/{t.job}[{t.index}]#{t.attempt}")

    def dir_of(self, be: BestEffortRow) -> str:
        """Where the submission's ranks write their logs."""
        return str(be_log_dir(self.rec.logs_root, be.project, be.digest, be.id or 0))

    # -- what to reclaim and start ---------------------------------------------------------

    def _plan(self, tasks: list[TaskView], specs: dict[str, ProjectSpec], usage: dict[str, int],
              now: int, res: TickResult) -> None:
        rec = self.rec
        cluster = rec.env.cluster
        sizes, holds = self.sizes, self.holds
        lead = rec.settings.lend_lead_s
        borrows, queued, held = [], [], {}
        for tv in tasks:
            t = tv.task
            if t.state in ("running", "preempting"):
                held[tv.be.id or 0] = held.get(tv.be.id or 0, 0) + t.gpus
                if t.lender is not None:  # inside a grant: leaves before the window's end
                    end = self.ends.get(t.lender)
                    if t.state == "running" and (not self.enabled or end is None
                                                 or now >= end - self.grace - lead):
                        self._reclaim(tv, now, "the lending grant's window ends", res)
                elif t.node is not None:
                    borrows.append(L.Borrow(t.id or 0, (tv.be.pool, t.node), t.gpus, t.started_at or now,
                                            t.state == "preempting"))
            elif t.state == "queued" and tv.be.state == "queued" and self.enabled:
                queued.append(tv)
        self.by_id = {tv.task.id or 0: tv for tv in tasks}
        self.specs = specs
        fair = order([QueuedTask(tv.task.id or 0, tv.be.team, tv.task.gpus, tv.task.queued_at, tv.be.id or 0, i)
                      for i, tv in enumerate(queued)], usage)
        wants = []
        for q in fair:
            tv = self.by_id[q.id]
            left = tv.be.budget_gs - tv.be.charged_gs - self.accruing(tv.be.id or 0, now)
            if left <= 0:
                continue
            wants.append(L.Want(q.id, tv.be.pool, tv.task.gpus, tv.be.id or 0, tv.be.max_gpus))
        # A calendar node whose Ray node is gone lends nothing (a group pinned there is never
        # placed), and its borrowers leave.
        dead = [key for key, nid in rec._nodes.items() if nid is None]
        p = L.plan(now, sizes, holds, borrows, wants, held, self.grace, rec.settings.lend_min_run_s, dead=dead,
                   lead=lead)
        if not self.enabled:  # lending switched off: every borrower leaves
            p = L.Plan(tuple(b.task for b in borrows if not b.preempting), ())
        for tid in p.reclaim:
            self._reclaim(self.by_id[tid], now, "its GPUs are needed by a window", res)
        started = set()
        for tid, node in p.start:
            tv = self.by_id[tid]
            attempt = tv.task.attempt + 1
            name = self.name_for(tv, attempt)
            if self.writer.start(tid, node[0], node[1], name, None, now, log_dir=self.dir_of(tv.be)) is None:
                continue
            started.add(tid)
            held[tv.be.id or 0] = held.get(tv.be.id or 0, 0) + tv.task.gpus
            pool = cluster.pool(node[0])
            job = _job(specs[tv.be.project_id], tv.task.job)
            where = None if pool is None else N.placement(pool, (node[1],), tv.task.gpus, rec._nodes)
            if where is None:
                rec.ex.reserve(name, tv.task.gpus, job.cpus)
            else:
                rec.ex.reserve(name, tv.task.gpus, job.cpus, where)
            res.add(f"lending {tv.task.gpus} GPU(s) of {node[0]} node {node[1]} to best-effort "
                    f"{tv.be.project_id}/{tv.task.job}[{tv.task.index}]#{attempt}")
        # What is left may borrow idle bundles of running grants (offered during the tick).
        self.rest = [w for w in wants if w.task not in started]
        self.held = held

    # -- idle bundles inside grants ----------------------------------------------------------

    def lent_in(self, gid: int) -> dict[int, TaskView]:
        """Bundles of grant ``gid`` lent now (to running or leaving borrowers)."""
        out: dict[int, TaskView] = {}
        for tv in self.tasks:
            t = tv.task
            if t.lender == gid and t.bundles and t.state in ("running", "preempting"):
                for b in json.loads(t.bundles):
                    out[b] = tv
        return out

    def reclaimed_for(self, gid: int, bundles: Iterable[int], why: str) -> int | None:
        """When borrowers on these bundles of grant ``gid`` (leaving, or gone this tick) were
        asked to leave for ``why``, the earliest; None if none was. The start of an owner's
        wait that began before this daemon did."""
        want = set(bundles)
        ats = [tv.task.reclaim_at for tv in [*self.lent_in(gid).values(), *self.left.get(gid, ())]
               if tv.task.state == "preempting" and tv.task.detail == why and tv.task.reclaim_at is not None
               and want & set(json.loads(tv.task.bundles or "[]"))]
        return min(ats, default=None)

    def reclaim_bundles(self, gid: int, bundles: Iterable[int], now: int, why: str, res: TickResult) -> bool:
        """SIGTERM the borrowers on these bundles of ``gid``; True if any is still there."""
        lent = self.lent_in(gid)
        there = {lent[b].task.id: lent[b] for b in bundles if b in lent}
        for tv in there.values():
            if tv.task.state == "running":
                self._reclaim(tv, now, why, res)
        return bool(there)

    def withdraw(self, gid: int) -> None:
        """Forget what grant ``gid`` offered earlier in this tick: a tick may observe a grant
        more than once (a waiting grant moved up), and only its newest look counts (the same
        bundles are never offered twice, nor ones it has since taken back)."""
        self.slots = [sl for sl in self.slots if sl[0] != gid]

    def offer(self, gid: int, owner: str, pool: str, nodes: list[int], per_node: int, width: int,
              idle: Iterable[int], end: int) -> None:
        """A running grant's idle bundles (nothing of the owner runs there or is about to),
        to lend after the grants are handled."""
        if end - self._now < self.grace + self.rec.settings.lend_lead_s + self.rec.settings.lend_min_run_s:
            return
        by_node: dict[int, list[int]] = {}
        for b in sorted(idle):
            node = nodes[0] if width <= per_node or not nodes else nodes[b // per_node]
            by_node.setdefault(node, []).append(b)
        for node, bs in by_node.items():
            self.slots.append((gid, owner, pool, node, bs))

    def after(self, now: int, res: TickResult) -> None:
        """Lend offered idle bundles to the queued tasks no free GPUs were found for."""
        slots, self.slots = self.slots, []
        rest, self.rest = self.rest, []
        if not slots or not rest or not self.enabled:
            return
        for w in rest:
            if self.held.get(w.group, 0) + w.gpus > w.cap:
                continue
            k = next((i for i, sl in enumerate(slots) if sl[2] == w.pool and len(sl[4]) >= w.gpus), None)
            if k is None:
                continue
            gid, owner, pool, node, bs = slots[k]
            take, left = bs[:w.gpus], bs[w.gpus:]
            slots[k] = (gid, owner, pool, node, left)
            tv = self.by_id[w.task]
            attempt = tv.task.attempt + 1
            name = self.name_for(tv, attempt)
            if self.writer.start(w.task, pool, node, name, gid, now, take, self.dir_of(tv.be)) is None:
                continue
            self.held[w.group] = self.held.get(w.group, 0) + w.gpus
            try:
                self.rec.ex.lend(owner, take, name)
            except Fenced:
                raise
            except ExecutorError as e:
                self.writer.ended(w.task, attempt, now, "lost", [], 0, self.rate)
                res.add(f"could not lend bundles {take} of grant {gid}: {e}")
                continue
            res.add(f"lending idle bundles {take} of grant {gid} to best-effort "
                    f"{tv.be.project_id}/{tv.task.job}[{tv.task.index}]#{attempt}")


def _job(spec: ProjectSpec, name: str) -> Job:
    return next(j for j in spec.jobs if j.name == name)


def _holds(grants: Iterable[GrantRow], cluster) -> Iterable[L.Hold]:  # type: ignore[no-untyped-def]
    for g in grants:
        pool = cluster.pool(g.pool)
        if pool is None:
            continue
        nodes = json.loads(g.nodes) if g.nodes else [0]
        yield from L.holds_of(g.pool, nodes, g.width, pool.gpus_per_node, g.start, g.end)
