"""The reconciler: each ``tick(now)`` observes everything, decides, then acts.

The shape of Ray autoscaler v2 and Kueue (STYLE.md):

1. **Observe**: one ledger snapshot of the grants the daemon handles (one read transaction),
   then one executor observation per live group: its state, what runs, what ended, and the
   fate of attempts the ledger says run and the executor does not show.
2. **Decide**: :func:`cellsched.runtime.decide.decide`, pure, per grant.
3. **Apply**: through the ledger's write side (:class:`cellsched.ledger.lifecycle.GrantWriter`,
   which carries the lease epoch), intent first: the ledger is written *before* the executor
   is asked (``reserving`` before ``reserve``, an attempt row before ``launch``, ``expired``
   before ``release``); results are acknowledged only after the transaction recording them.

Stateless between ticks: everything needed after a crash is in the ledger or in the executor
(groups found by name, results held by the rank workers until acknowledged). In memory there
are only caches. The same class drives :class:`~cellsched.executor.memory.MemoryExecutor`
(virtual clock) and :class:`~cellsched.executor.ray_adapter.RayExecutor` (real Ray).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, select

from cellsched.executor.base import (
    Executor,
    ExecutorError,
    Fenced,
    GangResult,
    GangSpec,
)
from cellsched.core.admission import pull_rule
from cellsched.executor.pools import pool_capacity
from cellsched.fmt import gpu_h, plural
from cellsched.ledger.db import Deposed
from cellsched.ledger.lifecycle import GrantWriter, ledger_id
from cellsched.ledger.snapshot import (
    DaemonSnapshot,
    ledger_seq,
    load_daemon_snapshot,
    nodes_of,
    waiting_grants,
)
from cellsched.ledger.tables import (
    BE_TASK_LIVE,
    BestEffortTaskRow,
    GrantRow,
    GrantRuntimeRow,
    JobRunRow,
    NodeMapRow,
    ProjectRow,
)
from cellsched.runtime import decide as D
from cellsched.runtime import nodes as N
from cellsched.runtime.clock import now_s
from cellsched.runtime.lending import Lender
from cellsched.runtime.logs import log_dir_for, logs_root_for
from cellsched.runtime.notify import Notifier, redact, write_report_files
from cellsched.runtime.report import build_report, render_markdown
from cellsched.service import Env, code_blob
from cellsched.spec.models import ProjectSpec
from cellsched.spec.seal import from_canonical

log = logging.getLogger("cellsched.daemon")

ACTOR = "daemon"


@dataclass(frozen=True)
class Settings:
    """Knobs of the reconciler (seconds unless said otherwise)."""

    # A group still not placed this long after the promised start is a guarantee breach,
    # counted from the promised start (Ray never fails an infeasible group: we must decide).
    # "Placed" means the group holds its GPUs; slow rank-worker start-up is not a breach.
    placement_timeout_s: int = 10
    # How often breach_gs is brought up to date while an outage lasts.
    breach_update_s: int = 60
    # How often to look for groups of ours that no live grant owns (and release them).
    sweep_every_s: int = 10
    # Where job logs and reports go: <logs_root>/<project>/<digest12>-g<grant>/.
    logs_root: Path | None = None
    # Raise instead of logging when one grant's step fails (tests).
    strict: bool = False
    # Run notify in a background thread (the daemon) or inline (tests, --once).
    notify_in_background: bool = True
    # How often running jobs' logs are copied home from their nodes (seconds).
    logs_every_s: int = 2
    # Lending (docs/lending.md): borrowers are reclaimed this much earlier than the grace
    # alone asks (a tick may come late, and so may the release after the grace) ...
    lend_lead_s: int = 2
    # ... and a borrower starts only where it can run this long before its grace could begin.
    lend_min_run_s: int = 60


@dataclass
class TickResult:
    """What one tick did, for logs and loops (not a source of truth)."""

    actions: list[str] = field(default_factory=list)
    errors: int = 0

    def add(self, what: str) -> None:
        self.actions.append(what)
        log.info("%s", what)


@dataclass
class _Seen:
    """One grant as observed: the ledger's view, its rows, and its group."""

    view: D.GrantView
    row: GrantRow
    project: ProjectRow
    group: D.GroupView | None


class Reconciler:
    """Drives ``executor`` from the ledger of ``env``; see the module docstring.

    ``epoch``: the daemon's lease epoch (every ledger write carries it; the executor's ranks
    are fenced with it on the first tick). ``down_since``: the previous daemon's last
    heartbeat, where outages found on start began."""

    def __init__(
        self,
        env: Env,
        executor: Executor,
        clock: Callable[[], int] = now_s,
        settings: Settings | None = None,
        epoch: int | None = None,
        down_since: int | None = None,
    ) -> None:
        self.env = env
        self.ex = executor
        self.clock = clock
        self.settings = settings or Settings()
        self.epoch = epoch
        self.logs_root = logs_root_for(env, self.settings.logs_root)
        self.ledger_id = ledger_id(env.ledger, now_s())
        self.prefix = f"{executor.prefix}{self.ledger_id}/"
        self.writer = GrantWriter(env.ledger, epoch, ACTOR)
        policy = env.cluster.policy
        self.rules = D.Rules(grace_s=policy.grace_s, placement_timeout_s=self.settings.placement_timeout_s,
                             breach_update_s=self.settings.breach_update_s, down_since=down_since)
        # A group asked for on GPUs a borrower still holds (a grant pulled forward onto them)
        # waits for the borrower's grace before that counts as the cluster failing it.
        self.rules_lent = replace(self.rules, placement_timeout_s=self.rules.placement_timeout_s
                                  + policy.lend_grace_s + self.settings.lend_lead_s)
        self.pass_env = tuple(getattr(policy, "pass_env", ()))
        # Rules that start grants now (start_now, hold_oldest, hold_when_busy) also pull at the periodic sweep
        # and at a window's end; compact placed every grant at its earliest window already.
        self._starts_now = pull_rule(policy.pull_forward)[0] == "start_now"
        self.notifier = Notifier(self._notified, self.settings.notify_in_background, self.pass_env)
        self._specs: dict[str, ProjectSpec] = {}
        self._last_sweep: float | None = None
        self._was_placed: dict[int, bool] = {}  # a cache of the "placed" events
        self._first_look: set[int] | None = None  # grants whose group was missing at our first look
        # Per grant, the attempts that were running when its group went with the last daemon.
        self._orphaned: dict[int, frozenset[tuple[str, int]]] = {}
        self._fenced = False
        self._nodes: dict[tuple[str, int], str | None] = {}  # (pool, calendar node) -> Ray node
        self._nodes_loaded = False
        self._census: dict[str, int] | None = None  # GPUs Ray has per pool, as last recorded
        self._stuck: set[int] = set()  # grants on a lost node with no free nodes to move to (said once)
        self._logs_at: float | None = None  # when running jobs' logs were last pulled home
        self._pull_logs = False
        self._pulled = (-1, 0)  # (ledger seq, next not_before) at the last periodic pull
        self._nb: dict[str, int | None] = {}  # project id -> its not_before
        # The last whole snapshot and its views, reused while the ledger has not moved.
        self._snap: tuple[DaemonSnapshot, list[tuple[D.GrantView, GrantRow, ProjectRow]]] | None = None
        self.lender = Lender(self)
        self._finish_at: dict[int, int] = {}  # grants whose jobs ended, waiting for borrowers to leave
        self._lend_wait: dict[tuple[int, str, int], int] = {}  # launches waiting for borrowers: since

    # -- the tick ---------------------------------------------------------------------

    def tick(self, now: int | None = None) -> TickResult:
        """Observe → decide → apply, until nothing more follows at this instant (at most 3
        passes: a group placed at once is activated and launched in the same tick)."""
        now = self.clock() if now is None else now
        res = TickResult()
        if not self._fenced and self.epoch is not None:
            self.ex.fence(self.epoch)  # before any "the rank does not know it" is taken as proof
        self._fenced = True
        if self._last_sweep is None or now - self._last_sweep >= self.settings.sweep_every_s:
            self._guard(res, "sweep", lambda: self._sweep(now, res))
            self._guard(res, "nodes", lambda: self._refresh_nodes(now, res))
            if self._starts_now:
                # Catches what no grant's end announces, such as a not_before that has passed.
                self._guard(res, "pull forward", lambda: self._pull_now(now, res))
            self._last_sweep = now
        self._guard(res, "lending", lambda: self.lender.tick(now, res))
        self._pull_logs = self._logs_at is None or now - self._logs_at >= self.settings.logs_every_s
        if self._pull_logs:
            self._logs_at = now
        only: set[int] | None = None
        for _ in range(3):
            again: set[int] = set()
            moves = _moves(res)
            for seen in self._observe(now, only):
                gid = seen.view.id
                self._guard(res, f"grant {gid}", lambda s=seen: again.update(self._apply(s, now, res)))
            if _moves(res) > moves:
                only = None  # a waiting grant moved up: it may be due now
            elif again:
                only = again
            else:
                break
        self._guard(res, "lending", lambda: self.lender.after(now, res))
        return res

    def _guard(self, res: TickResult, what: str, fn: Callable[[], None]) -> None:
        # One broken grant must not stop the daemon from keeping everyone else's guarantees;
        # but a deposed daemon (a newer one holds the lease) must stop at once.
        try:
            fn()
        except (Deposed, Fenced):
            raise
        except Exception:
            if self.settings.strict:
                raise
            res.errors += 1
            log.exception("%s: step failed; will retry next tick", what)

    def drain(self, timeout: float = 60.0) -> None:
        """Wait for background notifications (``--once``, tests, shutdown)."""
        self.notifier.drain(timeout)

    # -- observe ----------------------------------------------------------------------

    def _observe(self, now: int, only: set[int] | None = None) -> list[_Seen]:
        """Grants the daemon handles, plus granted ones whose start has come, from one read
        transaction; then the executor's view of each live group."""
        with self.env.ledger.read() as s:
            if only is None and self._snap is not None and self._snap[0].current(ledger_seq(s), now):
                views = self._snap[1]  # nothing written since, and nothing newly due: no need to read again
            else:
                snap = load_daemon_snapshot(s, now, only, known_placed=self._was_placed)
                self._was_placed.update(snap.placed)
                views = self._views(snap)
                self._snap = (snap, views) if only is None else None
        first = self._first_look is None
        if first:
            self._first_look = set()
        out = []
        for view, g, proj in views:
            rt = view.rt
            group = None
            if rt is not None and not rt.finalized and g.state in D.LIVE and now < g.end:
                group = self._group(view, first)
            out.append(_Seen(view, g, proj, group))
        return out

    def _views(self, snap: DaemonSnapshot) -> list[tuple[D.GrantView, GrantRow, ProjectRow]]:
        out = []
        for g in snap.grants:
            proj = snap.projects.get(g.project_id)
            if proj is None:
                continue
            gid = g.id or 0
            rt = snap.runtime.get(gid)
            out.append((D.GrantView(
                id=gid, project_id=g.project_id, state=g.state, start=g.start, end=g.end, width=g.width,
                started_at=g.started_at, spec=self.spec(proj),
                rt=None if rt is None else D.RuntimeView(
                    reservation=rt.reservation, log_dir=rt.log_dir, outage_since=rt.outage_since,
                    breach_noted_at=rt.breach_noted_at, term_sent_at=rt.term_sent_at,
                    finalized=rt.finalized, notified=rt.notified, ever_placed=self._was_placed.get(gid, False)),
                attempts=tuple(D.AttemptRow(r.job, r.attempt, r.state, r.gpus, r.started_at)
                               for r in snap.runs.get(gid, ())),
            ), g, proj))
        return out

    def _group(self, v: D.GrantView, first: bool) -> D.GroupView:
        assert v.rt is not None
        name = v.rt.reservation
        state = self.ex.reservation_state(name)
        if first and state == "missing":
            assert self._first_look is not None
            self._first_look.add(v.id)
            self._orphaned[v.id] = frozenset((a.job, a.attempt) for a in v.attempts if a.state == "running")
        running = tuple(self.ex.running(name)) if state != "missing" else ()
        if running and self._pull_logs:
            self.ex.pull_logs(name)  # ranks on other nodes write there; `cellsched logs` reads here
        results = tuple(self.ex.poll(name)) if state != "missing" else ()
        fates = {(a.job, a.attempt): self.ex.attempt_fate(name, a.job, a.attempt, a.gpus, v.rt.log_dir)
                 for a in D.needs_fate(v, running, results)}
        gone = state == "missing" and v.id in (self._first_look or ())
        return D.GroupView(state, running, results, fates, gone_with_daemon=gone,
                           orphaned=self._orphaned.get(v.id, frozenset()))

    def spec(self, proj: ProjectRow) -> ProjectSpec:
        sp = self._specs.get(proj.digest)
        if sp is None:
            sp = self._specs[proj.digest] = from_canonical(proj.spec_json)
        return sp

    def name_for(self, g: GrantRow) -> str:
        return f"{self.prefix}{g.project}/g{g.id}"

    # -- apply ------------------------------------------------------------------------

    def _apply(self, seen: _Seen, now: int, res: TickResult) -> set[int]:
        """Apply the decided actions in order; returns the grants to observe again now."""
        v, row = seen.view, seen.row
        w, gid, pid = self.writer, v.id, v.project_id
        name = v.rt.reservation if v.rt is not None else self.name_for(row)
        again: set[int] = set()
        lent = self.lender.on_nodes(row.pool, nodes_of(row))
        actions = D.decide(v, seen.group, now, self.rules_lent if lent else self.rules)
        launches = {b for a in actions if isinstance(a, D.Launch) for b in a.bundles}
        for a in actions:
            if isinstance(a, D.Begin):
                if w.begin(gid, name, str(log_dir_for(self.logs_root, row)), now, a.unserved_since):
                    res.add(f"reserving {pid} as {name} ({plural(v.width, 'GPU')})")
                    self._reserve(name, v, row)
                    again.add(gid)
            elif isinstance(a, D.Missed):
                if w.missed(gid, name, str(log_dir_for(self.logs_root, row)), now):
                    res.add(f"expired {pid}: its window passed unserved (breach)")
            elif isinstance(a, D.Reserve):
                self._reserve(name, v, row)
            elif isinstance(a, D.Regroup):
                if w.regroup(gid, now, a.since):
                    res.add(f"group of {pid} is missing; asking again")
                self._reserve(name, v, row)
                again.add(gid)
            elif isinstance(a, D.Placed):
                for m in w.placed(gid, now, a.first):
                    res.add(m)
                self._was_placed[gid] = True
            elif isinstance(a, D.Activate):
                if w.activate(gid, now):
                    res.add(f"active {pid} ({plural(v.width, 'GPU')} ready)")
            elif isinstance(a, D.OpenOutage):
                if w.open_outage(gid, now, a.kind, a.since, a.message):
                    res.add(f"{a.kind} {pid}: {a.message}")
            elif isinstance(a, D.CloseOutage):
                if w.close_outage(gid, now, a.message):
                    res.add(f"restored {pid}: {a.message}")
            elif isinstance(a, D.UpdateBreach):
                w.update_breach(gid, now)
            elif isinstance(a, D.RecordResults):
                self._record(gid, list(a.results), now, res)
                # Only now that the ledger has them: a crash before this line shows them again.
                self.ex.ack(name, [r.key for r in a.results])
            elif isinstance(a, D.EndAttempt):
                if w.end_attempt(gid, a.job, a.attempt, now, a.state, a.detail):
                    res.add(f"{a.state} {pid}/{a.job}#{a.attempt}: {a.detail}")
            elif isinstance(a, D.Terminate):
                if w.terminating(gid, now, self.rules.grace_s, a.jobs):
                    res.add(f"SIGTERM to {pid} (window ends in {v.end - now} s)")
                self.ex.terminate(name)
            elif isinstance(a, D.Launch):
                a = self._unlent(v, name, a, launches, now, res)
                if a is not None:
                    self._launch(v, name, a, now, res)
            elif isinstance(a, D.FinishEarly):
                # ``now`` was read before the executor was polled: a gang killed at the
                # window's end can be seen by a tick whose ``now`` is a second earlier, and
                # must not be refunded a second it held. Its own end time counts (not past
                # the window: a rank's clock may run ahead).
                ends = [int(r.ended_at) for r in (seen.group.results if seen.group else ())]
                t = min(v.end, max([now, *ends]))
                # Borrowers in its idle bundles leave first (their grace); the window still
                # ends, and is refunded, from when its last job did (as the ledger has it, if
                # the wait began before this daemon did).
                if gid not in self._finish_at and not ends and self.lender.lent_in(gid):
                    t = min(t, self._last_end(gid) or t)
                t = self._finish_at.setdefault(gid, t)
                if self.lender.reclaim_bundles(gid, range(v.width), now, "the lending grant finished", res):
                    continue
                self._finish_at.pop(gid, None)
                done = w.finish_early(gid, t, a.state, self._pull_forward)
                if done is not None:
                    res.add(f"{a.state} {pid}: refunded {gpu_h(done[0] / 3600)}")
                    for m in done[1]:
                        res.add(m)
                self._finalize(seen, name, now, res, a.state)
            elif isinstance(a, D.Expire):
                if w.expire(gid, now, self._was_placed.get(gid, False)):
                    res.add(f"expired {pid}: window over")
                self._finalize(seen, name, now, res, "expired")
            elif isinstance(a, D.Finalize):
                self._finalize(seen, name, now, res, a.reason)
            elif isinstance(a, D.Notify):
                self._notify(gid, pid, seen.project, res)
        g = seen.group
        self.lender.withdraw(gid)
        if (self.lender.rest and row.state == "active" and g is not None and g.state == "ready"
                and v.rt is not None and v.rt.term_sent_at is None
                and not any(isinstance(a, (D.FinishEarly, D.Terminate, D.Expire)) for a in actions)):
            busy = {b for rg in g.running for b in rg.bundles} | launches | set(self.lender.lent_in(gid))
            pool = self.env.cluster.pool(row.pool)
            if pool is not None:
                self.lender.offer(gid, name, row.pool, list(nodes_of(row) or (0,)), pool.gpus_per_node, v.width,
                                  set(range(v.width)) - busy, v.end)
        return again

    def _reserve(self, name: str, v: D.GrantView, row: GrantRow) -> None:
        cpus = max((j.cpus for j in v.spec.jobs), default=0)
        pool = self.env.cluster.pool(row.pool)
        where = None if pool is None else N.placement(pool, nodes_of(row), v.width, self._nodes)
        if where is None:
            self.ex.reserve(name, v.width, cpus)
        else:
            self.ex.reserve(name, v.width, cpus, where)

    def _refresh_nodes(self, now: int, res: TickResult) -> None:
        """Map each pool's calendar nodes to live Ray nodes (kept in the ledger); the first
        time, say per pool how many GPUs Ray has on its nodes."""
        infos = self.ex.nodes()
        if self._nodes_loaded is False:
            with self.env.ledger.read() as s:
                self._nodes = {(r.pool, r.index): r.node_id for r in s.exec(select(NodeMapRow)).all()}
            self._nodes_loaded = True
            for pool in self.env.cluster.pools:
                have = pool_capacity(infos, pool)
                if have == 0:
                    log.info("pool %s: no Ray node is marked as its (docs/cluster-setup.md); its grants go "
                             "on any node with free GPUs, which is right for one machine", pool.name)
                else:
                    (log.info if have >= pool.gpus else log.warning)(
                        "pool %s: Ray has %d GPUs on its nodes, the cluster config declares %d",
                        pool.name, have, pool.gpus)
        census = {p.name: pool_capacity(infos, p) for p in self.env.cluster.pools}
        if census != self._census:
            self.writer.pool_census(census)
            self._census = census
        changes = N.remap(self.env.cluster.pools, infos, self._nodes)
        if changes:
            self.writer.map_nodes(changes, now)
            for pool, idx, nid in changes:
                self._nodes[(pool, idx)] = nid
                res.add(f"node {pool}/{idx} is {nid}" if nid else f"node {pool}/{idx} is gone; its grants wait")
        self._move_off_dead(now, res)

    def _move_off_dead(self, now: int, res: TickResult) -> None:
        """Live grants on a calendar node that has lost its Ray node (no spare took its
        index) move to other nodes of the pool free for the rest of their windows, where
        the calendar has them (``GrantWriter.move_nodes``); their group, pinned to the lost
        node, is released and asked for again on the new nodes. A grant with an attempt
        still running waits (the attempt on the lost node is proven dead within seconds,
        and a gang wholly on live nodes runs on); one with no free nodes stays, a breach
        while unplaced, and is tried again at every sweep."""
        dead: dict[str, set[int]] = {}
        for (pool, idx), nid in self._nodes.items():
            if nid is None:
                dead.setdefault(pool, set()).add(idx)
        if not dead:
            return
        with self.env.ledger.read() as s:
            rows = s.exec(select(GrantRow).where(col(GrantRow.state).in_(D.LIVE), col(GrantRow.end) > now,
                                                 col(GrantRow.pool).in_(list(dead)))
                          # earlier promises get the free nodes first
                          .order_by(col(GrantRow.start), col(GrantRow.id))).all()
            busy = set(s.exec(select(JobRunRow.grant_id).where(JobRunRow.state == "running")).all())
            runtimes = {r.grant_id: r for r in s.exec(select(GrantRuntimeRow).where(
                col(GrantRuntimeRow.grant_id).in_([g.id for g in rows]))).all()}
        for row in rows:
            nodes = nodes_of(row)
            if not nodes or not set(nodes) & dead[row.pool] or row.id in busy:
                continue
            assert row.id is not None
            new = self.writer.move_nodes(row.id, dead[row.pool], now, self.env.cluster)
            if new is None:
                if row.id not in self._stuck:
                    self._stuck.add(row.id)
                    res.add(f"{row.project_id}: no free nodes of pool {row.pool} to move to off its lost node; "
                            "a breach while unplaced")
                continue
            self._stuck.discard(row.id)
            res.add(f"{row.project_id}: moved off lost node(s) of pool {row.pool} to nodes {new}")
            rt = runtimes.get(row.id)
            if rt is not None and rt.reservation:
                self._release_recorded(row.id, rt.reservation, now, res)

    def _release_recorded(self, gid: int, name: str, now: int, res: TickResult,
                          relabel: Callable[[GangResult], str] | None = None) -> None:
        """Release the group only once what its gangs did is in the ledger: stop them, store
        every result not acknowledged, acknowledge them, then release (whatever still comes
        back is stored too). A crash or a failed write before the release leaves the group and
        its results for the next pass: no GPU-second is lost."""
        results = self.ex.stop(name)
        if results:
            self._record(gid, results, now, res, relabel)
            self.ex.ack(name, [(r.job, r.attempt) for r in results])
        late = self.ex.release(name)
        if late:
            self._record(gid, late, now, res, relabel)

    def _record(self, gid: int, results: list[GangResult], now: int, res: TickResult,
                relabel: Callable[[GangResult], str] | None = None) -> None:
        for m in self.writer.record_results(gid, results, now, relabel):
            res.add(m)

    def _last_end(self, gid: int) -> int | None:
        """When the grant's last attempt ended, as recorded."""
        with self.env.ledger.read() as s:
            return s.exec(select(func.max(JobRunRow.ended_at)).where(JobRunRow.grant_id == gid)).one()

    def _unlent(self, v: D.GrantView, name: str, a: D.Launch, launches: set[int], now: int,
                res: TickResult) -> D.Launch | None:
        """A launch on bundles lent to borrowers: onto other idle bundles if there are
        enough, else the borrowers are reclaimed and the launch waits (None) for their
        grace; the wait is refunded to the owner when it launches."""
        key = (v.id, a.job, a.attempt)
        why = f"{v.project_id}/{a.job} needs its GPUs"
        if key not in self._lend_wait:  # a wait begun before this daemon: from its reclaim
            began = self.lender.reclaimed_for(v.id, a.bundles, why)
            if began is not None:
                self._lend_wait[key] = began
        lent = self.lender.lent_in(v.id)
        if set(a.bundles) & lent.keys():
            taken = launches | set(lent) | {b for rg in self.ex.running(name) for b in rg.bundles}
            free = [b for b in range(v.width) if b not in taken]
            if len(free) >= len(a.bundles):
                moved = tuple(free[:len(a.bundles)])
                launches.update(moved)
                a = D.Launch(a.job, a.attempt, moved)
            else:
                need = [b for b in a.bundles if b in lent][:len(a.bundles) - len(free)]
                self.lender.reclaim_bundles(v.id, need, now, why, res)
                self._lend_wait.setdefault(key, now)
                return None
        since = self._lend_wait.pop(key, None)
        if since is not None and now > since:
            lost = self.lender.writer.lending_delay(v.id, a.job, a.attempt, len(a.bundles), now - since, now)
            res.add(f"{v.project_id}/{a.job}#{a.attempt} waited {now - since} s for borrowers to leave: "
                    f"{gpu_h(lost / 3600)} refunded")
        return a

    def _launch(self, v: D.GrantView, name: str, a: D.Launch, now: int, res: TickResult) -> None:
        assert v.rt is not None
        job = next(j for j in v.spec.jobs if j.name == a.job)
        if not self.writer.start_attempt(v.id, a.job, a.attempt, job.gpus, a.bundles, now):
            return
        # The sealed code: the ranks run the snapshot, shipped once per digest (the bytes come
        # from the ledger only when this executor does not hold them yet).
        digest = v.spec.code.digest if v.spec.code is not None else None
        blob = None if digest is None or self.ex.has_code(digest) else code_blob(self.env, digest)
        gang = GangSpec(
            reservation=name, project=v.spec.name, job=a.job, attempt=a.attempt, run=job.run,
            bundles=a.bundles, log_dir=v.rt.log_dir, env=dict(job.env),
            # The ranks keep the window themselves, daemon or not.
            term_at=v.end - self.rules.grace_s, kill_at=v.end, pass_env=self.pass_env,
            code_digest=digest, code_blob=blob,
            code_requirements=v.spec.code.requirements if v.spec.code is not None else None,
        )
        try:
            self.ex.launch(gang)
        except Fenced:
            raise
        except ExecutorError as e:
            self.writer.end_attempt(v.id, a.job, a.attempt, now, "lost", f"could not launch: {e}")
            res.add(f"launch of {v.project_id}/{a.job}#{a.attempt} failed: {e}")
            return
        res.add(f"launched {v.project_id}/{a.job}#{a.attempt} on bundles {list(a.bundles)}")

    # -- the end of a grant -----------------------------------------------------------

    def _finalize(self, seen: _Seen, name: str, now: int, res: TickResult, reason: str) -> None:
        """The grant has ended: release the group, close attempts, write the report; then
        notify. Idempotent."""
        gid = seen.view.id
        self._release_recorded(gid, name, now, res)
        why = {"expired": "killed at the window's end", "cancelled": "grant cancelled",
               "replaced": "grant replaced by a new version"}.get(reason, "group released")
        spec, proj = seen.view.spec, seen.project

        def report(row: GrantRow, runs: list[JobRunRow], log_dir: str) -> dict:  # type: ignore[type-arg]
            rep = build_report(row, proj, spec, runs, log_dir, now)
            return {**rep, "markdown": render_markdown(rep)}

        # A cancel (service layer) freed capacity too, and so did a window's end for a grant
        # that under start_now could not start before it: waiting grants may move up.
        pull = reason in ("cancelled", "replaced") or (reason == "expired" and self._starts_now)
        done = self.writer.finalize(gid, now, why, report, bool(spec.notify),
                                    self._pull_forward if pull else None)
        if done is None:
            return
        rep, moved = done
        for m in moved:
            res.add(m)
        res.add(f"report {seen.view.project_id}: {rep['state']}, succeeded={rep['succeeded']}")
        self._notify(gid, seen.view.project_id, proj, res)

    def _notify(self, gid: int, project_id: str, proj: ProjectRow, res: TickResult) -> None:
        with self.env.ledger.read() as s:
            row, rt = s.get(GrantRow, gid), s.get(GrantRuntimeRow, gid)
        if row is None or rt is None or row.report_json is None:
            return
        data = json.loads(row.report_json)
        md = data.pop("markdown", "")
        path = write_report_files(rt.log_dir, data, md)
        target = self.spec(proj).notify
        if rt.notified or not target:
            return
        if self.notifier.tell(gid, project_id, target, data, path):
            res.add(f"notify {project_id}: {redact(target)}")

    def _notified(self, gid: int, target: str, error: str | None) -> None:
        self.writer.notified(gid, self.clock(), target, error)

    # -- stopping ---------------------------------------------------------------------

    def shutdown(self, local_ray: bool, grace_s: float | None = None, poll_s: float = 0.2,
                 limit_s: float = 20.0) -> TickResult:
        """The daemon is stopping (SIGINT/SIGTERM). With an external Ray nothing is touched:
        jobs keep running and the next daemon re-adopts them. With a local Ray that dies with
        this process: the window is an outage from now until a daemon places it again (written
        first, from the ledger alone); then every running job gets SIGTERM, the grace, then
        SIGKILL, and its attempt is recorded ``interrupted`` (not a failure; it resumes when a
        daemon is back, inside the window). The Ray part is bounded by grace + ``limit_s``: a
        Ctrl-C reaches the local Ray's processes too, and a dead Ray must not hang the stop
        (the supervisors kill the jobs when their ranks die, and the next daemon proves it)."""
        res = TickResult()
        if local_ray:
            now = self.clock()
            with self.env.ledger.read() as s:
                snap = load_daemon_snapshot(s, now)
            names = {g.id or 0: snap.runtime[g.id or 0].reservation for g in snap.grants
                     if g.id in snap.runtime and not snap.runtime[g.id or 0].finalized
                     and g.state in ("reserving", "active")}
            for g in snap.grants:
                if (g.id or 0) in names and self.writer.interrupt(g.id or 0, now):
                    res.add(f"interrupted {g.project_id}: the daemon is stopping with its local Ray")
            grace = self.env.cluster.policy.grace_s if grace_s is None else grace_s
            worker = threading.Thread(target=self._stop_jobs, args=(names, grace, poll_s, res),
                                      name="cellsched-shutdown", daemon=True)
            worker.start()
            worker.join(grace + limit_s)
            if worker.is_alive():
                log.warning("Ray did not answer while stopping jobs; leaving it to the supervisors "
                            "(the next daemon proves each attempt dead before running it again)")
        self.drain()
        return res

    def _stop_jobs(self, names: dict[int, str], grace: float, poll_s: float, res: TickResult) -> None:
        try:
            for n in names.values():
                self.ex.terminate(n)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(self.ex.running(n) for n in names.values()):
                time.sleep(poll_s)
            now = self.clock()
            for gid, n in names.items():
                # An attempt that reported nothing stays "running": the next daemon ends it only
                # with a proof of death (its lock files), never on this daemon's word.
                self._release_recorded(gid, n, now, res,
                                       relabel=lambda r: "interrupted" if r.outcome == "killed" else r.outcome)
        except Exception:
            log.exception("stopping jobs failed; the supervisors stop them when their ranks die")

    # -- waiting grants move up -------------------------------------------------------

    def _pull_now(self, now: int, res: TickResult) -> None:
        """The periodic pull: for what no grant's end announces (capacity freed is pulled by the
        end itself), i.e. a waiting grant's ``not_before`` that has passed. So it is skipped
        while the ledger has not moved since the last one and no ``not_before`` has passed."""
        with self.env.ledger.read() as s:
            seq = ledger_seq(s)
            if seq == self._pulled[0] and now < self._pulled[1]:
                return
            rows = s.exec(waiting_grants(now)).all()
            todo = list({r.project_id for r in rows} - set(self._nb))
            for i in range(0, len(todo), 500):  # one query per 500 projects not seen yet
                for proj in s.exec(select(ProjectRow).where(col(ProjectRow.id).in_(todo[i:i + 500]))):
                    self._nb[proj.id] = self.spec(proj).budget.not_before_s
            nbs = [nb for nb in (self._not_before(s, r) for r in rows) if nb is not None and nb > now]
        if rows:
            with self.writer.tx() as s:
                moved = self._pull_forward(s, now)
                seq = ledger_seq(s)
            for m in moved:
                res.add(m)
        self._pulled = (seq, min(nbs, default=2**62))

    def _pull_forward(self, s: Session, now: int) -> list[str]:
        return self.writer.pull_forward(s, now, self.env.cluster, self._not_before)

    def _not_before(self, s: Session, row: GrantRow) -> int | None:
        if row.project_id not in self._nb:  # a sealed spec never changes: read it once
            proj = s.get(ProjectRow, row.project_id)
            self._nb[row.project_id] = self.spec(proj).budget.not_before_s if proj is not None else None
        return self._nb[row.project_id]

    # -- groups nobody owns -------------------------------------------------------------

    def _sweep(self, now: int, res: TickResult) -> None:
        """Release groups of this ledger that no unfinished grant owns (a crash between a
        grant's end and its release, or a grant deleted by hand): nothing leaks."""
        names = [n for n in self.ex.reservations() if n.startswith(self.prefix)]
        if not names:
            return
        with self.env.ledger.read() as s:
            # The grants' own groups are rare here (only their sweep can find them): ask the
            # ledger about just those names.
            keep = {r.reservation for r in s.exec(select(GrantRuntimeRow).where(
                col(GrantRuntimeRow.finalized).is_(False), col(GrantRuntimeRow.reservation).in_(names))).all()}
            keep |= {n for n in s.exec(select(BestEffortTaskRow.name).where(  # borrowers' groups
                col(BestEffortTaskRow.state).in_(BE_TASK_LIVE), col(BestEffortTaskRow.name).in_(names))).all() if n}
        for n in names:
            if n in keep:
                continue
            results = self.ex.release(n)
            self.writer.orphan_released(n, len(results), now)
            res.add(f"released orphan group {n}")


def _moves(res: TickResult) -> int:
    return sum(1 for a in res.actions if a.startswith("moved"))
