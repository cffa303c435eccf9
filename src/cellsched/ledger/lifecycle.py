"""The write side of a grant's lifecycle: every state change of a grant after admission.

Each function runs inside a ledger write (the caller's session) and appends the event that
explains it, so derived rows and the event chain never disagree."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from typing import Any, Callable, Sequence

from sqlmodel import Session, col, select

from cellsched.core.admission import Grant, pull_rule, start_waiting_now
from cellsched.executor.base import GangResult, round_seconds
from cellsched.fmt import plural
from cellsched.ledger import events
from cellsched.ledger.db import Ledger
from cellsched.ledger.snapshot import grant_of, load_schedule, nodes_json, nodes_of, waiting_grants
from cellsched.ledger.tables import (
    LIVE_STATES,
    BreachRow,
    GrantRow,
    GrantRuntimeRow,
    JobRunRow,
    LeaseRow,
    NodeMapRow,
    RuntimeInfo,
)
from cellsched.spec.cluster import ClusterConfig


def end_grant(s: Session, row: GrantRow, now: int, state: str, caller: str, extra: dict[str, Any]) -> int:
    """End ``row`` at ``now`` (or before it starts) with ``state``, refund the rest of the
    window, and record the event; returns GPU-seconds refunded. Runs inside a write."""
    cut = min(max(now, row.start), row.end)
    refund = row.width * (row.end - cut)
    row.end = cut
    row.refunded_gs += refund
    row.state = state
    row.ended_at = now
    s.add(row)
    events.append(s, now, state, row.project_id, caller, {"grant": row.id, "end": cut, "refunded_gpu_seconds": refund, **extra})
    return refund




# -- the daemon's writes ---------------------------------------------------------------------
#
# Every write the daemon makes goes through a GrantWriter, which opens each transaction with
# the daemon's lease epoch: a deposed daemon (a standby took over while it was paused) gets
# ``Deposed`` and writes nothing. Each method re-reads its rows inside the transaction and
# does nothing when the state has moved on (another writer, a repeated tick), so applying an
# action twice is harmless.


def set_breach(s: Session, row: GrantRow, total: int, now: int) -> None:
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


def open_breach(row: GrantRow, rt: GrantRuntimeRow, now: int) -> int:
    """GPU-seconds of breach so far: closed outages plus the open one up to ``now``."""
    if rt.outage_since is None:
        return rt.breach_closed_gs
    return rt.breach_closed_gs + row.width * max(0, min(now, row.end) - rt.outage_since)


def open_outage(s: Session, row: GrantRow, rt: GrantRuntimeRow, since: int, now: int) -> None:
    """Open an outage from ``since``: from then on the window is not provided, and the
    breach (refunded) grows with it; the breach so far is recorded now.

    Never from before the last outage's close (``breach_noted_at``, with none open): a new
    daemon dates an outage from the last one's last heartbeat, and the last one may have
    closed (and refunded) an outage after it; those seconds are not refunded twice."""
    if rt.outage_since is None and rt.breach_noted_at is not None:
        since = max(since, min(rt.breach_noted_at, now))
    rt.outage_since = since
    rt.breach_noted_at = now
    set_breach(s, row, open_breach(row, rt, now), now)


def close_outage(s: Session, row: GrantRow, rt: GrantRuntimeRow, now: int) -> int:
    """Close an open outage at ``now`` (capped at the window's end); returns GPU-seconds."""
    if rt.outage_since is None:
        return 0
    lost = row.width * max(0, min(now, row.end) - rt.outage_since)
    rt.breach_closed_gs += lost
    rt.outage_since = None
    rt.breach_noted_at = now
    set_breach(s, row, rt.breach_closed_gs, now)
    return lost


class GrantWriter:
    """The daemon's write side; ``epoch`` is its lease epoch (None: no lease, tests)."""

    def __init__(self, ledger: Ledger, epoch: int | None = None, actor: str = "daemon") -> None:
        self.ledger = ledger
        self.epoch = epoch
        self.actor = actor

    @contextlib.contextmanager
    def tx(self) -> Iterator[Session]:
        if self.epoch is None:
            with self.ledger.write() as s:
                yield s
        else:
            with self.ledger.write(epoch=self.epoch) as s:  # type: ignore[call-arg]
                yield s

    def _event(self, s: Session, now: int, kind: str, row: GrantRow, data: dict[str, Any]) -> None:
        events.append(s, now, kind, row.project_id, self.actor, {"grant": row.id, **data})

    def _live(self, s: Session, gid: int) -> tuple[GrantRow, GrantRuntimeRow] | None:
        row, rt = s.get(GrantRow, gid), s.get(GrantRuntimeRow, gid)
        if row is None or rt is None or row.state not in LIVE_STATES:
            return None
        return row, rt

    # -- start ------------------------------------------------------------------------

    def begin(self, gid: int, reservation: str, log_dir: str, now: int, unserved_since: int | None) -> bool:
        """``granted`` → ``reserving`` with its runtime row (the intent to reserve)."""
        with self.tx() as s:
            row = s.get(GrantRow, gid)
            if row is None or row.state != "granted" or s.get(GrantRuntimeRow, gid) is not None:
                return False  # someone (cancel, another daemon) got there first
            row.state = "reserving"
            rt = GrantRuntimeRow(grant_id=gid, reservation=reservation, log_dir=log_dir, pending_since=now)
            self._event(s, now, "reserving", row, {
                "reservation": reservation, "width": row.width, "late_s": max(0, now - row.start)})
            if unserved_since is not None:
                # The window began while no daemon served it: the time until the group is
                # placed was not provided, so it is a breach (refunded), said in the note.
                open_outage(s, row, rt, unserved_since, now)
                self._event(s, now, "unserved", row, {
                    "since": unserved_since, "breach_gpu_seconds": row.breach_gs,
                    "message": "the window began while no daemon was serving it"})
            s.add(row)
            s.add(rt)
            return True

    def missed(self, gid: int, reservation: str, log_dir: str, now: int) -> bool:
        """A window that passed entirely while no daemon ran: nothing was provided."""
        with self.tx() as s:
            row = s.get(GrantRow, gid)
            if row is None or row.state != "granted" or s.get(GrantRuntimeRow, gid) is not None:
                return False
            row.state = "expired"
            row.ended_at = now
            set_breach(s, row, row.width * (row.end - row.start), now)
            s.add(row)
            s.add(GrantRuntimeRow(grant_id=gid, reservation=reservation, log_dir=log_dir, pending_since=now))
            self._event(s, now, "expired", row, {
                "reason": "window passed before any daemon started it", "breach_gpu_seconds": row.breach_gs})
            return True

    def placed(self, gid: int, now: int, first: bool) -> list[str]:
        """The group holds its GPUs: an open outage closes; the first time, a ``placed`` event."""
        out = []
        with self.tx() as s:
            got = self._live(s, gid)
            if got is None:
                return out
            row, rt = got
            if rt.outage_since is not None:
                lost = close_outage(s, row, rt, now)
                self._event(s, now, "restored", row, {
                    "breach_gpu_seconds": row.breach_gs, "this_outage_gpu_seconds": lost,
                    "message": "group placed; rank workers starting"})
                out.append(f"restored {row.project_id}: group placed")
            if first and row.state == "reserving":
                self._event(s, now, "placed", row, {
                    "reservation": rt.reservation, "width": row.width, "placement_delay_s": now - row.start})
                out.append(f"placed {row.project_id} ({plural(row.width, 'GPU')} held)")
            s.add(row)
            s.add(rt)
        return out

    def activate(self, gid: int, now: int) -> bool:
        with self.tx() as s:
            got = self._live(s, gid)
            if got is None or got[0].state != "reserving":
                return False
            row, rt = got
            closed = close_outage(s, row, rt, now)
            first = row.started_at is None
            row.state = "active"
            if first:
                row.started_at = now
            s.add(row)
            s.add(rt)
            self._event(s, now, "active", row, {
                "reservation": rt.reservation, "first": first,
                "start_delay_s": now - row.start if first else None,
                "breach_gpu_seconds": row.breach_gs, "breach_closed_gpu_seconds": closed})
            return True

    # -- outages ------------------------------------------------------------------------

    def open_outage(self, gid: int, now: int, kind: str, since: int, message: str) -> bool:
        with self.tx() as s:
            got = self._live(s, gid)
            if got is None or got[1].outage_since is not None:
                return False
            row, rt = got
            open_outage(s, row, rt, since, now)
            s.add(row)
            s.add(rt)
            self._event(s, now, kind, row, {  # (since as opened: never before the last outage's close)
                "width": row.width, "since": rt.outage_since, "breach_gpu_seconds": row.breach_gs, "message": message})
            return True

    def close_outage(self, gid: int, now: int, message: str) -> bool:
        with self.tx() as s:
            got = self._live(s, gid)
            if got is None or got[1].outage_since is None:
                return False
            row, rt = got
            lost = close_outage(s, row, rt, now)
            s.add(row)
            s.add(rt)
            self._event(s, now, "restored", row, {
                "breach_gpu_seconds": row.breach_gs, "this_outage_gpu_seconds": lost, "message": message})
            return True

    def update_breach(self, gid: int, now: int) -> None:
        with self.tx() as s:
            got = self._live(s, gid)
            if got is None or got[1].outage_since is None:
                return
            row, rt = got
            rt.breach_noted_at = now
            set_breach(s, row, open_breach(row, rt, now), now)
            s.add(row)
            s.add(rt)
            self._event(s, now, "breach", row, {"breach_gpu_seconds": row.breach_gs, "since": rt.outage_since})

    def regroup(self, gid: int, now: int, since: int | None) -> bool:
        """The group vanished: back to ``reserving``; an outage opens (from ``since``)."""
        with self.tx() as s:
            got = self._live(s, gid)
            if got is None:
                return False
            row, rt = got
            if row.state == "active":
                row.state = "reserving"
            if rt.outage_since is None and (row.started_at is not None or since is not None):
                open_outage(s, row, rt, now if since is None else since, now)
            rt.pending_since = now
            s.add(row)
            s.add(rt)
            self._event(s, now, "group_missing", row, {
                "reservation": rt.reservation, "outage_since": rt.outage_since})
            return True

    # -- attempts -----------------------------------------------------------------------

    def start_attempt(self, gid: int, job: str, attempt: int, gpus: int, bundles: tuple[int, ...],
                      now: int) -> bool:
        """The intent to launch: an attempt row ``running`` (once per (job, attempt))."""
        with self.tx() as s:
            row = s.get(GrantRow, gid)
            if row is None or row.state != "active" or self._attempt(s, gid, job, attempt) is not None:
                return False
            s.add(JobRunRow(grant_id=gid, job=job, attempt=attempt, state="running", gpus=gpus, started_at=now))
            self._event(s, now, "attempt_started", row, {"job": job, "attempt": attempt, "bundles": list(bundles)})
            return True

    @staticmethod
    def _attempt(s: Session, gid: int, job: str, attempt: int) -> JobRunRow | None:
        return s.exec(select(JobRunRow).where(
            JobRunRow.grant_id == gid, JobRunRow.job == job, JobRunRow.attempt == attempt)).first()

    def end_attempt(self, gid: int, job: str, attempt: int, now: int, state: str, detail: str) -> bool:
        """An attempt that will report nothing (proven dead, or could not launch)."""
        with self.tx() as s:
            row = s.get(GrantRow, gid)
            jr = self._attempt(s, gid, job, attempt)
            if row is None or jr is None or jr.state != "running":
                return False
            jr.state, jr.ended_at, jr.detail = state, now, detail
            s.add(jr)
            self._event(s, now, "attempt_ended", row, {
                "job": job, "attempt": attempt, "outcome": state, "detail": detail})
            return True

    def record_results(self, gid: int, results: Sequence[GangResult], now: int,
                       relabel: Callable[[GangResult], str] | None = None) -> list[str]:
        """Record results, once each: the executor shows a result until it is acknowledged
        (after this transaction), so one already recorded (a crash between commit and ack,
        or ``release`` returning what ``poll`` showed) is skipped. ``relabel`` may rename an
        outcome (``interrupted`` for jobs stopped because the daemon stops)."""
        out = []
        with self.tx() as s:
            row = s.get(GrantRow, gid)
            if row is None:
                return out
            for r in results:
                jr = self._attempt(s, gid, r.job, r.attempt)
                if jr is not None and has_result(jr):
                    continue
                late = jr is not None and jr.state != "running"
                if jr is None:  # not ours by the ledger (should not happen): keep the facts anyway
                    jr = JobRunRow(grant_id=gid, job=r.job, attempt=r.attempt, state="running",
                                   gpus=len(r.exit_codes))
                outcome = relabel(r) if relabel is not None else r.outcome
                if not late:
                    jr.state = outcome
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
                self._event(s, now, "attempt_ended", row, {
                    "job": r.job, "attempt": r.attempt, "outcome": outcome,
                    "exit_codes": list(r.exit_codes), "gpu_seconds": r.gpu_seconds,
                    "detail": r.detail, "late": late})
                out.append(f"{outcome} {row.project_id}/{r.job}#{r.attempt} exit {list(r.exit_codes)}")
        return out

    def terminating(self, gid: int, now: int, grace: int, jobs: Sequence[str]) -> bool:
        with self.tx() as s:
            got = self._live(s, gid)
            if got is None or got[1].term_sent_at is not None:
                return False
            row, rt = got
            rt.term_sent_at = now
            s.add(rt)
            self._event(s, now, "terminating", row, {"end": row.end, "grace_s": grace, "jobs": list(jobs)})
            return True

    def interrupt(self, gid: int, now: int) -> bool:
        """The daemon stops and takes its local Ray with it: from now until a daemon places the
        group again the window is not provided (an outage, refunded)."""
        with self.tx() as s:
            got = self._live(s, gid)
            if got is None or got[0].state == "granted":
                return False
            row, rt = got
            if rt.outage_since is None:
                open_outage(s, row, rt, now, now)
            s.add(row)
            s.add(rt)
            self._event(s, now, "interrupted", row, {
                "message": "the daemon stopped with its local Ray; jobs resume when a daemon is back"})
            return True

    # -- the end ------------------------------------------------------------------------

    def finish_early(self, gid: int, now: int, state: str,
                     pull: Callable[[Session, int], list[str]]) -> tuple[int, list[str]] | None:
        """Every job ended: cut the window at ``now``, refund the rest, let waiting grants
        start earlier, all one transaction. Returns (refund, moves) or None."""
        with self.tx() as s:
            got = self._live(s, gid)
            if got is None:
                return None
            row, rt = got
            close_outage(s, row, rt, now)
            s.add(rt)
            refund = end_grant(s, row, now, state, self.actor, {"breach_gpu_seconds": row.breach_gs})
            return refund, pull(s, now)

    def expire(self, gid: int, now: int, ever_placed: bool) -> bool:
        """The window is over: ``expired`` (the intent; release and report follow)."""
        with self.tx() as s:
            got = self._live(s, gid)
            if got is None:
                return False
            row, rt = got
            never = row.started_at is None and not ever_placed
            if never and rt.outage_since is None:
                rt.outage_since = row.start  # never placed at all
            close_outage(s, row, rt, now)
            row.state = "expired"
            row.ended_at = now
            s.add(row)
            s.add(rt)
            self._event(s, now, "expired", row, {
                "end": row.end, "breach_gpu_seconds": row.breach_gs,
                "reason": "window ended" if not never else "window ended before the group was placed"})
            return True

    def finalize(self, gid: int, now: int, why: str,
                 report: Callable[[GrantRow, list[JobRunRow], str], dict[str, Any]],
                 notify: bool, pull: Callable[[Session, int], list[str]] | None) -> tuple[dict[str, Any], list[str]] | None:
        """Close attempts still ``running`` (killed), write the report; once."""
        with self.tx() as s:
            row, rt = s.get(GrantRow, gid), s.get(GrantRuntimeRow, gid)
            if row is None or rt is None or rt.finalized:
                return None
            close_outage(s, row, rt, now)
            runs = list(s.exec(select(JobRunRow).where(JobRunRow.grant_id == gid).order_by(col(JobRunRow.id))).all())
            for jr in runs:
                if jr.state == "running":
                    jr.state, jr.ended_at = "killed", now
                    jr.detail = f"{why}; result not collected"
                    s.add(jr)
            if row.ended_at is None:
                row.ended_at = now
            rep = report(row, runs, rt.log_dir)
            row.report_json = json.dumps(rep, sort_keys=True)
            rt.finalized = True
            rt.notified = not notify
            s.add(row)
            s.add(rt)
            self._event(s, now, "report", row, {
                "state": row.state, "succeeded": rep["succeeded"],
                "used_gpu_seconds": rep["gpu_seconds"]["used"],
                "refunded_gpu_seconds": row.refunded_gs, "breach_gpu_seconds": row.breach_gs})
            return rep, (pull(s, now) if pull is not None else [])

    def notified(self, gid: int, now: int, target: str, error: str | None) -> None:
        with self.tx() as s:
            row, rt = s.get(GrantRow, gid), s.get(GrantRuntimeRow, gid)
            if row is None or rt is None or rt.notified:
                return
            rt.notified = True
            s.add(rt)
            data: dict[str, Any] = {"target": target}
            if error is not None:
                data["error"] = error
            self._event(s, now, "notified" if error is None else "notify_failed", row, data)

    def map_nodes(self, changes: Sequence[tuple[str, int, str | None]], now: int) -> None:
        """Set ``(pool, index) -> node_id`` (None: the node is gone), one event per change."""
        with self.tx() as s:
            for pool, index, node_id in changes:
                row = s.get(NodeMapRow, (pool, index))
                old = None if row is None else row.node_id
                if row is None:
                    row = NodeMapRow(pool=pool, index=index, since=now)
                if old == node_id and row.since != now:
                    continue
                row.node_id, row.since = node_id, now
                s.add(row)
                events.append(s, now, "node_mapped" if node_id else "node_lost", f"{pool}/{index}", self.actor,
                              {"pool": pool, "index": index, "node": node_id, "was": old})

    def move_nodes(self, gid: int, dead: set[int], now: int, cluster: ClusterConfig) -> list[int] | None:
        """Move a live grant off its pool's lost nodes ``dead`` (calendar indices), where
        the calendar has other nodes free for the rest of its window (``NodeCalendar.replace``,
        in the same transaction as every admission, so the move cannot collide with one):
        ``moved_nodes`` event, and the nodes it is on now. None: no such nodes are free, it
        stays (its window is then a breach while unplaced). A grant none of whose nodes is
        dead is left as it is (its nodes returned)."""
        with self.tx() as s:
            row = s.get(GrantRow, gid)
            nodes = None if row is None else nodes_of(row)
            if row is None or row.state not in LIVE_STATES or not nodes:
                return nodes
            lost = sorted(set(nodes) & dead)
            if not lost or row.end <= now:
                return nodes
            sched = load_schedule(s, cluster, now)
            if row.pool not in sched.pools:
                return None
            cal = sched.pools[row.pool][1]
            new = cal.replace(row.start, row.end, row.width, tuple(nodes), dead, now)
            if new is None:
                return None
            row.nodes = nodes_json(new)
            s.add(row)
            self._event(s, now, "moved_nodes", row, {
                "from": sorted(nodes), "to": sorted(new), "lost": lost,
                "message": f"off lost node{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of pool {row.pool}"})
            return sorted(new)

    def pool_census(self, census: dict[str, int]) -> None:
        """Record the GPUs Ray has on each pool's nodes (``cs_lease.pool_gpus``), read by
        ``cellsched daemon`` and by submit (``lease.pool_without_nodes``)."""
        with self.tx() as s:
            row = s.get(LeaseRow, 1)
            if row is not None:
                row.pool_gpus = json.dumps(census, sort_keys=True)
                s.add(row)

    def orphan_released(self, name: str, unreported: int, now: int) -> None:
        with self.tx() as s:
            events.append(s, now, "orphan_released", name, self.actor, {
                "reservation": name, "unreported_results": unreported})

    def pull_forward(self, s: Session, now: int, cluster: ClusterConfig,
                     not_before: Callable[[Session, GrantRow], int | None]) -> list[str]:
        """Inside a write: waiting grants start earlier where freed capacity allows (never
        later), by the cluster's ``policy.pull_forward`` (docs/admission.md), exactly as the
        simulator does: ``start_now`` starts, longest first, each grant whose whole window
        fits now; ``compact`` moves each, in (start, id) order, to the earliest window that
        fits. Returns one line per move."""
        rule, reserve = pull_rule(cluster.policy.pull_forward)
        sched = load_schedule(s, cluster, now)
        rows = s.exec(waiting_grants(now).order_by(col(GrantRow.start), col(GrantRow.id))).all()
        waiting: list[tuple[GrantRow, int]] = []
        for row in rows:
            if row.pool not in sched.pools or row.team not in sched.teams:
                continue
            nb = not_before(s, row)
            earliest = max(now, nb or now)
            if rule == "start_now" and earliest > now:
                continue  # it may not start yet
            waiting.append((row, earliest))
        # A ValueError means the schedule is over-committed (a pool shrank): leave it be.
        moves: list[tuple[GrantRow, Grant]] = []
        if rule == "start_now":
            by_id = {row.id or 0: row for row, _ in waiting}
            try:
                started = start_waiting_now(sched, [(row.id or 0, grant_of(row)) for row, _ in waiting], now,
                                            reserve)
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
        return [self.moved_earlier(s, row, new, now) for row, new in moves]

    def moved_earlier(self, s: Session, row: GrantRow, new: Grant, now: int) -> str:
        """Inside a pull-forward's transaction: ``row``'s window moves to ``new``'s (and to its
        nodes, which may differ)."""
        old = (row.start, row.end)
        row.start, row.end, row.nodes = new.start, new.end, nodes_json(new.nodes)
        s.add(row)
        self._event(s, now, "moved_earlier", row, {
            "from_start": old[0], "from_end": old[1], "start": new.start, "end": new.end,
            "nodes": list(new.nodes or ())})
        return f"moved {row.project_id} earlier by {old[0] - new.start} s"


def ledger_id(ledger: Ledger, now: int) -> str:
    """This ledger's id (created once, with its event): group names carry it, so several
    ledgers may share one Ray cluster without ever adopting each other's groups."""
    with ledger.read() as s:
        info = s.get(RuntimeInfo, 1)
        if info is not None:
            return info.ledger_id
    with ledger.write() as s:
        info = s.get(RuntimeInfo, 1)
        if info is None:
            info = RuntimeInfo(id=1, ledger_id=uuid.uuid4().hex[:10])
            s.add(info)
            events.append(s, now, "ledger_id", info.ledger_id, "daemon", {"ledger_id": info.ledger_id})
        return info.ledger_id


def has_result(jr: JobRunRow) -> bool:
    """Whether an executor result was recorded for this attempt: only results set the exit
    codes (one per rank, so never empty); the reconciler's own verdicts (``lost`` when the
    fate is unknown, ``killed`` at finalize) leave them empty."""
    return jr.exit_codes not in ("", "[]")
