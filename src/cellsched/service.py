"""The service layer: submit, cancel and the reads, as functions of (env, caller, now).

The CLI passes the OS user as ``caller``; a server in front of the ledger would pass an
authenticated identity to the same functions. Each write is one ledger transaction holding
the ledger-wide write lock: read the snapshot, decide with the pure core, write, commit.
Submits made at the same time share one such transaction (group commit, ``SubmitQueue``).
"""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, bindparam, func, or_
from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
from sqlalchemy import update as sa_update
from sqlmodel import Session, col, select

from cellsched import fmt
from cellsched.core import alternatives as alts
from cellsched.core.admission import Alternative, Grant, Refusal, Schedule, request_from_spec
from cellsched.core.allowance import BestEffortUse, period_bounds, split_by_period
from cellsched.errors import BadInput, CellschedError, Denied, Failed, NotFound
from cellsched.expected import ExpectQueue, RatiosCache, fill_batch, fill_outcomes
from cellsched.ledger import best_effort as be_ledger
from cellsched.ledger import events
from cellsched.ledger.breaches import breach_intervals
from cellsched.ledger.db import Ledger, default_url
from cellsched.ledger.lease import pool_without_nodes
from cellsched.ledger.lifecycle import end_grant
from cellsched.ledger.snapshot import grant_of, load_schedule, nodes_json, nodes_of
from cellsched.ledger.tables import (
    BE_LIVE_STATES,
    LIVE_STATES,
    BestEffortRow,
    CodeHolderRow,
    CodeRow,
    GrantRow,
    JobRunRow,
    ProjectRow,
    SchemaInfo,
)
from cellsched.receipt import key_paths, sign, verify as verify_receipt
from cellsched.spec.cluster import ClusterConfig, Pool, Team
from cellsched.spec.code import Snapshot
from cellsched.spec.load import Sealed, load_cluster, load_sealed, load_written
from cellsched.spec.models import ProjectSpec
from cellsched.spec.seal import canonical_json, digest, from_canonical, project_id


class AdmissionCache:
    """The admission snapshot (``load_schedule``) kept between submits on one ``Env``, so
    that a submit does not read every grant ever made.

    It is only ever used inside the ledger's write transaction (which holds the ledger-wide
    write lock), and only if the ledger's *version* read there is the one it reflects: the
    event chain's head, ``(head_seq, head_hash)`` (``ledger_seq`` plus the head's hash). Every
    write that changes a grant appends an event, so another writer (the daemon, another
    process, another ``Env``) moves the version and the next submit rebuilds. The hash makes
    the version unique even across a rolled-back write: the cache is refreshed inside the
    transaction, before its commit, and a write that then fails leaves the ledger at the old
    version, which no longer matches (a later event at the same ``seq`` has another hash).

    A snapshot built at ``now`` holds windows from ``now`` on: it serves submits at that
    instant or later only. Breach rows recorded without an event only ever refund, so a
    snapshot that missed them is conservative (it never over-commits). ``take`` hands the
    snapshot out (the cache is empty while a submit mutates it); a submit gives it back
    with ``put`` only if what it did is in the ledger too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Admission | None = None
        self.hits = 0
        self.builds = 0

    def take(self, s: Session, cluster: ClusterConfig, now: int) -> Admission:
        """The snapshot for this transaction (the cached one if current, else rebuilt)."""
        held = self.take_current(s, now, cluster)
        if held is not None:
            return held
        version = ledger_version(s)
        built = Admission.build(s, cluster, now, version)
        with self._lock:
            self.builds += 1
        return built

    def take_current(self, s: Session, now: int, cluster: ClusterConfig) -> Admission | None:
        """The cached snapshot if it reflects the ledger as this transaction sees it, and was
        built on ``cluster`` (the config in force: one read again since, by the server, makes
        it stale whoever puts it back), else None (and the cache is emptied either way until
        ``put``)."""
        version = ledger_version(s)
        with self._lock:
            held, self._held = self._held, None
            if held is not None and held.version == version and now >= held.built_at and held.cluster is cluster:
                self.hits += 1
                return held
        return None

    def put(self, held: Admission, version: tuple[int, str]) -> None:
        """Keep ``held`` (mutated by this transaction's writes, if any) as the snapshot of
        the ledger at ``version``: call it inside the transaction, after its last event."""
        with self._lock:
            self._held = Admission(held.schedule, version, held.built_at, held.live, held.cluster)

    def clear(self) -> None:
        with self._lock:
            self._held = None

    def note_build(self) -> None:
        """Count a snapshot built by a caller (a batch that rebuilt it mid-way)."""
        with self._lock:
            self.builds += 1


@dataclass(frozen=True)
class Admission:
    """A schedule built at ``built_at`` that reflects the ledger at ``version``, and the
    grants holding GPUs in it from ``built_at`` on, by id (``live``: the expected start's
    replay input, ``cellsched.expected``; kept with the schedule, so that the replay of a
    submit that waits reads no grant)."""

    schedule: Schedule
    version: tuple[int, str]
    built_at: int
    live: list[tuple[int, Grant]] = field(default_factory=list)
    cluster: ClusterConfig | None = None  # the config it was built on

    @classmethod
    def build(cls, s: Session, cluster: ClusterConfig, now: int, version: tuple[int, str] = (0, "")) -> Admission:
        live: list[tuple[int, Grant]] = []
        return cls(load_schedule(s, cluster, now, live), version, now, live, cluster)

    def forget(self, grant_id: int | None) -> None:
        """Grant ``grant_id`` ended (cancelled, replaced): it no longer holds GPUs ahead."""
        self.live[:] = [kg for kg in self.live if kg[0] != grant_id]


def ledger_version(s: Session) -> tuple[int, str]:
    """The event chain's head, ``(seq, hash)``: what an admission snapshot reflects."""
    info = s.get(SchemaInfo, 1)
    return (0, "") if info is None else (info.head_seq, info.head_hash)


@dataclass
class Env:
    """What every service call needs: the cluster config, its path and the ledger (and the
    admission snapshot kept for it, see :class:`AdmissionCache`)."""

    cluster: ClusterConfig
    cluster_path: Path
    ledger: Ledger
    admission: AdmissionCache = field(default_factory=AdmissionCache, repr=False, compare=False)
    # The expected start's (``cellsched.expected``): ratios kept a minute, one replay at a time.
    ratios: RatiosCache = field(default_factory=RatiosCache, repr=False, compare=False)
    expects: ExpectQueue = field(default_factory=lambda: ExpectQueue(), repr=False, compare=False)
    submits: SubmitQueue = field(default_factory=lambda: SubmitQueue(), repr=False, compare=False)
    # The server's token lookups, kept briefly (``server/tokens.py``); None until first used.
    token_cache: Any = field(default=None, repr=False, compare=False)
    # ``_stamp`` of the cluster config when it was read, for ``refresh_cluster``.
    cluster_stamp: tuple[int, ...] | None = field(default=None, repr=False, compare=False)

    def refresh_cluster(self, check: Callable[[Path], None] | None = None) -> bool:
        """Read the cluster config again if its file changed since it was read (a
        long-running server's: an edit takes effect at the next request, as at the next
        command). ``check`` may refuse the file (BadInput); so may its validation: then the
        config in force stays, and the error is raised once for the caller to log. A new
        config drops the admission snapshot, built on the old one. Returns whether it
        changed."""
        try:
            st = self.cluster_path.stat()
        except OSError as e:
            self.cluster_stamp = (0, 0, -1, 0)  # (said once, until the file is back)
            raise NotFound(f"{self.cluster_path}: {e.strerror}; the config read before stays in force") from None
        stamp = _stamp(st)
        if stamp == self.cluster_stamp:
            return False
        self.cluster_stamp = stamp  # (taken before reading: an edit while it is read is read again)
        if check is not None:
            check(self.cluster_path)
        cluster = load_cluster(self.cluster_path)
        self.cluster = cluster
        self.admission.clear()
        return True

    @property
    def private_key(self) -> Path:
        return key_paths(self.cluster_path)[0]

    @property
    def public_key(self) -> Path:
        return key_paths(self.cluster_path)[1]

    @property
    def base_dir(self) -> Path:
        return self.cluster_path.parent


def open_env(cluster_path: str | Path, db_url: str | None = None) -> Env:
    path = Path(cluster_path)
    if not path.exists():
        raise NotFound(f"{path}: no cluster config (run `cellsched init` or pass --cluster)")
    st = path.stat()
    cluster = load_cluster(path)
    return Env(cluster, path, Ledger(db_url or default_url(path)), cluster_stamp=_stamp(st))


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    """What tells that the cluster config changed: mtime, inode, size, and mode (a chmod
    can make a refused file acceptable)."""
    return (st.st_mtime_ns, st.st_ino, st.st_size, st.st_mode)


# -- submit ----------------------------------------------------------------------------


@dataclass
class SubmitOutcome:
    project_id: str
    digest: str
    granted: bool
    grant: GrantRow | None = None
    refusal: Refusal | None = None
    existing: bool = False
    remaining_gs: int | None = None
    # Which period ``remaining_gs`` is of, for people: "this month", "in January 2027", "in total".
    remaining_period: str | None = None
    allowance_gs: int | None = None
    replaced: str | None = None
    code: dict[str, Any] | None = None  # the code snapshot (digest, files, bytes, ...) if any
    delay: alts.Delay | None = None  # what put the window after the earliest start asked for
    dry_run: bool = False  # decided, nothing written (``submit --dry-run``, ``plan``)
    # A granted answer's expected start and what it rests on (``cellsched.expected``).
    expected_start: int | None = None
    expected_basis: str | None = None
    # Best-effort work (docs/lending.md): no grant; queued (``best_effort``, the submission
    # as ``ledger.best_effort.submission_json`` shows it) or refused, and the team's
    # best-effort allowance after it (``be_use``).
    kind: str = "guaranteed"
    best_effort: dict[str, Any] | None = None
    be_use: BestEffortUse | None = None

    @property
    def queued(self) -> bool:
        return self.best_effort is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "project": self.project_id,
            "digest": self.digest,
            "decision": "granted" if self.granted else "queued" if self.queued else "refused",
            "existing": self.existing,
        }
        if self.kind != "guaranteed":  # a guaranteed answer stays as it always was
            out["kind"] = self.kind
        if self.best_effort is not None:
            out["best_effort"] = self.best_effort
        if self.be_use is not None:
            out["best_effort_allowance_gpu_hours"] = self.be_use.allowance / 3600
            out["best_effort_remaining_gpu_hours"] = self.be_use.remaining / 3600
        if self.code is not None:
            out["code"] = self.code
        if self.dry_run:
            out["dry_run"] = True
        if self.grant is not None:
            out["grant"] = grant_json(self.grant)
            out["remaining_gpu_hours"] = None if self.remaining_gs is None else self.remaining_gs / 3600
            out["remaining_period"] = self.remaining_period
            out["allowance_gpu_hours"] = None if self.allowance_gs is None else self.allowance_gs / 3600
            out["expected_start"] = self.expected_start
            out["expected_start_basis"] = self.expected_basis
        if self.delay is not None:
            out["delay"] = {"reason": self.delay.reason, "message": self.delay.message,
                            "wanted_start": self.delay.wanted, "free_from": self.delay.free_from,
                            "sooner": [alternative_json(a) for a in self.delay.sooner]}
        if self.refusal is not None:
            out["refusal"] = refusal_json(self.refusal)
        if self.replaced:
            out["replaced"] = self.replaced
        return out


def period_phrase(t: int, period: str, now: int) -> str:
    """The allowance period containing ``t`` as the charge line names it: ``this month``
    when it is ``now``'s, else by name (``in January 2027``, ``in 2027-Q1``, ``in 2027``);
    ``in total`` for a period of ``none``."""
    if period == "none":
        return "in total"
    if period_bounds(t, period) == period_bounds(now, period):
        return f"this {period}"
    return f"in {alts.period_label(t, period)}"


def _team_member(env: Env, team: str, caller: str, admins_too: bool = True) -> bool:
    cfg = env.cluster.team(team)
    return (admins_too and caller in env.cluster.admins) or (cfg is not None and caller in cfg.members)


def check_may_read_logs(env: Env, team: str, project: str, caller: str) -> None:
    """A job's output is its team's (it may hold data, paths, credentials a job printed):
    members of the owning team and admins may read it; :class:`Denied` otherwise. The
    local CLI passes no caller (""): it reads files on this host, and their permissions
    are what govern it there."""
    if caller and not _team_member(env, team, caller):
        raise Denied(f"{caller} may not read the logs of {project}: only members of team {team} and admins may")


def submit(env: Env, spec: ProjectSpec | Sealed | str | Path, caller: str, now: int, *,
           code_source: str | None = None, dry_run: bool = False,
           code_info: dict[str, Any] | None = None) -> SubmitOutcome:
    """Validate, seal, admit and record ``spec`` (all or nothing), and answer only once it
    is committed.

    A spec with ``code`` comes with its snapshot (a :class:`Sealed`, or a file path, which is
    snapshotted here); the snapshot is stored in the ledger with the grant, once per digest.
    A bare :class:`ProjectSpec` with code is accepted only if the ledger already holds its
    snapshot: the server's way, after the client uploaded it (``store_code``); then
    ``code_source`` (where the client took the code from, for people) makes the outcome's
    ``code`` the same as a local submit's.

    Submits made at the same time on one ``Env`` (the server's threads) are admitted one
    after another in one write transaction (:class:`SubmitQueue`, group commit); each gets
    the answer it would get alone in that order. Admission reads the snapshot kept in
    ``env.admission`` when the ledger has not moved since, else rebuilds it
    (:class:`AdmissionCache`).

    ``dry_run``: the same decision on a snapshot read now, nothing written (no event, no
    grant, no code stored): ``submit --dry-run`` and ``plan``. A spec with code then needs
    no stored snapshot; ``code_info`` (the client's description of it) is its ``code``."""
    if isinstance(spec, (str, Path)):
        spec = load_sealed(spec)
    snap: Snapshot | None = None
    if isinstance(spec, Sealed):
        spec, snap = spec.spec, spec.code
    d = digest(spec)
    pid = project_id(spec, d)
    team = env.cluster.team(spec.team)
    # Only members spend a team's hours; admins may cancel, not submit, for a team.
    if team is not None and not _team_member(env, spec.team, caller, admins_too=False):
        raise Denied(f"{caller} is not a member of team {spec.team} (members: {', '.join(team.members) or 'none'})")
    code_digest = None if spec.code is None else spec.code.digest
    code_json = None
    if code_digest is not None:
        if snap is not None and snap.digest != code_digest:
            raise BadInput(f"code: the snapshot given is sha256:{snap.digest}, not the spec's")
        code_json = {"digest": code_digest, **(snap.to_json() if snap else {})}
    job = _Submit(spec, snap, caller, now, code_source, d, pid, code_json)
    if spec.best_effort:
        if dry_run and code_info is not None and snap is None and code_digest is not None:
            job.code_json = {**code_info, "digest": code_digest}
        return _submit_best_effort(env, job, dry_run)
    if dry_run:
        if code_info is not None and snap is None and code_digest is not None:
            job.code_json = {**code_info, "digest": code_digest}
        return _dry_run(env, job)
    if team is None:
        # Nobody's hours: refused (unknown_team) and not recorded. Anyone may send such a
        # spec, and the ledger's events are what teams were granted and refused.
        out = _dry_run(env, job)
        out.dry_run = False
        return out
    return env.submits.run(env, job)


def _dry_run(env: Env, job: _Submit) -> SubmitOutcome:
    """``submit`` with nothing written: decided by the same code on a snapshot read now."""
    with env.ledger.read() as s:
        b = _Batch(env, s, [job], dry=True)
        outcome = b.decide(job)
        outcome.dry_run = True
        if outcome.granted and not outcome.existing and b.pending:
            row = b.pending[-1].grant
            assert row is not None
            outcome.grant = GrantRow.model_construct(**{**row, "id": None})
        if outcome.grant is not None:
            fill_outcomes(env, [(outcome, job.now)], None if b.adm is None else b.adm.live, s)
        return outcome


@dataclass(eq=False)
class _Submit:
    """One submit on its way through :class:`SubmitQueue`: the sealed spec, who asks, when,
    and (once its batch is committed, or failed) its answer."""

    spec: ProjectSpec
    snap: Snapshot | None
    caller: str
    now: int
    code_source: str | None
    digest: str
    pid: str
    code_json: dict[str, Any] | None
    outcome: SubmitOutcome | None = None
    error: BaseException | None = None
    done: bool = False
    # Its batch's live grants as committed, with the ledger's sequence then (None: not kept).
    live: tuple[int, tuple[tuple[int, Grant], ...]] | None = None
    wake: threading.Event = field(default_factory=threading.Event)  # answered, or to lead


class SubmitQueue:
    """Group commit for the submits of one ``Env``.

    A submit joins the queue. The thread of the submit at the head of the queue leads:
    it takes the ledger's write lock once, admits the queued submits (up to
    :attr:`MAX_BATCH`) one after another in that one transaction, commits once (one WAL
    flush for all), and only then hands each submit its answer and wakes its thread; then
    it hands the lead to the head of the queue, the submits that arrived meanwhile. So
    under load a batch holds every submit that waited for the lock, and alone a submit is
    a batch of one, as before.

    Each answer is the one the submit would get alone in the batch's order: admission runs
    on the snapshot as the submits before it left it, and their writes are visible to its
    reads (:class:`_Batch`). A submit's bad input (an error the service raises) is its own
    answer and writes nothing. Any other failure (the database refusing a row, a lost
    connection, a failed commit) rolls the whole batch back and every submit of it is run
    again alone, in order, in its own transaction: the failure reaches the one submit it
    belongs to, and nothing was answered before (a crash mid-batch loses only unanswered
    submits)."""

    MAX_BATCH = 64  # submits per transaction: bounds how long one batch holds the lock

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Submit] = []
        self._leading = False  # a thread is writing a batch (or about to): the others wait
        self.batches = 0  # batches answered (a batch retried one by one counts each retry)
        self.largest = 0  # the most submits one batch held

    def waiting(self) -> int:
        """Submits queued for the next batch (not the one being written)."""
        with self._lock:
            return len(self._queue)

    @property
    def busy(self) -> bool:
        """Whether a batch is being written (or its leader is about to write it)."""
        return self._leading

    def run(self, env: Env, job: _Submit) -> SubmitOutcome:
        """Queue ``job`` and wait for its answer, leading its batch if it is at the head of
        the queue; its outcome, or its error raised."""
        with self._lock:
            self._queue.append(job)
            lead = not self._leading
            self._leading = True
        if not lead:
            job.wake.wait()  # answered, or handed the lead
        if not job.done:
            batch: list[_Submit] = []
            try:
                with self._lock:
                    batch = self._queue[:self.MAX_BATCH]  # ``job`` is at the head
                    del self._queue[:self.MAX_BATCH]
                self._answer(env, batch)
            except BaseException:  # interrupted: the submits answered so far are woken now
                for j in batch:
                    if j.done:
                        j.wake.set()
                raise
            finally:
                with self._lock:
                    if self._queue:
                        self._queue[0].wake.set()  # its thread leads the next batch
                    else:
                        self._leading = False
            # Committed, and the next batch may be writing: the expected starts of this
            # one's waiting grants (one replay), then the answers.
            try:
                fill_batch(env, batch)
            finally:
                for j in batch:
                    j.wake.set()
        if job.error is not None:
            raise job.error
        assert job.outcome is not None
        return job.outcome

    def _answer(self, env: Env, batch: list[_Submit]) -> None:
        try:
            results = _run_batch(env, batch)
        except Exception as e:  # noqa: BLE001 - the batch was rolled back, nobody answered
            # (a commit whose outcome is unknown: the reruns find its grants, ``existing``)
            env.admission.clear()  # it may hold the rolled-back batch's grants
            if len(batch) > 1:
                for job in batch:  # one at a time, in order: each gets its own failure
                    self._answer(env, [job])
                return
            results = [e]
        except BaseException as e:  # interrupted: nobody waits forever
            self._settle(batch, [e] * len(batch))
            raise
        self._settle(batch, results)

    def _settle(self, batch: list[_Submit], results: list[SubmitOutcome | BaseException]) -> None:
        with self._lock:
            self.batches += 1
            self.largest = max(self.largest, len(batch))
        for job, result in zip(batch, results):
            if isinstance(result, BaseException):
                job.error = result
            else:
                job.outcome = result
            job.done = True  # woken by the leader (``run``) once the expected starts are in


def _run_batch(env: Env, batch: list[_Submit]) -> list[SubmitOutcome | BaseException]:
    """Admit ``batch`` in order in one write transaction and commit it: each submit's
    outcome, or the service error that is its answer. Raises (and commits nothing) on any
    other failure."""
    with env.ledger.write() as s:
        b = _Batch(env, s, batch)
        results: list[SubmitOutcome | BaseException] = []
        for job in batch:
            try:
                results.append(b.decide(job))
            except CellschedError as e:  # its bad input: written nothing (``dirty`` says if it
                results.append(e)  # had touched the snapshot, which is then rebuilt)
        b.flush()
        if b.adm is not None and not b.dirty:
            # The batch's grants are in it, exactly as they are in the ledger now.
            version = ledger_version(s)
            env.admission.put(b.adm, version)
            if any(isinstance(r, SubmitOutcome) and r.grant is not None and r.grant.start > job.now
                   for job, r in zip(batch, results)):
                live = (version[0], tuple(b.adm.live))  # a copy: the next batch changes the kept one
                for job in batch:
                    job.live = live
    return results


@dataclass(eq=False)
class _Plan:
    """What one submit writes, decided by :meth:`_Batch.decide` and written (with the other
    submits' plans) by :meth:`_Batch.flush`: a refusal's event, or a grant's rows (its
    project, its code snapshot if new, the grant it replaces) and event."""

    job: _Submit
    outcome: SubmitOutcome
    event: dict[str, Any] = field(default_factory=dict)  # its event's data (granted: set when written)
    grant: dict[str, Any] | None = None  # the cs_grant row, without id and receipt
    nodes: tuple[int, ...] = ()
    project: dict[str, Any] | None = None  # the cs_project row, if new
    code: dict[str, Any] | None = None  # the cs_code row, if new
    holder: dict[str, Any] | None = None  # the cs_code_holder row, if the team is new to the code
    old: GrantRow | None = None  # the grant this one replaces
    granted: Grant | None = None  # the window as the snapshot took it


class _Batch:
    """One write transaction's submits: decided one after another on one admission
    snapshot, their rows and events written together (:meth:`flush`).

    Reads see the writes of the submits before: a submit whose reads could touch what a
    pending plan writes (the same project, code, or a replace) has the pending plans
    written first; the projects of the batch are looked up in one query, and so are the
    batch's names that a live grant or best-effort submission holds (``named``: a name
    outside it and outside the batch's own plans is not in use, with no query)."""

    def __init__(self, env: Env, s: Session, batch: list[_Submit], dry: bool = False) -> None:
        self.env, self.s, self.dry = env, s, dry
        self.adm: Admission | None = None
        self.dirty = False  # the snapshot is no longer the ledger's (plus the pending plans')
        self.pending: list[_Plan] = []
        self.pending_names: set[str] = set()
        pids = list({job.pid for job in batch})
        p = ProjectRow.__table__.c  # type: ignore[attr-defined]
        self.projects: dict[str, str] = dict(s.connection().execute(
            sa_select(p.id, p.digest).where(p.id.in_(pids))).all()) if pids else {}
        names = sorted({job.spec.name for job in batch})
        g, be = GrantRow.__table__.c, BestEffortRow.__table__.c  # type: ignore[attr-defined]
        # Under the write lock nothing else writes until the commit, so this holds for the
        # batch, plus the names its own plans take (added in ``_plan``).
        self.named: set[str] = set(s.connection().execute(
            sa_select(g.project).where(g.project.in_(names), g.state.in_(LIVE_STATES))
            .union(sa_select(be.project).where(be.project.in_(names), be.state.in_(BE_LIVE_STATES)))
        ).scalars()) if names else set()

    # -- the admission snapshot -----------------------------------------------------------

    def admission(self, now: int) -> Admission:
        """The snapshot for a submit at ``now``: the ledger's as the batch has left it."""
        if self.adm is None and self.dry:  # a snapshot of its own: the kept one is the writers'
            self.adm = Admission.build(self.s, self.env.cluster, now)
        elif self.adm is None:
            self.adm = self.env.admission.take(self.s, self.env.cluster, now)
        elif self.dirty or now < self.adm.built_at:
            self.flush()
            self.adm = Admission.build(self.s, self.env.cluster, now)
            self.env.admission.note_build()
        self.dirty = False
        return self.adm

    # -- one submit ---------------------------------------------------------------------

    def decide(self, job: _Submit) -> SubmitOutcome:
        """Admit ``job`` against the snapshot and plan its writes (reads only: nothing is
        written here); its outcome, or a service error."""
        env, s, spec, now, d, pid = self.env, self.s, job.spec, job.now, job.digest, job.pid
        code_digest = None if spec.code is None else spec.code.digest
        if code_digest is not None or spec.replaces or spec.name in self.pending_names:
            self.flush()  # its reads must see the batch's writes so far
        code_json, missing, hold = _code_of(env, s, job, self.dry)
        known = self.projects.get(pid)
        existing = known is not None and known == d
        if existing:
            row = s.exec(select(GrantRow).where(GrantRow.project_id == pid, GrantRow.digest == d)
                         .order_by(col(GrantRow.id).desc())).first()
            # A cancelled or replaced grant is no answer to a new submit: admit it again.
            if row is not None and row.state not in ("cancelled", "replaced"):
                held = self.admission(now).schedule.teams.get(row.team)
                # A copy: a later submit of the batch may change the session's row (a replace).
                row = GrantRow.model_construct(**row.model_dump())
                return SubmitOutcome(
                    pid, d, True, row, existing=True, allowance_gs=held.book.allowance if held else None,
                    remaining_gs=held.book.remaining(row.start) if held else None, code=code_json,
                    remaining_period=period_phrase(row.start, held.book.period, now) if held else None,
                )
        pool = env.cluster.pool(spec.budget.pool) if spec.budget.pool else None
        unplaceable = None if pool is None else pool_without_nodes(s, pool)
        if unplaceable is not None:
            raise BadInput(f"budget.pool: {unplaceable}")
        sched = self.admission(now).schedule
        old = _replaced_grant(s, spec, job.caller, env) if spec.replaces else None
        request = request_from_spec(spec)
        in_use = None if spec.replaces or spec.name not in self.named else _name_in_use(s, spec.name, d)
        if in_use is not None:
            decision: Any = in_use
        else:
            if old is not None:
                self.dirty = True  # released below; stays so if this submit is refused
                sched.release(grant_of(old), now)  # as end_grant will cut it, if this is granted
            decision = sched.admit(request, now)
        if isinstance(decision, Refusal):
            outcome = SubmitOutcome(pid, d, False, refusal=decision, code=code_json)
            self._plan(_Plan(job, outcome, event={
                "digest": d, "team": spec.team, "reason": decision.reason,
                "gpus": spec.budget.gpus, "gpu_seconds": spec.budget.gpu_seconds,
                "message": decision.message,
            }))
            return outcome
        delay = alts.explain(sched, request, decision, now)  # before its own window is taken
        self.dirty = True  # until this submit's plan is complete
        decision = sched.commit(decision)  # the snapshot as the ledger will stand; fixes its nodes
        plan = _Plan(job, SubmitOutcome(pid, d, True, replaced=None if old is None else old.project_id,
                                        code=code_json, delay=delay), old=old, nodes=tuple(decision.nodes or ()),
                     granted=decision)
        if missing and job.snap is not None:
            snap = job.snap  # once per digest: a new version whose code did not change shares it
            plan.code = {"digest": snap.digest, "size": snap.size, "files": snap.files,
                         "content_bytes": snap.content_bytes, "blob": snap.blob, "created_at": now}
        if hold and code_digest is not None:
            plan.holder = {"digest": code_digest, "team": spec.team, "since": now}
        if not existing:
            plan.project = {"id": pid, "name": spec.name, "digest": d, "team": spec.team, "owner": spec.owner,
                            "submitted_by": job.caller, "spec_json": canonical_json(spec), "created_at": now,
                            "replaces": spec.replaces}
            self.projects[pid] = d
        plan.grant = {"project_id": pid, "project": spec.name, "digest": d, "team": spec.team,
                      "pool": decision.pool, "width": decision.width, "start": decision.start,
                      "end": decision.end, "promised_start": decision.start, "promised_end": decision.end,
                      "charged_gs": decision.gpu_seconds, "refunded_gs": 0, "state": "granted",
                      "created_at": now, "breach_gs": 0, "receipt": "", "nodes": nodes_json(decision.nodes)}
        book = sched.teams[spec.team].book
        plan.outcome.remaining_gs, plan.outcome.allowance_gs = book.remaining(decision.start), book.allowance
        plan.outcome.remaining_period = period_phrase(decision.start, book.period, now)
        self._plan(plan)
        self.dirty = False  # with the plan written, the snapshot is the ledger's (a replace's cut too)
        return plan.outcome

    def _plan(self, plan: _Plan) -> None:
        self.pending.append(plan)
        self.pending_names.add(plan.job.spec.name)
        self.named.add(plan.job.spec.name)

    # -- the writes -------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the pending plans: rows first (projects, grants with their receipts), then
        every event in the submits' order (a replace's ``replaced`` before its ``granted``)."""
        plans, self.pending = self.pending, []
        self.pending_names = set()
        if not plans:
            return
        s, conn = self.s, self.s.connection()
        codes = [p.code for p in plans if p.code is not None]
        if codes:
            conn.execute(sa_insert(CodeRow.__table__), codes)  # type: ignore[attr-defined]
        holders = [p.holder for p in plans if p.holder is not None]
        if holders:
            conn.execute(sa_insert(CodeHolderRow.__table__), holders)  # type: ignore[attr-defined]
        projects = [p.project for p in plans if p.project is not None]
        if projects:
            conn.execute(sa_insert(ProjectRow.__table__), projects)  # type: ignore[attr-defined]
        granted = [p for p in plans if p.grant is not None]
        if granted:
            g = GrantRow.__table__.c  # type: ignore[attr-defined]
            ids = conn.execute(sa_insert(GrantRow.__table__).returning(g.id, sort_by_parameter_order=True),
                               [p.grant for p in granted]).scalars().all()
            receipts = []
            for p, gid in zip(granted, ids):
                values = p.grant
                assert values is not None
                payload = {
                    "grant": gid, "project": values["project_id"], "digest": values["digest"],
                    "team": values["team"], "pool": values["pool"], "width": values["width"],
                    "start": values["start"], "end": values["end"], "gpu_seconds": values["charged_gs"],
                    "issued_at": values["created_at"],
                }
                values["id"], values["receipt"] = gid, sign(payload, self.env.private_key)
                receipts.append({"gid": gid, "receipt": values["receipt"]})
                p.outcome.grant = GrantRow.model_construct(**values)  # the row as written (not a session's)
                if self.adm is not None and p.granted is not None:
                    self.adm.live.append((gid, p.granted))
                p.event = {**{k: v for k, v in payload.items() if k != "project"}, "nodes": list(p.nodes)}
            conn.execute(sa_update(GrantRow.__table__).where(g.id == bindparam("gid"))  # type: ignore[attr-defined]
                         .values(receipt=bindparam("receipt")), receipts)
        todo: list[tuple[int, str, str, str, dict[str, Any]]] = []
        for p in plans:
            job = p.job
            if p.old is not None:
                if todo:
                    events.append_many(s, todo)
                todo = []
                end_grant(s, p.old, job.now, "replaced", job.caller, {"by": job.pid})
                if self.adm is not None:
                    self.adm.forget(p.old.id)
            todo.append((job.now, "granted" if p.grant is not None else "refused", job.pid, job.caller, p.event))
        if todo:
            events.append_many(s, todo)


def _code_of(env: Env, s: Session, job: _Submit, dry: bool) -> tuple[dict[str, Any] | None, bool, bool]:
    """The submit's ``code`` answer; whether its snapshot is missing from the ledger (to be
    stored with the submit); and whether the spec's team does not hold it yet (a grant makes
    it a holder). BadInput if it is missing and not given (unless ``dry``).

    A bare spec (the server's way) may name only a snapshot a team of the caller holds
    (``CodeHolderRow``): one stored by another team is, to this caller, not there, and the
    answer says no more than for a snapshot nobody uploaded (the digest is no secret)."""
    spec = job.spec
    code_digest = None if spec.code is None else spec.code.digest
    code_json, missing, hold = job.code_json, False, False
    if code_digest is not None:
        mine = caller_teams(env, job.caller)
        held = code_held(s, code_digest, [*mine, spec.team])
        meta = code_meta(s, code_digest)  # never the blob itself: it may be 100 MiB
        if meta is not None and job.snap is None and not held & set(mine):
            meta = None
        missing = meta is None
        if missing and job.snap is None and not dry:
            if job.code_source is not None:
                raise BadInput(f"code: the snapshot sha256:{code_digest} was not uploaded "
                               f"(PUT /api/code/{code_digest} first)")
            raise BadInput(f"code: the snapshot sha256:{code_digest} is not in the ledger for team {spec.team} "
                           "(submit the spec file, so that its code is snapshotted)")
        if job.snap is None and job.code_source is not None and meta is not None:
            code_json = {"digest": code_digest, "files": meta[1], "bytes": meta[2], "packed_bytes": meta[0],
                         "source": job.code_source}
        hold = spec.team not in held
    return code_json, missing, hold


def _name_in_use(s: Session, name: str, d: str) -> Refusal | None:
    """``name_in_use``: another version of the project (same name, another digest) holds a
    live grant and the spec does not say it replaces it (docs/admission.md), or a live
    best-effort submission has the name (docs/lending.md: names stay unambiguous for
    ``status`` and ``cancel``)."""
    rows = s.exec(select(GrantRow).where(GrantRow.project == name, col(GrantRow.state).in_(LIVE_STATES),
                                         GrantRow.digest != d).order_by(col(GrantRow.id))).all()
    if not rows:
        return _name_in_use_by_best_effort(s, name, d)
    live = rows[-1]
    more = "" if len(rows) == 1 else f" (and {fmt.plural(len(rows) - 1, 'other live grant')})"
    return Refusal(
        "name_in_use",
        f"{name} already has a live grant, {live.project_id}{more}: {fmt.plural(live.width, 'GPU')} of "
        f"{live.pool} {fmt.span(live.start, live.end)}. To replace it, put replaces = \"{live.project_id}\" "
        f"in the spec or submit with --replace (its unheld GPU-hours are refunded); to keep both, "
        f"give this spec another name.",
    )


def _name_in_use_by_best_effort(s: Session, name: str, d: str) -> Refusal | None:
    live = be_ledger.live_named(s, name, other_than=d)
    if not live:
        return None
    row = live[-1]
    return Refusal(
        "name_in_use",
        f"{name} already has a live best-effort submission, {row.project_id}. To run this version instead, "
        f"cancel it first (cellsched cancel {row.project_id}); to keep both, give this spec another name.",
    )


# -- best-effort work (docs/lending.md) ---------------------------------------------------


def _submit_best_effort(env: Env, job: _Submit, dry_run: bool) -> SubmitOutcome:
    """Queue a best-effort spec: no calendar, no window, nothing charged; or refuse it
    (nothing written either way for a refusal). Its own write transaction, which changes
    no grant: the admission snapshot kept for guaranteed submits stays current."""
    if dry_run:
        with env.ledger.read() as s:
            out = _queue_best_effort(env, s, job, write=False)
        out.dry_run = True
        return out
    with env.ledger.write() as s:
        held = env.admission.take_current(s, job.now, env.cluster)
        out = _queue_best_effort(env, s, job, write=True)
        if held is not None:
            env.admission.put(held, ledger_version(s))
        return out


def best_effort_pool(env: Env, spec: ProjectSpec) -> Pool | Refusal:
    """Where a best-effort spec's tasks run: ``budget.pool``, or among the pools of
    ``budget.gpu_type`` (any pool without either) the largest whose nodes each hold the
    spec's widest job (a task runs on one node), ties by the config's order."""
    b = spec.budget
    pools = list(env.cluster.pools)
    if b.pool is not None:
        pools = [p for p in pools if p.name == b.pool]
        if not pools:
            known = ", ".join(p.name for p in env.cluster.pools)
            return Refusal("unknown_pool", f"no pool named {b.pool!r} (pools: {known}).")
    elif b.gpu_type is not None:
        pools = [p for p in pools if p.gpu_type == b.gpu_type]
        if not pools:
            types = ", ".join(sorted({p.gpu_type for p in env.cluster.pools}))
            return Refusal("unknown_pool", f"no pool has gpu_type {b.gpu_type!r} (types: {types}).")
    widest = max(j.gpus for j in spec.jobs)
    fits = [p for p in pools if p.gpus_per_node >= widest]
    if not fits:
        per_node = max(p.gpus_per_node for p in pools)
        where = f"pool {pools[0].name}'s nodes have" if len(pools) == 1 else "the matching pools' nodes have at most"
        return Refusal("wider_than_node", f"a best-effort task runs on one node: a job of {widest} GPUs needs "
                                          f"{widest} GPUs on one node, {where} {per_node}.",
                       needed=widest, available=per_node)
    return max(fits, key=lambda p: p.gpus)  # max() keeps the first of equals: the config's order


def _queue_best_effort(env: Env, s: Session, job: _Submit, write: bool) -> SubmitOutcome:
    spec, now, d, pid = job.spec, job.now, job.digest, job.pid
    code_json, missing, hold = _code_of(env, s, job, dry=not write)

    def refused(r: Refusal) -> SubmitOutcome:
        return SubmitOutcome(pid, d, False, refusal=r, code=code_json, kind="best-effort")

    team = env.cluster.team(spec.team)
    again = s.exec(select(BestEffortRow).where(BestEffortRow.project_id == pid, BestEffortRow.digest == d,
                                               BestEffortRow.state != "cancelled")
                   .order_by(col(BestEffortRow.id).desc())).first()
    if again is not None:  # the same digest again: its submission (a cancelled one is queued anew)
        counts = be_ledger.task_counts(s, [again.id or 0])[again.id or 0]
        use = _be_use(s, team, now)
        return SubmitOutcome(pid, d, False, existing=True, code=code_json, kind="best-effort",
                             best_effort=be_ledger.submission_json(again, counts), be_use=use)
    if team is None:
        return refused(Refusal("unknown_team", f"team {spec.team!r} is not in the cluster config."))
    if team.best_effort_gpu_seconds <= 0:
        return refused(Refusal(
            "no_best_effort_allowance",
            f"team {team.name} has no best-effort allowance (best_effort_gpu_hours in the cluster config)",
            needed=spec.budget.gpu_seconds, available=0))
    pool = best_effort_pool(env, spec)
    if isinstance(pool, Refusal):
        return refused(pool)
    in_use = _name_in_use(s, spec.name, d)
    if in_use is not None:
        return refused(in_use)
    use = _be_use(s, team, now)
    assert use is not None
    if spec.budget.gpu_seconds > use.remaining:
        when = "in total" if team.period == "none" else f"this {team.period}"
        return refused(Refusal(
            "over_best_effort_allowance",
            f"{fmt.gpu_seconds_as_hours(spec.budget.gpu_seconds)} GPU-hours asked; team {team.name} has "
            f"{fmt.gpu_seconds_as_hours(use.remaining)} of its {fmt.gpu_seconds_as_hours(use.allowance)} "
            f"best-effort GPU-hours left {when} (live submissions reserve their whole budget).",
            needed=spec.budget.gpu_seconds, available=use.remaining))
    tasks = sum(j.count for j in spec.jobs)
    counts = {**dict.fromkeys(be_ledger.TASK_COUNTS, 0), "queued": tasks, "total": tasks, "preemptions": 0}
    after = BestEffortUse(use.allowance, use.charged, use.reserved + spec.budget.gpu_seconds)
    if not write:
        row = BestEffortRow(project_id=pid, project=spec.name, digest=d, team=spec.team, pool=pool.name,
                            max_gpus=spec.budget.gpus, budget_gs=spec.budget.gpu_seconds, created_at=now)
        return SubmitOutcome(pid, d, False, code=code_json, kind="best-effort",
                             best_effort=be_ledger.submission_json(row, counts), be_use=after)
    if missing and job.snap is not None:
        snap = job.snap
        s.add(CodeRow(digest=snap.digest, size=snap.size, files=snap.files, content_bytes=snap.content_bytes,
                      blob=snap.blob, created_at=now))
    if hold and spec.code is not None and spec.code.digest is not None:
        s.add(CodeHolderRow(digest=spec.code.digest, team=spec.team, since=now))
    if s.get(ProjectRow, pid) is None:
        s.add(ProjectRow(id=pid, name=spec.name, digest=d, team=spec.team, owner=spec.owner,
                         submitted_by=job.caller, spec_json=canonical_json(spec), created_at=now, replaces=None))
        s.flush()
    row = be_ledger.queue(s, spec, pid, d, pool.name, job.caller, now)
    return SubmitOutcome(pid, d, False, code=code_json, kind="best-effort",
                         best_effort=be_ledger.submission_json(row, counts), be_use=after)


def _be_use(s: Session, team: Team | None, now: int) -> BestEffortUse | None:
    if team is None:
        return None
    p0, p1 = period_bounds(now, team.period)
    return be_ledger.use_of(s, team.name, team.best_effort_gpu_seconds, p0, p1)


def live_version(env: Env, name: str) -> tuple[str, ProjectSpec | None] | None:
    """The newest live grant of project ``name``: its id and sealed spec (``submit
    --replace``); None when there is none."""
    with env.ledger.read() as s:
        row = s.exec(select(GrantRow).where(GrantRow.project == name, col(GrantRow.state).in_(LIVE_STATES))
                     .order_by(col(GrantRow.id).desc())).first()
        if row is None:
            return None
        proj = s.get(ProjectRow, row.project_id)
        return row.project_id, None if proj is None else from_canonical(proj.spec_json)


def code_meta(s: Session, code_digest: str) -> tuple[int, int, int] | None:
    """``(size, files, content_bytes)`` of a stored code snapshot, or None."""
    row = s.exec(select(CodeRow.size, CodeRow.files, CodeRow.content_bytes)
                 .where(CodeRow.digest == code_digest)).first()
    return None if row is None else (int(row[0]), int(row[1]), int(row[2]))


# Bytes an uploaded archive may unpack to (tar headers included): the largest code a spec
# may declare (code.max_mib ≤ 512) plus room for the headers of many small files. Checked
# while decompressing, before the archive is read whole, so a small gzip bomb costs nothing.
MAX_UNPACKED = 640 << 20


def check_may_upload_code(env: Env, caller: str) -> None:
    """Denied unless ``caller`` is a member of a team or an admin (asked before the server
    reads an upload's body, and again by ``store_code``)."""
    if not (caller in env.cluster.admins or any(caller in t.members for t in env.cluster.teams)):
        raise Denied(f"{caller} may not upload code: only members of a team and admins")


def caller_teams(env: Env, caller: str) -> list[str]:
    """The teams ``caller`` is a member of (the cluster config's order)."""
    return [t.name for t in env.cluster.teams if caller in t.members]


def code_held(s: Session, code_digest: str, teams: list[str]) -> set[str]:
    """Which of ``teams`` hold the stored code snapshot ``code_digest`` (``CodeHolderRow``)."""
    if not teams:
        return set()
    return set(s.exec(select(CodeHolderRow.team).where(CodeHolderRow.digest == code_digest,
                                                        col(CodeHolderRow.team).in_(teams))).all())


def code_meta_for(env: Env, s: Session, caller: str, code_digest: str) -> tuple[int, int, int] | None:
    """:func:`code_meta` as ``caller`` may see it: None unless a team of theirs holds it."""
    meta = code_meta(s, code_digest)
    if meta is None or not code_held(s, code_digest, caller_teams(env, caller)):
        return None
    return meta


def store_code(env: Env, caller: str, code_digest: str, blob: bytes, now: int) -> dict[str, Any]:
    """Store an uploaded code snapshot under its content digest, after checking that the
    archive's content has that digest (``executor._codepack.check``), and make the caller's
    teams its holders (``CodeHolderRow``: a team may name only code it holds). Idempotent: a
    digest already stored is left as it is, but its archive is still checked when the upload
    makes a new holder (having the bytes is what holding means). Only team members and
    admins may upload (Denied); a new snapshot is an event (``code_stored``) naming who
    uploaded it and for which teams, new holders of a stored one a ``code_held``."""
    from cellsched.executor import _codepack

    check_may_upload_code(env, caller)
    teams = caller_teams(env, caller)
    with env.ledger.read() as s:
        meta = code_meta(s, code_digest)
        new_holders = set(teams) - (code_held(s, code_digest, teams) if meta is not None else set())
    if meta is None or new_holders:
        _check_unpacked_size(blob)
        try:
            items = _codepack.check(blob, code_digest)
        except _codepack.PackError as e:
            raise BadInput(f"code: {e}") from None
        files, content = len(items), sum(len(e.data) for e in items if e.kind != "link")
        with env.ledger.write() as s:
            meta = code_meta(s, code_digest)
            gain = [t for t in teams if t not in code_held(s, code_digest, teams)]
            for team in gain:
                s.add(CodeHolderRow(digest=code_digest, team=team, since=now))
            if meta is None:
                s.add(CodeRow(digest=code_digest, size=len(blob), files=files, content_bytes=content,
                              blob=blob, created_at=now))
                events.append(s, now, "code_stored", code_digest, caller,
                              {"bytes": content, "files": files, "packed_bytes": len(blob), "teams": gain})
                return {"digest": code_digest, "stored": True, "files": files, "bytes": content,
                        "packed_bytes": len(blob)}
            if gain:
                events.append(s, now, "code_held", code_digest, caller, {"teams": gain})
    return {"digest": code_digest, "stored": False, "files": meta[1], "bytes": meta[2], "packed_bytes": meta[0]}


def _check_unpacked_size(blob: bytes) -> None:
    import zlib

    z = zlib.decompressobj(16 + zlib.MAX_WBITS)
    total, data = 0, blob
    try:
        while data:
            out = z.decompress(data, 1 << 20)
            total += len(out)
            if total > MAX_UNPACKED:
                raise BadInput(f"code: the archive unpacks to more than {MAX_UNPACKED >> 20} MiB")
            data = z.unconsumed_tail
            if z.eof:
                break
    except zlib.error as e:
        raise BadInput(f"code: not a code archive: {e}") from None


def _replaced_grant(s: Session, spec: ProjectSpec, caller: str, env: Env) -> GrantRow:
    name, _, short = (spec.replaces or "").partition("@")  # (the spec's own name: ProjectSpec checks it)
    rows = s.exec(select(GrantRow).where(GrantRow.project == name, col(GrantRow.state).in_(LIVE_STATES))).all()
    old = next((r for r in rows if r.digest.startswith(short)), None)
    if old is None:
        raise NotFound(f"replaces: no live grant for {spec.replaces}")
    if not _team_member(env, old.team, caller):
        raise Denied(f"{caller} may not replace {old.project_id} of team {old.team}")
    return old


# -- cancel ----------------------------------------------------------------------------


def find_grant(s: Session, project: str, live_only: bool = False) -> GrantRow:
    """The newest grant of a project named ``name`` or ``name@digest``."""
    name, _, short = project.partition("@")
    q = select(GrantRow).where(GrantRow.project == name)
    if live_only:
        q = q.where(col(GrantRow.state).in_(LIVE_STATES))
    rows = [r for r in s.exec(q.order_by(col(GrantRow.id).desc())).all() if r.digest.startswith(short)]
    if not rows:
        raise NotFound(f"no {'live ' if live_only else ''}grant for project {project!r}")
    return rows[0]


def cancel(env: Env, project: str, caller: str, now: int) -> dict[str, Any]:
    """Cancel a live grant: its GPUs are free for later submits at once, the rest refunded.
    A name with several live grants (versions admitted before ``name_in_use``) must say
    which (``name@digest``): the error names them."""
    with env.ledger.write() as s:
        try:
            row = find_grant(s, project, live_only=True)
        except NotFound:
            live = be_ledger.find(s, project, live_only=True)
            if not live:
                raise
            return _cancel_best_effort(env, s, project, live, caller, now)
        name, _, short = project.partition("@")
        others = [r.project_id for r in s.exec(select(GrantRow).where(
            GrantRow.project == name, col(GrantRow.state).in_(LIVE_STATES))).all() if r.digest.startswith(short)]
        if len(set(others)) > 1:
            raise BadInput(f"{project} has {len(set(others))} live grants ({', '.join(sorted(set(others)))}): "
                           "cancel one by name@digest")
        if not _team_member(env, row.team, caller):
            raise Denied(f"{caller} may not cancel {row.project_id}: only members of team {row.team} or admins")
        adm = env.admission.take_current(s, now, env.cluster)  # kept current if it was: no rebuild after a cancel
        before = grant_of(row)
        refund = end_grant(s, row, now, "cancelled", caller, {})
        if adm is not None and row.pool in adm.schedule.pools and row.team in adm.schedule.teams:
            try:
                adm.schedule.release(before, now)
            except ValueError:
                pass  # not reserved as the ledger says (a pool that shrank): rebuilt next time
            else:
                adm.forget(row.id)
                env.admission.put(adm, ledger_version(s))
        return {"project": row.project_id, "state": row.state, "refunded_gpu_hours": refund / 3600,
                "grant": grant_json(row)}


def _cancel_best_effort(env: Env, s: Session, project: str, live: list[BestEffortRow], caller: str,
                        now: int) -> dict[str, Any]:
    """Cancel a live best-effort submission: its queued tasks are cancelled now; tasks
    running are left to the daemon, which stops them (SIGTERM, then SIGKILL after
    ``lend_grace_s``) and charges what they held (docs/lending.md)."""
    if len({r.project_id for r in live}) > 1:
        ids = sorted({r.project_id for r in live})
        raise BadInput(f"{project} has {len(ids)} live best-effort submissions ({', '.join(ids)}): "
                       "cancel one by name@digest")
    row = live[0]
    if not _team_member(env, row.team, caller):
        raise Denied(f"{caller} may not cancel {row.project_id}: only members of team {row.team} or admins")
    held = env.admission.take_current(s, now, env.cluster)  # no grant changes: it stays current
    cancelled, running = be_ledger.cancel(s, row, now, caller)
    if held is not None:
        env.admission.put(held, ledger_version(s))
    counts = be_ledger.task_counts(s, [row.id or 0])[row.id or 0]
    return {"project": row.project_id, "state": row.state, "kind": "best-effort", "cancelled_tasks": cancelled,
            "running_tasks": running, "best_effort": be_ledger.submission_json(row, counts)}


# -- reads -----------------------------------------------------------------------------


def grant_json(row: GrantRow) -> dict[str, Any]:
    return {
        "id": row.id, "project": row.project_id, "team": row.team, "pool": row.pool, "width": row.width,
        "start": row.start, "end": row.end, "promised_start": row.promised_start,
        "promised_end": row.promised_end, "state": row.state,
        "gpu_hours": row.charged_gs / 3600, "refunded_gpu_hours": row.refunded_gs / 3600,
        "started_at": row.started_at, "ended_at": row.ended_at, "breach_gpu_hours": row.breach_gs / 3600,
        "nodes": nodes_of(row),
    }


def refusal_json(r: Refusal) -> dict[str, Any]:
    return {
        "reason": r.reason, "message": r.message, "needed": r.needed, "available": r.available,
        "earliest_start": r.earliest_start,
        "alternatives": [alternative_json(a) for a in r.alternatives],
    }


def alternative_json(a: Alternative) -> dict[str, Any]:
    """An alternative and how the spec becomes it (``changes``, in the spec's own keys:
    ``gpus``, ``gpu_hours``, ``pool``, ``gpu_type``, ``deadline`` as ISO UTC or null)."""
    changes: dict[str, Any] = {}
    for k, v in a.changes:
        if k == "gpu_seconds":
            changes["gpu_hours"] = v / 3600
        elif k == "deadline":
            changes["deadline"] = None if v is None else fmt.iso(v)
        else:
            changes[k] = v
    return {"kind": a.kind, "pool": a.pool, "gpus": a.width, "start": a.start, "end": a.end,
            "gpu_hours": a.gpu_seconds / 3600, "message": a.message, "changes": changes}


def _overlap(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


@dataclass
class BudgetLine:
    project: str
    state: str
    granted_gs: int = 0
    committed_gs: int = 0
    held_gs: int = 0
    used_gs: int = 0
    refunded_gs: int = 0  # cut off the window (cancel, early finish)
    breach_gs: int = 0  # not provided by the cluster (lost hardware): refunded too

    @property
    def all_refunded_gs(self) -> int:
        return self.refunded_gs + self.breach_gs


@dataclass
class Budget:
    team: str
    period: str
    period_start: int
    period_end: int
    allowance_gs: int
    lines: list[BudgetLine] = field(default_factory=list)
    # Best-effort work (docs/lending.md): the team's best-effort allowance this period and
    # its submissions of the period (``only``: the one project's).
    best_effort: BestEffortUse = field(default_factory=lambda: BestEffortUse(0, 0, 0))
    be_rows: list[BestEffortRow] = field(default_factory=list)

    def total(self, attr: str) -> int:
        return sum(getattr(line, attr) for line in self.lines)

    @property
    def remaining_gs(self) -> int:
        # A breach lies in the held part of a window (it is counted up to now), but the team
        # did not get those GPU-seconds: they are given back (docs/daemon.md, "Guarantee breaches").
        return self.allowance_gs - self.total("committed_gs") - self.total("held_gs") + self.total("breach_gs")

    def to_json(self) -> dict[str, Any]:
        h = 3600
        return {
            "team": self.team, "period": self.period,
            "period_start": None if self.period == "none" else self.period_start,
            "period_end": None if self.period == "none" else self.period_end,
            "allowance_gpu_hours": self.allowance_gs / h,
            "committed_gpu_hours": self.total("committed_gs") / h,
            "held_gpu_hours": self.total("held_gs") / h,
            "used_gpu_hours": self.total("used_gs") / h,
            # breaches included (docs/daemon.md, "Guarantee breaches"); the split is on the lines (breach_gs), and per
            # grant in ``status`` (breach_gpu_hours)
            "refunded_gpu_hours": self.total("all_refunded_gs") / h,
            # never below 0: an allowance lowered below what is already granted shows as
            # overdrawn (the grants stand: a window, once granted, is never taken away)
            "remaining_gpu_hours": max(0, self.remaining_gs) / h,
            "overdrawn_gpu_hours": max(0, -self.remaining_gs) / h,
            "projects": [
                {"project": l.project, "state": l.state, "granted_gpu_hours": l.granted_gs / h,
                 "committed_gpu_hours": l.committed_gs / h, "held_gpu_hours": l.held_gs / h,
                 "used_gpu_hours": l.used_gs / h, "refunded_gpu_hours": l.all_refunded_gs / h}
                for l in self.lines
            ],
            # beside the guaranteed figures, never mixed with them
            "best_effort_allowance_gpu_hours": self.best_effort.allowance / h,
            "best_effort_charged_gpu_hours": self.best_effort.charged / h,
            "best_effort_reserved_gpu_hours": self.best_effort.reserved / h,
            "best_effort_remaining_gpu_hours": self.best_effort.remaining / h,
            "best_effort": [
                {"project": r.project_id, "state": r.state, "budget_gpu_hours": r.budget_gs / h,
                 "charged_gpu_hours": r.charged_gs / h}
                for r in self.be_rows
            ],
        }


def budget(env: Env, team_or_project: str, now: int) -> Budget:
    """A team's allowance this period: committed (ahead), held (elapsed), used, refunded
    (cut off a window, or not provided by the cluster: breaches), remaining."""
    cfg = env.cluster.team(team_or_project)
    with env.ledger.read() as s:
        if cfg is None:
            try:
                row: GrantRow | BestEffortRow = find_grant(s, team_or_project)
            except NotFound:
                found = be_ledger.find(s, team_or_project)
                if not found:
                    teams = ", ".join(t.name for t in env.cluster.teams) or "none"
                    raise NotFound(f"{team_or_project!r} is neither a team nor a project (teams: {teams})") from None
                row = found[0]
            cfg = env.cluster.team(row.team)
            if cfg is None:
                raise NotFound(f"team {row.team!r} of {row.project_id} is not in the cluster config")
            only: str | None = row.project_id
        else:
            only = None
        p0, p1 = period_bounds(now, cfg.period)
        out = Budget(cfg.name, cfg.period, p0, p1, cfg.allowance_gpu_seconds)
        out.best_effort, out.be_rows = be_ledger.use(s, cfg.name, cfg.best_effort_gpu_seconds, p0, p1, only)
        # Only grants that may touch the period: a superset of the exact test below, which
        # rests on nothing but the row (``end + refunded_gs`` bounds ``gross_end`` from above).
        g = GrantRow
        near = or_(and_(g.promised_end > p0, g.promised_start < p1),
                   and_(g.start < p1, g.end + g.refunded_gs > p0))
        rows = list(s.exec(select(GrantRow).where(GrantRow.team == cfg.name, near).order_by(col(GrantRow.id))).all())
        used = _used_by_grant(s, [r.id for r in rows if r.id is not None], p0, p1)
        breaches = breach_intervals(s, rows)
        for r in rows:
            if only is not None and r.project_id != only:
                continue
            # A cut refunds the window from the cut on: ``gross_end`` is where it ended before.
            gross_end = r.end + (r.refunded_gs // r.width if r.width else 0)
            in_period = _overlap(r.promised_start, r.promised_end, p0, p1) > 0 or _overlap(r.start, gross_end, p0, p1) > 0
            if not in_period:
                continue
            line = BudgetLine(r.project_id, r.state)
            line.granted_gs = sum(gs for q, gs in split_by_period(r.start, r.end, r.width, cfg.period) if q == p0)
            line.held_gs = r.width * _overlap(r.start, r.end, p0, min(p1, now))
            line.committed_gs = r.width * _overlap(r.start, r.end, max(p0, now), p1)
            line.used_gs = used.get(r.id or 0, 0)
            line.refunded_gs = r.width * _overlap(r.end, gross_end, p0, p1)
            line.breach_gs = sum(w * _overlap(b0, b1, p0, p1) for b0, b1, w in breaches.get(r.id or 0, ()))
            out.lines.append(line)
        return out


def _used_by_grant(s: Session, grant_ids: list[int], p0: int, p1: int) -> dict[int, int]:
    used: dict[int, int] = {}
    for gid, runs in _job_runs(s, grant_ids).items():
        for run in runs:
            if run.started_at is not None and p0 <= run.started_at < p1:
                used[gid] = used.get(gid, 0) + run.gpu_seconds
    return used


STATUS_RECENT_S = 7 * 86400  # ``status`` lists what ended this recently (``--all``: everything)


def status(env: Env, project: str | None, now: int, since: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Every project's newest grant (or one project's), with progress and job runs, each
    ``kind`` "guaranteed"; then the best-effort submissions (``kind`` "best-effort": live
    ones, and each other name's newest; one project's with its tasks). A window running, or
    best-effort work waiting, while no daemon is alive says so in its ``note``.

    With ``since``, a name's newest grant or submission that is no longer live is listed
    only if it ended at or after ``since`` (live ones always are); returns the items and how
    many were left out so."""
    from cellsched.ledger.lease import state

    lease = state(env.ledger)
    down, be_down = lease.down("this window is not being served"), lease.down("best-effort work is not being run")
    with env.ledger.read() as s:
        be_items: list[dict[str, Any]] = []
        older = 0
        if project is not None:
            try:
                rows = [find_grant(s, project)]
            except NotFound:
                found = be_ledger.find(s, project)
                if not found:
                    raise
                return _best_effort_status(s, found[:1], be_down, tasks=True), 0
        else:
            shown, older = _best_effort_shown(s, since)
            be_items = _best_effort_status(s, shown, be_down)
            live, done, left_out = _grants_shown(s, since)
            older += left_out
            rows = sorted(live + done, key=lambda r: (r.start, r.id or 0))
        runs_of = _job_runs(s, [r.id or 0 for r in rows])
        out = []
        for r in rows:
            runs = runs_of.get(r.id or 0, [])
            item = grant_json(r)
            length = max(1, r.end - r.start)
            item["progress"] = min(1.0, max(0.0, (now - r.start) / length)) if r.state in LIVE_STATES else 1.0
            item["used_gpu_hours"] = sum(j.gpu_seconds for j in runs) / 3600
            item["jobs"] = [
                {"job": j.job, "attempt": j.attempt, "state": j.state, "gpus": j.gpus,
                 "started_at": j.started_at, "ended_at": j.ended_at, "gpu_hours": j.gpu_seconds / 3600,
                 "exit_codes": json.loads(j.exit_codes)}
                for j in runs
            ]
            running = r.state in ("reserving", "active") or (r.state == "granted" and r.start <= now)
            item["note"] = down if down and running and now < r.end else ""
            item["kind"] = "guaranteed"
            out.append(item)
        return out + be_items, older


def _grants_shown(s: Session, since: int | None) -> tuple[list[GrantRow], list[GrantRow], int]:
    """What ``status`` lists of grants: every live one (two versions of one name both live:
    both), and for a name with none live its newest grant (with ``since``: only if it ended
    then or later); and how many names ``since`` left out. Asked of the database, so a
    ledger of years lists its live work without loading every grant it ever held."""
    ended = None if since is None else or_(col(GrantRow.end) >= since,
                                           func.coalesce(col(GrantRow.ended_at), 0) >= since)
    return _live_and_newest(s, GrantRow, LIVE_STATES, ended)


def _live_and_newest(s: Session, row: Any, live_states: tuple[str, ...], ended: Any) -> tuple[list[Any], list[Any], int]:
    """Rows of ``row``'s table (grants, best-effort submissions) as ``status`` lists them:
    every live one, and for a name with none live its newest; with ``ended`` (the SQL test
    of having ended recently enough) only those newest that pass it, and how many did not."""
    live = list(s.exec(select(row).where(col(row.state).in_(live_states))))
    newest = sa_select(func.max(row.id)).group_by(col(row.project))
    live_names = sa_select(row.project).where(col(row.state).in_(live_states))
    # a name with none live (its newest row is then not live either)
    done_q = select(row).where(col(row.id).in_(newest), col(row.project).not_in(live_names))
    if ended is None:
        return live, list(s.exec(done_q)), 0
    done = list(s.exec(done_q.where(ended)))
    left_out = s.exec(sa_select(func.count()).select_from(done_q.where(~ended).subquery())).one()[0]
    return live, done, int(left_out)


def _job_runs(s: Session, grant_ids: list[int]) -> dict[int, list[JobRunRow]]:
    """The job runs of each of ``grant_ids``, in the order they were written: a few queries
    however many grants (one per grant made ``status`` of a long history take minutes)."""
    out: dict[int, list[JobRunRow]] = {}
    ids = sorted(set(grant_ids))
    for k in range(0, len(ids), 5000):  # (well under SQLite's limit on bound parameters)
        chunk = ids[k:k + 5000]
        q = select(JobRunRow).where(col(JobRunRow.grant_id).in_(chunk)).order_by(col(JobRunRow.id))
        for j in s.exec(q):
            out.setdefault(j.grant_id, []).append(j)
    return out


def _best_effort_shown(s: Session, since: int | None = None) -> tuple[list[BestEffortRow], int]:
    """What ``status`` lists of best-effort work: every live submission, and for a name with
    none live its newest (as for grants; with ``since``, only if it ended then or later), in
    submission order; and how many ``since`` left out. Asked of the database, as for grants:
    queuing and cancelling costs a team nothing, so the ended submissions have no bound, and
    reading them all made everyone's ``status`` slow (1.4 s over 100,000)."""
    be = BestEffortRow
    ended = None if since is None else func.coalesce(col(be.ended_at), col(be.created_at)) >= since
    live, done, older = _live_and_newest(s, be, BE_LIVE_STATES, ended)
    return sorted(live + done, key=lambda r: r.id or 0), older


def _best_effort_status(s: Session, rows: list[BestEffortRow], down: str | None,
                        tasks: bool = False) -> list[dict[str, Any]]:
    """``status`` items of best-effort submissions (``kind`` "best-effort"): tasks by state,
    GPU-hours charged of the budget, preemptions; with ``tasks``, every task too."""
    counts = be_ledger.task_counts(s, [r.id or 0 for r in rows])
    out = []
    for r in rows:
        c = counts[r.id or 0]
        item = be_ledger.submission_json(r, c)
        waiting = r.state in BE_LIVE_STATES and (c["queued"] or c["running"])
        item["note"] = down if down and waiting else ""
        if tasks:
            item["task_list"] = [be_ledger.task_json(t) for t in be_ledger.tasks(s, r.id or 0)]
        out.append(item)
    return out


def code_blob(env: Env, digest: str) -> bytes:
    """The stored code snapshot with content digest ``digest`` (a sealed spec's
    ``code.digest``): the archive that ``executor._codepack.unpack`` takes. NotFound if the
    ledger does not hold it."""
    with env.ledger.read() as s:
        row = s.get(CodeRow, digest)
    if row is None:
        raise NotFound(f"no code snapshot sha256:{digest} in the ledger")
    return row.blob


def _verify_code(sealed: ProjectSpec, row: CodeRow | None, pid: str) -> dict[str, Any]:
    from cellsched.executor import _codepack

    assert sealed.code is not None and sealed.code.digest is not None
    d = sealed.code.digest
    if row is None:
        raise Failed(f"{pid}: the code snapshot sha256:{d} is missing from the ledger")
    try:
        items = _codepack.check(row.blob, d)
    except _codepack.PackError as e:
        raise Failed(f"{pid}: the stored code snapshot does not match its digest sha256:{d[:12]}: {e}") from None
    files, content = len(items), sum(len(e.data) for e in items if e.kind != "link")
    if (row.size, row.files, row.content_bytes) != (len(row.blob), files, content):
        raise Failed(f"{pid}: the stored code snapshot's size, files or bytes differ from its content")
    return {"digest": d, "files": files, "bytes": content, "packed_bytes": row.size, "stored": "intact"}


def _words_as_sealed(written: ProjectSpec, sealed: ProjectSpec) -> ProjectSpec | None:
    """The spec file's words with the sealed code's digest (and full commit) put in, to
    compare the words alone; None if one has code and the other not."""
    if (written.code is None) != (sealed.code is None):
        return None
    if written.code is None or sealed.code is None:
        return written
    commit = written.code.commit
    if commit and sealed.code.commit and sealed.code.commit.startswith(commit):
        commit = sealed.code.commit
    code = written.code.model_copy(update={"digest": sealed.code.digest, "commit": commit})
    return written.model_copy(update={"code": code})


def verify(env: Env, project: str, spec_path: str | Path | None = None, *, written: ProjectSpec | None = None,
           where: str = "spec", code_now: Callable[[str], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Check a grant's receipt against the cluster's public key and the sealed spec; for a
    spec with code, that the stored snapshot has the sealed digest. With ``spec_path``, that
    the file's words are the sealed ones, and whether its code has changed since (which is
    no failure: the job runs the sealed snapshot).

    Instead of ``spec_path``, a caller that read the file elsewhere (the server: the client
    read it) gives its words (``written``, named ``where``) and ``code_now(sealed_digest)``,
    what :func:`code_now` says about the file's code today."""
    with env.ledger.read() as s:
        row = find_grant(s, project)
        proj = s.get(ProjectRow, row.project_id)
        sealed_spec = None if proj is None else from_canonical(proj.spec_json)
        code_row = None
        if sealed_spec is not None and sealed_spec.code is not None:
            code_row = s.get(CodeRow, sealed_spec.code.digest)
    payload = verify_receipt(row.receipt, env.public_key)
    if proj is None or sealed_spec is None:
        raise Failed(f"{row.project_id}: the sealed spec is missing from the ledger")
    sealed = digest(sealed_spec)
    if payload.get("digest") != sealed or sealed != row.digest:
        raise Failed(f"{row.project_id}: receipt digest {payload.get('digest')} does not match the sealed spec {sealed}")
    code = None if sealed_spec.code is None else _verify_code(sealed_spec, code_row, row.project_id)
    if spec_path is not None:
        written, where = load_written(spec_path), str(spec_path)
        code_now = functools.partial(_code_now, spec_path)
    if written is not None:
        words = _words_as_sealed(written, sealed_spec)
        file_digest = None if words is None else digest(words)
        if file_digest != sealed:
            shown = "one with code" if words is None and sealed_spec.code is None else (
                "one without code" if words is None else f"digest {(file_digest or '')[:12]}")
            raise Failed(f"{where}: {shown} is not the sealed spec {sealed[:12]}")
        if code is not None and code_now is not None:
            code.update(code_now(code["digest"]))
    signed = (payload.get("grant"), payload.get("project"), payload.get("team"), payload.get("pool"), payload.get("width"))
    if signed != (row.id, row.project_id, row.team, row.pool, row.width):
        raise Failed(f"{row.project_id}: the ledger's grant/project/team/pool/width differ from the receipt's")
    # A window may start earlier than promised or be cut short, never start or end later.
    if row.start > payload.get("start", row.start) or row.end > payload.get("end", row.end):
        raise Failed(f"{row.project_id}: the ledger's window is later than the receipt promised")
    out = {"project": row.project_id, "digest": sealed, "valid": True, "receipt": payload}
    if code is not None:
        out["code"] = code
    return out


def _code_now(spec_path: str | Path, sealed_digest: str) -> dict[str, Any]:
    """Whether the code the spec file names today is still the sealed snapshot."""
    try:
        now = load_sealed(spec_path).code
    except BadInput as e:
        return code_now(sealed_digest, None, e.message)
    assert now is not None
    return code_now(sealed_digest, now.digest)


def code_now(sealed_digest: str, now_digest: str | None, problem: str | None = None) -> dict[str, Any]:
    """``verify``'s word on a spec file's code today: its digest ``now_digest``, or the
    ``problem`` that kept it from being snapshotted."""
    if now_digest is None:
        return {"now": "unavailable", "note": f"the code cannot be snapshotted now ({problem}); "
                                              "the job runs the sealed snapshot"}
    if now_digest == sealed_digest:
        return {"now": "unchanged"}
    return {"now": "changed", "now_digest": now_digest,
            "note": f"the code has changed since submit (now sha256:{now_digest[:12]}); "
                    "the job runs the sealed snapshot"}


def no_daemon_note(env: Env) -> str | None:
    """"no daemon since HH:MM: this window is not being served" (or "no daemon has ever
    served this ledger: …") when no daemon holds a live lease (database clock); else None."""
    from cellsched.ledger.lease import state

    return state(env.ledger).down("this window is not being served")


# -- calendar ---------------------------------------------------------------------------------

CALENDAR_COLUMNS = 84  # columns of the chart at most: two weeks at 4 h a column


def calendar(env: Env, now: int, pool: str | None = None, days: int = 14,
             fit: tuple[int, int] | None = None, team: str | None = None) -> dict[str, Any]:
    """Per pool, over ``days`` from ``now`` in columns of whole hours, the widest grant the
    node rule fits over each whole column (free GPUs, no team's limits); with ``fit`` =
    (GPUs, seconds), the earliest window of that shape per pool: capacity alone, or with
    ``team`` exactly what admission would grant that team (its ``max_gpus`` and allowance)."""
    from cellsched.core.admission import Grant, Request

    pools = [p for p in env.cluster.pools if pool is None or p.name == pool]
    if not pools:
        raise NotFound(f"--pool: no pool {pool!r} (pools: {', '.join(p.name for p in env.cluster.pools)})")
    if team is not None and env.cluster.team(team) is None:
        raise NotFound(f"--team: no team {team!r} (teams: {', '.join(t.name for t in env.cluster.teams) or 'none'})")
    with env.ledger.read() as s:
        sched = load_schedule(s, env.cluster, now)
    span = days * 86400
    step = max(3600, -(-span // CALENDAR_COLUMNS // 3600) * 3600)
    cols = -(-span // step)
    out: dict[str, Any] = {"from": now, "until": now + cols * step, "step_s": step, "pools": []}
    for p in pools:
        cal = sched.pools[p.name][1]
        widest = [cal.widest_fit(now + i * step, now + (i + 1) * step) for i in range(cols)]
        changes = [{"start": now + i * step, "widest": w} for i, w in enumerate(widest) if i == 0 or w != widest[i - 1]]
        out["pools"].append({"pool": p.name, "gpu_type": p.gpu_type, "gpus": p.gpus, "gpus_per_node": p.gpus_per_node,
                             "widest": widest, "changes": changes})
    if fit is None:
        out["fit"] = None
        return out
    width, seconds = fit
    earliest_ok = now + env.cluster.policy.min_notice_s
    horizon = now + env.cluster.policy.horizon_days * 86400
    answers = []
    for p in pools:
        cal = sched.pools[p.name][1]
        item: dict[str, Any] = {"pool": p.name, "start": None, "end": None, "nodes": None, "note": ""}
        if team is not None:
            got = sched.admit(Request("(calendar)", team, width, width * seconds, pool=p.name), now, alternatives=False)
            if isinstance(got, Grant):
                item.update(start=got.start, end=got.end, nodes=list(got.nodes or ()))
            else:
                item["note"] = got.reason
        elif width > p.gpus:
            item["note"] = f"wider than the pool ({fmt.plural(p.gpus, 'GPU')})"
        elif not cal.admits(width):
            item["note"] = f"not a whole number of {p.gpus_per_node}-GPU nodes"
        elif env.cluster.policy.max_grant_s is not None and seconds > env.cluster.policy.max_grant_s:
            item["note"] = "longer than the longest grant"
        else:
            t = cal.earliest_fit(width, seconds, earliest_ok, horizon + seconds)
            if t is None or t > horizon:
                item["note"] = f"not within the horizon ({env.cluster.policy.horizon_days} days)"
            else:
                item.update(start=t, end=t + seconds, nodes=list(cal.choose(width, t, t + seconds) or ()))
        answers.append(item)
    found = [a for a in answers if a["start"] is not None]
    first = min(found, key=lambda a: a["start"]) if found else None  # ties: the pool listed first
    out["fit"] = {"gpus": width, "hours": seconds / 3600, "gpu_hours": width * seconds / 3600, "team": team,
                  "pools": answers, "earliest": None if first is None else {k: first[k] for k in ("pool", "start", "end")}}
    return out
