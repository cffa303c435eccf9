"""Derived state rebuilt from the event chain and compared with the tables.

The chain proves the events were not edited; this proves the tables say what the events say.
:func:`Rebuild.feed` takes the events in order (``events.audit`` calls it while it walks the
chain) and replays what each one did to its grant, the way the service layer and
``ledger/lifecycle`` wrote it; :func:`Rebuild.compare` then reads the tables and names the
first row that differs (grants by id, then job runs, breach spans, projects).

What each table is checked against:

- ``cs_grant``: every column but ``receipt`` and ``report_json`` is rebuilt (project, digest,
  team, pool, width, window, promised window, charge, refunds, state, start/end times,
  breach GPU-seconds, nodes); the receipt's signed payload must be the ``granted`` event's.
- ``cs_job_run``: which attempts exist, their GPUs, outcome, metered GPU-seconds and exit
  codes. Their measured start and end are not in the events (``attempt_ended`` carries only
  when the result was recorded), so those two columns are not checked.
- ``cs_breach``: the spans add up to the grant's breach GPU-seconds, each on the grant's
  width and team.
- ``cs_project``: the id is ``name@digest[:12]`` and the digest is the SHA-256 of the stored
  spec, so the sealed spec cannot be edited either; the team is the grant's (or the
  best-effort submission's).
- ``cs_be``: what ``be_queued`` wrote (project, digest, team, pool, max GPUs, budget,
  submission time) and the state the submission events say (``be_queued``, then
  ``be_cancelled``, ``be_done`` or ``be_exhausted``). Its charge is the daemon's to keep.
- ``cs_be_task``: exactly the tasks ``be_queued`` made (each job ``count`` times), each with
  its job's GPUs, the team and the submission time as ``queued_at`` (a requeued task keeps
  it). Their states and what they held are the daemon's to keep.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlmodel import Session

from cellsched.ledger.tables import BestEffortRow, BestEffortTaskRow, BreachRow, GrantRow, JobRunRow, ProjectRow

# Grant columns in the order they are compared (so the first difference named is stable).
GRANT_COLUMNS = ("project_id", "project", "digest", "team", "pool", "width", "start", "end", "promised_start",
                 "promised_end", "charged_gs", "refunded_gs", "state", "created_at", "started_at", "ended_at",
                 "breach_gs", "nodes")


@dataclass
class _Grant:
    seq: int  # the granted event
    values: dict[str, Any]
    set_by: dict[str, int]  # column -> the event that last set it
    receipt: dict[str, Any]
    # A trailing group_missing event may have added breach it does not carry (its total
    # shows in the next event that carries one): (width x seconds it may have added, seq).
    breach_maybe: tuple[int, int] | None = None

    def set(self, seq: int, **kw: Any) -> None:
        for k, v in kw.items():
            self.values[k] = v
            self.set_by[k] = seq


@dataclass
class _Run:
    seq: int
    gpus: int | None
    state: str = "running"
    gpu_seconds: int = 0
    exit_codes: list[int] = field(default_factory=list)


@dataclass
class _BestEffort:
    seq: int  # the be_queued event
    values: dict[str, Any]
    tasks: dict[tuple[str, int], int]  # (job, index) -> GPUs
    state_seq: int


BE_COLUMNS = ("project_id", "project", "digest", "team", "pool", "max_gpus", "budget_gs", "created_at", "state")
BE_ENDS = {"be_cancelled": "cancelled", "be_done": "done", "be_exhausted": "exhausted"}


@dataclass(frozen=True)
class Difference:
    table: str
    row: str  # the row's key as people write it
    problem: str


class Rebuild:
    """Grants, job runs and breach totals as the events say they are."""

    def __init__(self) -> None:
        self.grants: dict[int, _Grant] = {}
        self.runs: dict[tuple[int, str, int], _Run] = {}
        self.early: Difference | None = None  # an event that makes no sense on its own
        self.best_effort: dict[int, _BestEffort] = {}

    def feed(self, seq: int, at: int, kind: str, subject: str, data: str) -> None:
        """One event, in chain order. Cheap for events that concern no grant."""
        if kind == "be_queued" or kind in BE_ENDS:
            self._best_effort(seq, at, kind, subject, data)
            return
        if '"grant":' not in data:
            return
        try:
            d = json.loads(data)
        except ValueError:
            return
        gid = d.get("grant")
        if not isinstance(gid, int):
            return
        if kind == "granted":
            self._granted(seq, at, subject, gid, d)
            return
        g = self.grants.get(gid)
        if g is None:
            if self.early is None:
                self.early = Difference("cs_event", str(seq), f"event {seq} ({kind}) is about grant {gid}, "
                                                              "which no earlier granted event made")
            return
        v = g.values
        if "breach_gpu_seconds" in d and isinstance(d["breach_gpu_seconds"], int):
            g.set(seq, breach_gs=d["breach_gpu_seconds"])
            g.breach_maybe = None
        if kind == "moved_earlier":
            g.set(seq, start=d["start"], end=d["end"], nodes=sorted(d.get("nodes") or ()))
        elif kind == "moved_nodes":
            g.set(seq, nodes=sorted(d.get("to") or ()))
        elif kind == "reserving":
            g.set(seq, state="reserving")
        elif kind == "active":
            g.set(seq, state="active")
            if d.get("first"):
                g.set(seq, started_at=at)
        elif kind == "group_missing":
            if v["state"] == "active":
                g.set(seq, state="reserving")
            since = d.get("outage_since")
            if isinstance(since, int):
                # regroup opened an outage from ``since`` (unless one was open already)
                g.breach_maybe = (v["width"] * max(0, min(at, v["end"]) - since), seq)
        elif kind != "report" and "refunded_gpu_seconds" in d and "end" in d:
            # lifecycle.end_grant: the window cut at "end", the rest refunded; the kind is
            # the new state (cancelled, replaced, completed, or expired by an early finish)
            g.set(seq, end=d["end"], refunded_gs=v["refunded_gs"] + d["refunded_gpu_seconds"], state=kind,
                  ended_at=at)
        elif kind == "expired":
            g.set(seq, state="expired", ended_at=at)
        elif kind == "report":
            if v["ended_at"] is None:
                g.set(seq, ended_at=at)
            for (rg, _job, _att), run in self.runs.items():
                if rg == gid and run.state == "running":
                    run.state = "killed"  # finalize closes attempts whose result never came
        elif kind == "attempt_started":
            bundles = d.get("bundles")
            self.runs[(gid, d.get("job"), d.get("attempt"))] = _Run(
                seq, len(bundles) if isinstance(bundles, list) else None)
        elif kind == "attempt_ended":
            key = (gid, d.get("job"), d.get("attempt"))
            run = self.runs.get(key)
            codes = d.get("exit_codes")
            if run is None:  # a result for an attempt the ledger never launched: kept as it came
                run = self.runs[key] = _Run(seq, len(codes) if isinstance(codes, list) else None)
            if not d.get("late"):
                run.state = d.get("outcome", run.state)
            if isinstance(codes, list):
                run.exit_codes = codes
                run.gpu_seconds = d.get("gpu_seconds", 0)
            run.seq = seq

    def _granted(self, seq: int, at: int, subject: str, gid: int, d: dict[str, Any]) -> None:
        if gid in self.grants:
            if self.early is None:
                self.early = Difference("cs_event", str(seq), f"event {seq} grants grant {gid} again "
                                                              f"(first granted by event {self.grants[gid].seq})")
            return
        values = {
            "project_id": subject, "project": subject.split("@")[0], "digest": d.get("digest"),
            "team": d.get("team"), "pool": d.get("pool"), "width": d.get("width"), "start": d.get("start"),
            "end": d.get("end"), "promised_start": d.get("start"), "promised_end": d.get("end"),
            "charged_gs": d.get("gpu_seconds"), "refunded_gs": 0, "state": "granted",
            "created_at": d.get("issued_at", at), "started_at": None, "ended_at": None, "breach_gs": 0,
            "nodes": sorted(d.get("nodes") or ()),
        }
        receipt = {k: v for k, v in d.items() if k != "nodes"}
        receipt["project"] = subject
        self.grants[gid] = _Grant(seq, values, dict.fromkeys(values, seq), receipt)

    def _best_effort(self, seq: int, at: int, kind: str, subject: str, data: str) -> None:
        try:
            d = json.loads(data)
        except ValueError:
            return
        be_id = d.get("be")
        if not isinstance(be_id, int):
            return
        if kind == "be_queued":
            values = {"project_id": subject, "project": subject.split("@")[0], "digest": d.get("digest"),
                      "team": d.get("team"), "pool": d.get("pool"), "max_gpus": d.get("max_gpus"),
                      "budget_gs": d.get("budget_gpu_seconds"), "created_at": at, "state": "queued"}
            tasks = {(str(job), i): gpus for job, count, gpus in d.get("jobs") or () for i in range(count)}
            if be_id in self.best_effort and self.early is None:
                self.early = Difference("cs_event", str(seq), f"event {seq} queues best-effort submission {be_id} "
                                                              f"again (first by event {self.best_effort[be_id].seq})")
            self.best_effort.setdefault(be_id, _BestEffort(seq, values, tasks, seq))
            return
        be = self.best_effort.get(be_id)
        if be is None:
            if self.early is None:
                self.early = Difference("cs_event", str(seq), f"event {seq} ({kind}) is about best-effort "
                                                              f"submission {be_id}, which no be_queued event made")
            return
        be.values["state"], be.state_seq = BE_ENDS[kind], seq

    # -- compare ---------------------------------------------------------------------------

    def compare(self, s: Session) -> tuple[Difference | None, int]:
        """The first row that differs from the events (None if none), and how many rows were
        compared."""
        if self.early is not None:
            return self.early, 0
        rows = 0
        conn = s.connection()
        g = GrantRow.__table__.c  # type: ignore[attr-defined]
        seen: set[int] = set()
        for row in conn.execute(select(g.id, g.receipt, *[g[c] for c in GRANT_COLUMNS]).order_by(g.id)):
            rows += 1
            gid, receipt, *cols = row
            seen.add(gid)
            table = dict(zip(GRANT_COLUMNS, cols))
            name = f"{gid} ({table['project_id']})"
            built = self.grants.get(gid)
            if built is None:
                return Difference("cs_grant", name, "no granted event made it"), rows
            table["nodes"] = sorted(json.loads(table["nodes"])) if table["nodes"] else []
            for col in GRANT_COLUMNS:
                want, got = built.values[col], table[col]
                if col == "breach_gs" and built.breach_maybe is not None and got == want + built.breach_maybe[0]:
                    continue
                if got != want:
                    return Difference("cs_grant", name, f"{col} is {_show(got)} in the table, {_show(want)} by "
                                                        f"the events (event {built.set_by[col]})"), rows
            problem = _receipt_problem(receipt, built.receipt)
            if problem:
                return Difference("cs_grant", name, f"{problem} (event {built.seq})"), rows
        missing = sorted(set(self.grants) - seen)
        if missing:
            gid = missing[0]
            return Difference("cs_grant", f"{gid} ({self.grants[gid].values['project_id']})",
                              f"is missing from the table (granted by event {self.grants[gid].seq})"), rows

        r = JobRunRow.__table__.c  # type: ignore[attr-defined]
        runs_seen: set[tuple[int, str, int]] = set()
        for rid, gid, job, attempt, state, gpus, gpu_seconds, exit_codes in conn.execute(
                select(r.id, r.grant_id, r.job, r.attempt, r.state, r.gpus, r.gpu_seconds, r.exit_codes).order_by(r.id)):
            rows += 1
            key = (gid, job, attempt)
            name = f"{rid} (grant {gid} {job}#{attempt})"
            run = self.runs.get(key)
            if run is None or key in runs_seen:
                return Difference("cs_job_run", name, "no attempt_started or attempt_ended event made it"
                                  if run is None else "is a second row for the same attempt"), rows
            runs_seen.add(key)
            codes = _codes(exit_codes)
            for col, got, want in (("gpus", gpus, run.gpus), ("state", state, run.state),
                                   ("exit_codes", codes, run.exit_codes), ("gpu_seconds", gpu_seconds, run.gpu_seconds)):
                if want is not None and got != want:
                    return Difference("cs_job_run", name, f"{col} is {_show(got)} in the table, {_show(want)} by "
                                                          f"the events (event {run.seq})"), rows
        missing_runs = sorted(set(self.runs) - runs_seen, key=lambda k: self.runs[k].seq)
        if missing_runs:
            gid, job, attempt = missing_runs[0]
            return Difference("cs_job_run", f"grant {gid} {job}#{attempt}",
                              f"is missing from the table (started by event {self.runs[missing_runs[0]].seq})"), rows

        b = BreachRow.__table__.c  # type: ignore[attr-defined]
        spans: dict[int, int] = {}
        for bid, gid, team, start, end, width, gpu_seconds in conn.execute(
                select(b.id, b.grant_id, b.team, b.start, b.end, b.width, b.gpu_seconds).order_by(b.id)):
            rows += 1
            name = f"{bid} (grant {gid})"
            built = self.grants.get(gid)
            if built is None:
                return Difference("cs_breach", name, "is for a grant no event made"), rows
            if (team, width) != (built.values["team"], built.values["width"]):
                return Difference("cs_breach", name, f"is for team {team} on {width} GPUs; the grant is "
                                                     f"{built.values['team']}'s, {built.values['width']} GPUs wide"), rows
            if gpu_seconds != width * (end - start) or end < start:
                return Difference("cs_breach", name, f"{gpu_seconds} GPU-seconds is not {width} GPUs x "
                                                     f"[{start}, {end})"), rows
            spans[gid] = spans.get(gid, 0) + gpu_seconds
        for gid, built in sorted(self.grants.items()):
            total = built.values["breach_gs"]
            if gid in spans and spans[gid] != total and not (
                    built.breach_maybe is not None and spans[gid] == total + built.breach_maybe[0]):
                return Difference("cs_breach", f"grant {gid} ({built.values['project_id']})",
                                  f"the spans add up to {spans[gid]} GPU-seconds, the events to {total} "
                                  f"(event {built.set_by['breach_gs']})"), rows

        diff, n = self._compare_best_effort(conn)
        rows += n
        if diff is not None:
            return diff, rows

        p = ProjectRow.__table__.c  # type: ignore[attr-defined]
        teams: dict[str, str] = {}
        for built in self.grants.values():
            teams.setdefault(built.values["project_id"], built.values["team"])
        for be in self.best_effort.values():
            teams.setdefault(be.values["project_id"], be.values["team"])
        for pid, name, dg, team, spec_json in conn.execute(
                select(p.id, p.name, p.digest, p.team, p.spec_json).order_by(p.id)):
            rows += 1
            actual = hashlib.sha256(spec_json.encode("utf-8")).hexdigest()
            if actual != dg:
                return Difference("cs_project", pid, f"the stored spec's SHA-256 is {actual[:12]}…, "
                                                     f"not its digest {dg[:12]}…"), rows
            if pid != f"{name}@{dg[:12]}":
                return Difference("cs_project", pid, f"the id is not name@digest ({name}@{dg[:12]})"), rows
            if pid in teams and teams[pid] != team:
                return Difference("cs_project", pid, f"team is {team} in the table, {teams[pid]} by the events"), rows
        return None, rows


    def _compare_best_effort(self, conn: Any) -> tuple[Difference | None, int]:
        rows = 0
        b = BestEffortRow.__table__.c  # type: ignore[attr-defined]
        seen: set[int] = set()
        for row in conn.execute(select(b.id, *[b[c] for c in BE_COLUMNS]).order_by(b.id)):
            rows += 1
            be_id, *cols = row
            table = dict(zip(BE_COLUMNS, cols))
            name = f"{be_id} ({table['project_id']})"
            built = self.best_effort.get(be_id)
            if built is None:
                return Difference("cs_be", name, "no be_queued event made it"), rows
            seen.add(be_id)
            for col in BE_COLUMNS:
                if table[col] != built.values[col]:
                    by = built.state_seq if col == "state" else built.seq
                    return Difference("cs_be", name, f"{col} is {_show(table[col])} in the table, "
                                                     f"{_show(built.values[col])} by the events (event {by})"), rows
        missing = sorted(set(self.best_effort) - seen)
        if missing:
            be = self.best_effort[missing[0]]
            return Difference("cs_be", f"{missing[0]} ({be.values['project_id']})",
                              f"is missing from the table (queued by event {be.seq})"), rows
        t = BestEffortTaskRow.__table__.c  # type: ignore[attr-defined]
        found: dict[int, set[tuple[str, int]]] = {}
        for tid, be_id, team, job, index, gpus, queued_at in conn.execute(
                select(t.id, t.be_id, t.team, t.job, t["index"], t.gpus, t.queued_at).order_by(t.id)):
            rows += 1
            name = f"{tid} (submission {be_id} {job}[{index}])"
            built = self.best_effort.get(be_id)
            key = (job, index)
            if built is None or key not in built.tasks:
                return Difference("cs_be_task", name, "no be_queued event made it"), rows
            if key in found.setdefault(be_id, set()):
                return Difference("cs_be_task", name, "is a second row for the same task"), rows
            found[be_id].add(key)
            for col, got, want in (("gpus", gpus, built.tasks[key]), ("team", team, built.values["team"]),
                                   ("queued_at", queued_at, built.values["created_at"])):
                if got != want:
                    return Difference("cs_be_task", name, f"{col} is {_show(got)} in the table, {_show(want)} by "
                                                          f"the events (event {built.seq})"), rows
        for be_id, built in sorted(self.best_effort.items()):
            gone = sorted(set(built.tasks) - found.get(be_id, set()))
            if gone:
                job, index = gone[0]
                return Difference("cs_be_task", f"submission {be_id} {job}[{index}]",
                                  f"is missing from the table (queued by event {built.seq})"), rows
        return None, rows


def _receipt_problem(receipt: str, granted: dict[str, Any]) -> str | None:
    if not receipt:
        return "the receipt is empty"
    try:
        payload = json.loads(receipt)["payload"]
    except (ValueError, KeyError, TypeError):
        return "the receipt is not a signed receipt"
    for k, v in granted.items():
        if payload.get(k) != v:
            return f"the receipt's {k} is {_show(payload.get(k))}, {_show(v)} by the events"
    return None


def _codes(text: str | None) -> list[int]:
    try:
        out = json.loads(text or "[]")
    except ValueError:
        return [-1]
    return out if isinstance(out, list) else [-1]


def _show(v: Any) -> str:
    if v is None:
        return "null"
    return json.dumps(v) if isinstance(v, list) else str(v)
