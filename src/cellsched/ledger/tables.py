"""Ledger tables. Events are the append-only record; the other tables are derived state
written in the same transaction as the event that explains them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 4


def _code_holders_from_projects(conn: Any) -> None:
    """Schema 4: every team whose sealed spec names a stored code snapshot holds it (before
    schema 4 any spec could name any stored snapshot; a team keeps the code it ran)."""
    from sqlalchemy import text

    rows = conn.execute(text("SELECT team, spec_json, created_at FROM cs_project WHERE spec_json LIKE :c"),
                        {"c": '%"code"%'}).all()
    stored = {r[0] for r in conn.execute(text("SELECT digest FROM cs_code")).all()}
    first: dict[tuple[str, str], int] = {}
    for team, spec_json, created_at in rows:
        code = json.loads(spec_json).get("code") or {}
        d = code.get("digest")
        if d in stored:
            first[(d, team)] = min(first.get((d, team), created_at), created_at)
    if first:
        conn.execute(text("INSERT INTO cs_code_holder (digest, team, since) VALUES (:d, :t, :s)"),
                     [{"d": d, "t": t, "s": s} for (d, t), s in sorted(first.items())])


# What each version adds to a ledger of the version before it (tables that are new in a
# version need nothing: ``create_all`` makes them): SQL statements, or a function of the
# connection for what SQL alone cannot say. Applied in order by ``Ledger.ensure_schema``.
MIGRATIONS: dict[int, tuple[str | Callable[[Any], None], ...]] = {
    2: ("ALTER TABLE cs_grant ADD COLUMN nodes VARCHAR",),
    3: ("ALTER TABLE cs_lease ADD COLUMN pass_ms FLOAT", "ALTER TABLE cs_lease ADD COLUMN pool_gpus VARCHAR"),
    4: (_code_holders_from_projects,),
}

# Grant states. "granted" waits for its start; the daemon moves it through "reserving" to
# "active"; it ends "completed" (all jobs done), "expired" (window over), "cancelled" or
# "replaced" (a new version of the project took its place).
LIVE_STATES = ("granted", "reserving", "active")
END_STATES = ("completed", "expired", "cancelled", "replaced")


class SchemaInfo(SQLModel, table=True):
    __tablename__ = "cs_schema"
    id: int = Field(default=1, primary_key=True)
    version: int
    # The chain's head, so that removing the newest events shows too.
    head_seq: int = 0
    head_hash: str = "0" * 64


class ProjectRow(SQLModel, table=True):
    __tablename__ = "cs_project"
    id: str = Field(primary_key=True)  # name@digest[:12]
    name: str = Field(index=True)
    digest: str = Field(unique=True)
    team: str = Field(index=True)
    owner: str
    submitted_by: str
    spec_json: str
    created_at: int
    replaces: str | None = None


class GrantRow(SQLModel, table=True):
    __tablename__ = "cs_grant"
    id: int | None = Field(default=None, primary_key=True)
    project_id: str = Field(index=True, foreign_key="cs_project.id")
    project: str = Field(index=True)  # the project's name, for lookups by name
    digest: str
    team: str = Field(index=True)
    pool: str
    width: int
    start: int  # current start: may move earlier than promised, never later
    end: int  # current end: cut on early release or cancel
    promised_start: int
    promised_end: int
    charged_gs: int  # GPU-seconds charged when granted
    refunded_gs: int = 0
    state: str = Field(default="granted", index=True)
    created_at: int
    started_at: int | None = None  # when the reservation became ready on the cluster
    ended_at: int | None = None
    breach_gs: int = 0  # GPU-seconds of the window the cluster could not provide
    receipt: str = ""  # signed JSON (see cellsched.receipt)
    report_json: str | None = None
    # The pool's node indices the window is on (JSON list; admission assigns them, a
    # pull-forward may change them); None in a ledger from before nodes were tracked.
    nodes: str | None = None


class JobRunRow(SQLModel, table=True):
    __tablename__ = "cs_job_run"
    id: int | None = Field(default=None, primary_key=True)
    grant_id: int = Field(index=True, foreign_key="cs_grant.id")
    job: str
    attempt: int
    state: str  # running | succeeded | failed | killed | lost
    gpus: int
    started_at: int | None = None
    ended_at: int | None = None
    gpu_seconds: int = 0
    exit_codes: str = "[]"  # JSON list, one per rank
    # Appended for the reconciler: why an attempt ended as it did, and the devices it had.
    detail: str = ""
    gpu_ids: str = "[]"  # JSON list, one per rank


class EventRow(SQLModel, table=True):
    __tablename__ = "cs_event"
    seq: int = Field(primary_key=True)
    at: int
    kind: str = Field(index=True)
    subject: str
    actor: str
    data: str  # canonical JSON
    prev_hash: str
    hash: str


# -- runtime (the daemon's crash-safe memory; appended for the reconciler) -------------------


class RuntimeInfo(SQLModel, table=True):
    """One row: this ledger's identity on a shared Ray cluster.

    Group names carry ``ledger_id`` so that several ledgers (tests, staging) may share one
    Ray cluster without ever adopting or releasing each other's groups."""

    __tablename__ = "cs_runtime_info"
    id: int = Field(default=1, primary_key=True)
    ledger_id: str


class GrantRuntimeRow(SQLModel, table=True):
    """What the daemon must remember about a grant it has started handling.

    Created (with the ``reserving`` event) before the placement group is asked for; the
    daemon keeps working on a grant until ``finalized`` (group released, attempts closed,
    report written) and ``notified`` (the spec's ``notify`` told, or found failing)."""

    __tablename__ = "cs_grant_runtime"
    grant_id: int = Field(primary_key=True, foreign_key="cs_grant.id")
    reservation: str  # the placement group's name
    log_dir: str
    pending_since: int  # when the group was (last) asked for
    # Guarantee breach accounting: an open outage (group unplaceable, rescheduling after a
    # node loss, or vanished) started at outage_since; closed outages add up in
    # breach_closed_gs; GrantRow.breach_gs = closed + width * (now - outage_since).
    outage_since: int | None = None
    breach_closed_gs: int = 0
    breach_noted_at: int | None = None  # last time breach_gs was brought up to date
    term_sent_at: int | None = None  # SIGTERM sent at end - grace
    finalized: bool = Field(default=False, index=True)
    notified: bool = Field(default=False, index=True)


class BreachRow(SQLModel, table=True):
    """GPU-seconds of a grant's window the cluster did not provide, and when (appended for
    breach refunds).

    One row per increase of ``GrantRow.breach_gs``, written in the same transaction, covering
    ``[start, end)`` on ``width`` GPUs (``gpu_seconds = width * (end - start)``), so that per
    grant ``sum(gpu_seconds) == breach_gs``. Append-only. docs/daemon.md, "Guarantee breaches": lost hardware is
    refunded; the refund is credited to the team in the period(s) ``[start, end)`` falls in
    (``ledger.snapshot.load_schedule`` and ``service.budget``). ``GrantRow.refunded_gs`` stays the
    refund of a cut window only (reports derive the original end from it)."""

    __tablename__ = "cs_breach"
    id: int | None = Field(default=None, primary_key=True)
    grant_id: int = Field(index=True, foreign_key="cs_grant.id")
    team: str = Field(index=True)
    start: int
    end: int
    width: int
    gpu_seconds: int
    recorded_at: int


class LeaseRow(SQLModel, table=True):
    """One row: the daemon lease (``cellsched.ledger.lease``). Times are the database's
    clock, as epoch seconds; ``epoch`` goes up by one on every acquisition and fences every
    daemon write (``Ledger.write(epoch=...)``)."""

    __tablename__ = "cs_lease"
    id: int = Field(default=1, primary_key=True)
    holder: str  # a uuid per acquisition
    host: str
    pid: int
    since: float
    renewed_at: float  # last heartbeat (or the release)
    expires_at: float
    duration_s: float
    epoch: int
    released: bool = False
    prev_renewed_at: float | None = None  # the previous holder's last heartbeat
    ray_gpus: int | None = None  # GPUs Ray had when the holder started serving
    declared_gpus: int | None = None  # sum of the cluster config's pools
    pass_ms: float | None = None  # the holder's last reconcile pass, written with each heartbeat
    # JSON {pool: GPUs Ray has on the pool's live nodes}, as the holder last saw them; {} or
    # None: no pool has a node of its own (one machine, logical GPUs: pools run unpinned)
    pool_gpus: str | None = None


class CodeRow(SQLModel, table=True):
    """A project's code snapshot, stored once per digest (appended for code snapshots).

    Written by ``service.submit`` in the grant's transaction, so a daemon on any host reads
    the code from the ledger alone. ``digest`` is the snapshot's content digest
    (``executor/_codepack``), which the sealed spec carries as ``code.digest``; ``blob`` is
    the archive (``size`` bytes) holding ``files`` entries, ``content_bytes`` unpacked."""

    __tablename__ = "cs_code"
    digest: str = Field(primary_key=True)
    size: int
    files: int
    content_bytes: int
    blob: bytes
    created_at: int


class CodeHolderRow(SQLModel, table=True):
    """Which teams may name a stored code snapshot in a spec (appended in schema 4).

    Content addressing stores a snapshot once, but its digest is no secret (a sealed spec
    carries it, the event log names it), so the digest alone must not let a team run, and so
    read, another team's code. A team holds a snapshot once one of its members proved to
    have it: uploaded it (``PUT /api/code``, the archive checked against the digest even if
    it is stored already), or submitted a spec from its files (a local submit). A spec's
    ``code.digest`` is taken from a member of a team that holds it, and its team then holds
    it too."""

    __tablename__ = "cs_code_holder"
    digest: str = Field(primary_key=True)
    team: str = Field(primary_key=True)
    since: int


class NodeMapRow(SQLModel, table=True):
    """Which Ray node each of a pool's calendar nodes is (appended for multi-node execution).

    Admission assigns grants to node indices ``0..n-1`` of a pool; the daemon maps each index
    to a live Ray node of the pool and keeps the mapping here, so a restarted daemon (or a
    standby) pins groups to the same nodes and re-adopts them. A node that dies loses its
    index (``node_id`` None) until another matching node is free to take it."""

    __tablename__ = "cs_node_map"
    pool: str = Field(primary_key=True)
    index: int = Field(primary_key=True)
    node_id: str | None = None
    since: int


class TokenRow(SQLModel, table=True):
    """A bearer token for ``cellsched server`` (appended for the server).

    Only the SHA-256 of the token is stored; the token itself is shown once, at creation.
    ``id`` is a short public handle (for ``token list`` and ``token revoke``); a token is
    valid while ``revoked_at`` is None and the server's clock is before ``expires_at``."""

    __tablename__ = "cs_token"
    id: str = Field(primary_key=True)
    sha256: str = Field(unique=True)
    user: str = Field(index=True)
    created_by: str
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None
    revoked_by: str | None = None
    note: str = ""


# -- best-effort work (appended for lending idle GPUs: docs/lending.md) -------------------

# A best-effort submission is "queued" while any of its tasks may still run, then "done"
# (every task ended), "exhausted" (its GPU-hours ran out) or "cancelled".
BE_LIVE_STATES = ("queued",)
# A task (one of a job's ``count`` independent runs) is "queued" (waiting, or requeued after a
# preemption with its attempt count), "running" on lent GPUs, "preempting" (SIGTERM sent,
# grace running), then "succeeded", "failed" (its retries used up) or "cancelled".
BE_TASK_LIVE = ("queued", "running", "preempting")


class BestEffortRow(SQLModel, table=True):
    """One best-effort submission: a sealed spec with ``kind = "best-effort"``. No window and
    no guarantee; charged per GPU-second its tasks hold (times the cluster's rate) against
    the team's best-effort allowance, never against anyone's guaranteed allowance."""

    __tablename__ = "cs_be"
    id: int | None = Field(default=None, primary_key=True)
    project_id: str = Field(index=True, foreign_key="cs_project.id")
    project: str = Field(index=True)
    digest: str
    team: str = Field(index=True)
    pool: str
    max_gpus: int  # budget.gpus: GPUs its tasks may hold at once
    budget_gs: int  # budget.gpu_hours in GPU-seconds: what it may be charged in all
    charged_gs: int = 0  # GPU-seconds held so far, times the rate (rounded up)
    state: str = Field(default="queued", index=True)
    created_at: int
    ended_at: int | None = None


class BestEffortTaskRow(SQLModel, table=True):
    """One run of a best-effort job (``count`` of them per job). It keeps ``queued_at`` (its
    place in its team's FIFO) across preemptions; ``attempt`` counts starts."""

    __tablename__ = "cs_be_task"
    id: int | None = Field(default=None, primary_key=True)
    be_id: int = Field(index=True, foreign_key="cs_be.id")
    team: str = Field(index=True)
    job: str
    index: int  # 0 .. count-1
    gpus: int
    state: str = Field(default="queued", index=True)
    attempt: int = 0
    preemptions: int = 0
    queued_at: int
    # While running: where (the lender's grant id, or None for GPUs no window holds), on
    # which calendar node of which pool, since when, and the executor's name for it.
    lender: int | None = None
    node: int | None = None
    started_at: int | None = None
    reclaim_at: int | None = None  # SIGTERM sent (preempting): SIGKILL at reclaim_at + grace
    name: str | None = None
    bundles: str | None = None  # JSON list: the lender grant's bundles it runs on (lender set)
    held_gs: int = 0  # GPU-seconds held by attempts that ended (charged)
    ended_at: int | None = None
    detail: str = ""
