"""The commands as data: one function per CLI command, returning exactly the JSON that the
command prints with ``--json`` (the ``*_utc`` keys and the ``daemon`` key included).

The CLI calls these on a local ledger (the embedded default) or asks ``cellsched server``,
whose API calls the same functions for its authenticated caller; either way the CLI renders
what people read from this JSON alone, so both modes print the same.

Every function takes ``(env, caller, ..., now)``: the service environment, who asks (the OS
user locally, the proven identity on the server) and the time. Inputs are plain data. A
spec is its text and its file name (:class:`SpecIn`: the format goes by the name's
extension, and every error line starts with the name, as the loader's do); its code is a
reference to a snapshot (:class:`CodeRef`) the caller took from the spec file's directory,
whose archive is in the ledger already (uploaded to the server) or given beside it (local).

Only pydantic and the spec models load with this module; the ledger stack loads on the
first call, so the thin client may use the request models.
"""

from __future__ import annotations

import base64
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cellsched import fmt
from cellsched.errors import BadInput, NotFound
from cellsched.spec.load import MAX_BYTES, SUFFIXES, parse_document, validate
from cellsched.spec.models import ProjectSpec

if TYPE_CHECKING:
    from cellsched.ledger.db import Ledger
    from cellsched.service import Env
    from cellsched.spec.code import Snapshot

LOG_CHUNK = 1 << 20  # bytes of a log one read returns at most
_HEX64 = r"^[0-9a-f]{64}$"


# -- inputs ---------------------------------------------------------------------------------


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CodeRef(_In):
    """A spec's code as the client snapshotted it: the snapshot's content ``digest``, the
    full ``commit`` for code from git (None for a directory), where it was taken from
    (``source``, for people) and its size (``files``, ``bytes``, ``packed_bytes``: shown by
    ``validate``; ``submit`` reads them from the stored snapshot)."""

    digest: str = Field(pattern=_HEX64)
    commit: str | None = Field(default=None, pattern=r"^([0-9a-f]{40}|[0-9a-f]{64})$")
    source: str = Field(default="", max_length=8192)
    files: int | None = Field(default=None, ge=0)
    bytes: int | None = Field(default=None, ge=0)
    packed_bytes: int | None = Field(default=None, ge=0)

    @classmethod
    def of(cls, snap: Snapshot, commit: str | None) -> CodeRef:
        return cls(digest=snap.digest, commit=commit, source=snap.source, files=snap.files,
                   bytes=snap.content_bytes, packed_bytes=snap.size)

    def snapshot_json(self) -> dict[str, Any]:
        """As ``Snapshot.to_json`` (validate's ``code``)."""
        return {"digest": self.digest, "files": self.files, "bytes": self.bytes,
                "packed_bytes": self.packed_bytes, "source": self.source}


class SpecIn(_In):
    """A spec file: its name as the user gave it (the format by its extension; it starts
    every error line), its text, and its code snapshot's reference if it has code."""

    file: str = Field(min_length=1, max_length=4096)
    text: str
    code: CodeRef | None = None

    @field_validator("file")
    @classmethod
    def _one_line(cls, v: str) -> str:
        if any(ord(c) < 32 or c == "\x7f" for c in v):
            raise ValueError("must be a file name on one line")
        return v


class CodeNow(_In):
    """``verify --spec``: the spec file's code today, as the client snapshotted it: its
    ``digest``, or the ``problem`` that kept it from being snapshotted."""

    digest: str | None = Field(default=None, pattern=_HEX64)
    problem: str | None = Field(default=None, max_length=4096)


# -- specs ----------------------------------------------------------------------------------


def spec_kind(file: str) -> str:
    """The format of a spec file by its extension, or the loader's line for any other."""
    suffix = PurePath(file).suffix
    kind = SUFFIXES.get(suffix.lower())
    if kind is None:
        raise BadInput(f"{file}: unknown file type {suffix!r} (use .toml, .yaml, .yml or .json)")
    return kind


def written_spec(spec: SpecIn) -> ProjectSpec:
    """The spec as written (its code not sealed): the loader's checks on text, with the
    loader's lines (``load_written`` for a file)."""
    kind = spec_kind(spec.file)
    size = len(spec.text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise BadInput(f"{spec.file}: {size:,} bytes is too large (limit {MAX_BYTES:,})")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in spec.text):  # only JSON can carry these
        raise BadInput(f"{spec.file}: not UTF-8 text")
    if not spec.text.strip():
        raise BadInput(f"{spec.file}: file is empty")
    return validate(ProjectSpec, parse_document(spec.text, kind, spec.file), spec.file)


def sealed_spec(spec: SpecIn) -> ProjectSpec:
    """The spec ready to seal: its words, with its code's snapshot digest (and full commit)
    put in as ``load_sealed`` puts them."""
    written = written_spec(spec)
    ref = spec.code
    if written.code is None:
        if ref is not None:
            raise BadInput(f"{spec.file}: code: the spec has no code, but a code snapshot was given")
        return written
    if ref is None:
        raise BadInput(f"{spec.file}: code: the spec has code: give its snapshot's digest")
    update: dict[str, Any] = {"digest": ref.digest}
    if written.code.git is None:
        if ref.commit is not None:
            raise BadInput(f"{spec.file}: code.commit: only with git")
    else:
        assert written.code.commit is not None
        if ref.commit is None or not ref.commit.startswith(written.code.commit):
            raise BadInput(f"{spec.file}: code.commit: the snapshot's commit {ref.commit} is not "
                           f"{written.code.commit}")
        update["commit"] = ref.commit
    return written.model_copy(update={"code": written.code.model_copy(update=update)})


# -- helpers --------------------------------------------------------------------------------


def iso(t: float | None) -> str | None:
    """A time for programs: ISO 8601 UTC (the CLI's ``render.iso``)."""
    return fmt.iso(t)


def _iso_times(data: dict[str, Any]) -> None:
    """Add ISO UTC beside every epoch field of a grant, refusal, delay or best-effort
    submission (and its tasks)."""
    _be_times(data.get("best_effort"))
    if "expected_start" in data:  # a granted submit's (cellsched.expected)
        data["expected_start_utc"] = iso(data["expected_start"])
    for obj in (data.get("grant"), data.get("refusal"), data.get("delay")):
        if not obj:
            continue
        for k in ("start", "end", "promised_start", "promised_end", "started_at", "ended_at", "earliest_start",
                  "wanted_start", "free_from"):
            if k in obj:
                obj[k + "_utc"] = iso(obj[k])
        for alt in [*obj.get("alternatives", []), *obj.get("sooner", [])]:
            alt["start_utc"], alt["end_utc"] = iso(alt["start"]), iso(alt["end"])


def _be_times(item: dict[str, Any] | None) -> None:
    """ISO UTC beside the times of a best-effort submission (``status`` item) and its tasks."""
    if not item:
        return
    for k in ("created_at", "ended_at"):
        item[k + "_utc"] = iso(item.get(k))
    for t in item.get("task_list", ()):
        for k in ("queued_at", "started_at", "ended_at"):
            t[k + "_utc"] = iso(t.get(k))


def daemon_json(env: Env) -> dict[str, Any]:
    """Who serves the ledger (``status``/``budget``/``report``'s ``daemon`` key)."""
    from cellsched.ledger.lease import state

    return state(env.ledger).to_json()


# -- the commands ---------------------------------------------------------------------------


def validate_specs(env: Env | None, caller: str, specs: list[SpecIn], now: int) -> list[dict[str, Any]]:
    """``validate``: each spec's name, id and digest (and its code's snapshot). Needs no
    ledger; stops at the first bad spec."""
    from cellsched.spec.seal import digest, project_id

    out = []
    for spec in specs:
        sealed = sealed_spec(spec)
        d = digest(sealed)
        item: dict[str, Any] = {"file": spec.file, "name": sealed.name, "id": project_id(sealed, d), "digest": d}
        if spec.code is not None:
            item["code"] = spec.code.snapshot_json()
        out.append(item)
    return out


def submit(env: Env, caller: str, spec: SpecIn, now: int, snapshot: Snapshot | None = None, *,
           dry_run: bool = False, replace: bool = False) -> dict[str, Any]:
    """``submit``: granted or refused (``decision``); best-effort work is queued or refused
    (docs/lending.md). The code's archive is ``snapshot`` (local), or already in the ledger
    (uploaded to the server with ``store_code``).

    ``dry_run`` (``submit --dry-run``, ``plan``): the same answer, nothing written (a spec
    with code needs no stored snapshot). ``replace`` (``--replace``): the spec replaces the
    live grant of its name (as ``replaces = "name@digest"`` in it would say)."""
    from cellsched import service
    from cellsched.spec.load import Sealed

    sealed = sealed_spec(spec)
    if replace and sealed.best_effort:
        raise BadInput(f"{spec.file}: --replace: best-effort work has no window to replace "
                       "(cancel the old submission, then submit this one)")
    if replace:
        sealed = _replacing(env, spec.file, sealed)
    if snapshot is not None:
        if spec.code is None or snapshot.digest != spec.code.digest:
            raise BadInput(f"{spec.file}: code: the snapshot given is not the spec's")
        outcome = service.submit(env, Sealed(sealed, snapshot), caller, now, dry_run=dry_run)
    else:
        source = None if spec.code is None else spec.code.source
        info = None if spec.code is None else spec.code.snapshot_json()
        outcome = service.submit(env, sealed, caller, now, code_source=source, dry_run=dry_run, code_info=info)
    data = outcome.to_json()
    _iso_times(data)
    return data


def _replacing(env: Env, file: str, sealed: ProjectSpec) -> ProjectSpec:
    """The spec with ``replaces`` naming the live grant of its name. Again after it was
    granted (the live grant is then this very version): the same spec, so the same digest
    and the existing grant."""
    from cellsched import service

    live = service.live_version(env, sealed.name)
    if live is None:
        raise NotFound(f"{file}: --replace: project {sealed.name} has no live grant to replace")
    pid, live_spec = live
    if sealed.replaces is not None and sealed.replaces != pid:
        raise BadInput(f"{file}: --replace: the spec says replaces = {sealed.replaces!r}, the live grant is {pid}")
    if live_spec is not None and live_spec.model_copy(update={"replaces": None}) == sealed.model_copy(
            update={"replaces": None}):
        return live_spec
    return sealed.model_copy(update={"replaces": pid})


def calendar(env: Env, caller: str, now: int, pool: str | None = None, days: int = 14, fit: str | None = None,
             team: str | None = None) -> dict[str, Any]:
    """``calendar``: per pool over ``days``, the widest grant that could start in each
    column (node rule); with ``fit`` (``16x24h``: GPUs × window hours, or days ``2d``), the
    earliest window of that shape per pool (capacity alone, or admission's own answer for
    ``team``)."""
    from cellsched import service

    if not 1 <= days <= 366:
        raise BadInput(f"--days: {days} is not between 1 and 366")
    shape = None if fit is None else parse_fit(fit)
    data = service.calendar(env, now, pool=pool, days=days, fit=shape, team=team)
    data["from_utc"], data["until_utc"] = iso(data["from"]), iso(data["until"])
    for p in data["pools"]:
        for c in p["changes"]:
            c["start_utc"] = iso(c["start"])
    if data["fit"] is not None:
        for a in [*data["fit"]["pools"], *([data["fit"]["earliest"]] if data["fit"]["earliest"] else [])]:
            a["start_utc"], a["end_utc"] = iso(a["start"]), iso(a["end"])
    return data


def parse_fit(text: str) -> tuple[int, int]:
    """``16x24h`` (16 GPUs for a 24 h window), ``8x2d``, ``4x36`` (hours): (GPUs, seconds)."""
    import re

    m = re.fullmatch(r"\s*(\d{1,6})\s*[x×]\s*(\d{1,6}(?:\.\d{1,3})?)\s*(h|d)?\s*", text)
    if m is None or int(m.group(1)) < 1 or float(m.group(2)) <= 0:
        raise BadInput(f"--fit: {text!r} is not GPUS x HOURS (like 16x24h, or 8x2d)")
    seconds = round(float(m.group(2)) * (86400 if m.group(3) == "d" else 3600))
    return int(m.group(1)), seconds


def store_code(env: Env, caller: str, digest: str, blob: bytes, now: int) -> dict[str, Any]:
    """``PUT /api/code/{digest}``: store a code snapshot the client took (idempotent)."""
    from cellsched import service

    return service.store_code(env, caller, digest, blob, now)


def check_may_upload_code(env: Env, caller: str) -> None:
    """Denied unless ``caller`` may upload code (before an upload's body is read)."""
    from cellsched import service

    service.check_may_upload_code(env, caller)


def code_stored(env: Env, caller: str, digest: str, now: int) -> dict[str, Any]:
    """Whether the ledger holds a code snapshot for a team of the caller (so a client need not
    upload it again); another team's is not there, to this caller (``service.code_meta_for``)."""
    from cellsched import service

    with env.ledger.read() as s:
        meta = service.code_meta_for(env, s, caller, digest)
    if meta is None:
        raise NotFound(f"no code snapshot sha256:{digest} in the ledger")
    return {"digest": digest, "stored": True, "files": meta[1], "bytes": meta[2], "packed_bytes": meta[0]}


def cancel(env: Env, caller: str, project: str, now: int) -> dict[str, Any]:
    """``cancel``: the project's live grant ended now, what was not held refunded; or its
    live best-effort submission cancelled (queued tasks now, running ones by the daemon)."""
    from cellsched import service

    out = service.cancel(env, project, caller, now)
    _iso_times(out)
    return out


def verify(env: Env, caller: str, project: str, now: int, spec: SpecIn | None = None,
           code_now: CodeNow | None = None) -> dict[str, Any]:
    """``verify``: the receipt and the sealed spec (and its stored code) check out; with
    ``spec``, that its words are the sealed ones and (``code_now``) whether its code changed."""
    from cellsched import service

    written = None if spec is None else written_spec(spec)  # bad input first: before the ledger

    def today(sealed_digest: str) -> dict[str, Any]:
        if code_now is None:
            return service.code_now(sealed_digest, None, "not snapshotted by the client")
        return service.code_now(sealed_digest, code_now.digest, code_now.problem)

    out = service.verify(env, project, written=written, where=spec.file if spec else "spec", code_now=today)
    # Beside the receipt, not inside it: the signed payload stays exactly as signed.
    for k in ("start", "end", "issued_at"):
        out[k + "_utc"] = iso(out["receipt"].get(k))
    return out


def status(env: Env, caller: str, project: str | None, now: int, everything: bool = False) -> list[dict[str, Any]]:
    """``status``: every project's newest grant (or one project's) with progress and jobs,
    then best-effort submissions (``kind`` "best-effort", docs/lending.md); each item
    carries the daemon's state (the output stays a list).

    Without a project, a name whose newest grant (or submission) is no longer live is listed
    only if it ended in the last ``service.STATUS_RECENT_S`` (7 days), unless ``everything``;
    each item says from when (``listed_since``, None with ``everything`` or a project) and
    how many names were left out (``older_not_listed``)."""
    from cellsched import service

    since = None if everything or project is not None else now - service.STATUS_RECENT_S
    items, older = service.status(env, project, now, since)
    from cellsched import expected

    expected.add_to_status(env, items, now)  # each grant's expected start
    daemon = daemon_json(env)
    for it in items:
        if it.get("kind") == "best-effort":
            _be_times(it)
        else:
            for k in ("start", "end", "promised_start", "promised_end", "started_at", "ended_at"):
                it[k + "_utc"] = iso(it[k])
        if "expected_start" in it:
            it["expected_start_utc"] = iso(it["expected_start"])
        it["listed_since"], it["listed_since_utc"], it["older_not_listed"] = since, iso(since), older
        it["daemon"] = daemon
    return items


def budget(env: Env, caller: str, name: str, now: int) -> dict[str, Any]:
    """``budget``: a team's allowance this period (or its line for one project)."""
    from cellsched import service

    data = service.budget(env, name, now).to_json()
    data["period_start_utc"], data["period_end_utc"] = iso(data["period_start"]), iso(data["period_end"])
    data["daemon"] = daemon_json(env)
    return data


def report(env: Env, caller: str, since: int | None, until: int | None, team: str | None, now: int,
           last: int | None = None) -> dict[str, Any]:
    """``report``: utilisation over ``[since, until)``, the data ``report --html``/``--png``
    render, and the daemon's state.

    With neither bound (nor ``last``), the allowance period containing ``now``
    (:func:`cellsched.report.period.current_period`), so windows granted for the rest of it
    count. ``until`` defaults to now when a start is given; ``last`` (seconds, ``--since
    7d``) puts the start that long before ``until``; ``until`` alone starts at its own
    allowance period's start."""
    from cellsched.report import compute, snapshot
    from cellsched.report.period import current_period

    if since is None and until is None and last is None:
        t0, t1 = current_period(env.cluster, now)
    else:
        t1 = until if until is not None else now
        if since is not None:
            t0 = since
        elif last is not None:
            t0 = t1 - last
        else:
            t0 = current_period(env.cluster, t1 - 1)[0]
    if t1 <= t0:
        raise BadInput(f"--since must be before --until (got {compute.utc(t0)} → {compute.utc(t1)})")
    if team is not None and env.cluster.team(team) is None:
        names = ", ".join(t.name for t in env.cluster.teams) or "none"
        raise BadInput(f"--team: no team {team!r} in {env.cluster_path} (teams: {names})")
    snap = snapshot.load(env.ledger, env.cluster, t0, t1)
    data = compute.build(snap, env.cluster, t0, t1, now, team=team)
    return {**data, "daemon": daemon_json(env)}


def audit(ledger: Ledger, caller: str, now: int) -> dict[str, Any]:
    """``audit``: the hash chain re-derived and the derived tables rebuilt from it (``ok``
    false names the first bad event, or the ``table`` and ``row`` that differ; ``rows``
    counts the derived rows compared)."""
    from cellsched.ledger import events

    with ledger.read() as s:
        result = events.audit(s)
    return {"ok": result.ok, "events": result.events, "first_bad": result.first_bad,
            "problem": result.problem, "head": result.head, "table": result.table, "row": result.row,
            "rows": result.rows}


def daemon(env: Env, caller: str, now: int) -> dict[str, Any]:
    """``daemon``: who serves the ledger (database clock), with ``*_utc`` times."""
    data = daemon_json(env)
    for k in ("since", "renewed_at", "expires_at", "down_since", "db_now"):
        data[k + "_utc"] = iso(None if data[k] is None else int(data[k]))
    return data


def cluster(env: Env, caller: str, now: int) -> dict[str, Any]:
    """What the CLI shows beside a grant: each pool's GPU type and size, each team's period."""
    return {"pools": {p.name: {"gpu_type": p.gpu_type, "gpus": p.gpus} for p in env.cluster.pools},
            "teams": {t.name: {"period": t.period} for t in env.cluster.teams}}


def logs(env: Env, caller: str, project: str, job: str | None, rank: int | None, attempt: int | None,
         now: int) -> dict[str, Any]:
    """``logs``: the project's newest grant, its attempts (oldest first) and the rank logs
    ``logs`` prints for these arguments, in order (read them with :func:`log_read`)."""
    from cellsched.runtime import logs as L

    from cellsched import service

    g, log_dir, runs = L.locate(env, project)
    service.check_may_read_logs(env, g.team, g.project_id, caller)
    out: dict[str, Any] = {
        "project": g.project_id, "kind": g.kind, "grant_state": g.state, "grant_live": g.live, "log_dir": log_dir,
        "attempts": [{"job": a.job, "attempt": a.attempt, "state": a.state, "gpus": a.gpus} for a in runs],
        "files": [], "headers": False,
    }
    if not runs:
        return out
    picked = L.pick(runs, job, attempt)
    for a in picked:
        ranks = [rank] if rank is not None else list(range(a.gpus))
        out["headers"] = out["headers"] or len(picked) > 1 or len(ranks) > 1
        for r in ranks:
            p = L.rank_log(log_dir, a.job, a.attempt, r)
            out["files"].append({"job": a.job, "attempt": a.attempt, "state": a.state, "rank": r, "path": str(p)})
    return out


def log_read(env: Env, caller: str, project: str, job: str, attempt: int, rank: int, offset: int, now: int,
             limit: int = LOG_CHUNK) -> dict[str, Any]:
    """Up to ``limit`` bytes of one rank's log from ``offset`` (``data_b64``, base64: the
    bytes as written), ``next_offset`` and ``size`` (``exists`` false: no log yet). The file
    is found through the ledger, never by a path the caller names."""
    from cellsched.runtime import logs as L

    from cellsched import service

    g, log_dir, runs = L.locate(env, project)
    service.check_may_read_logs(env, g.team, g.project_id, caller)
    if not any(a.job == job and a.attempt == attempt for a in runs):
        L.pick(runs, job, attempt)  # raises NotFound naming what there is
    p = L.rank_log(log_dir, job, attempt, rank)
    data, size, exists = L.read_chunk(p, offset, max(1, min(limit, LOG_CHUNK)), within=log_dir)
    return {"path": str(p), "exists": exists, "offset": offset, "next_offset": offset + len(data),
            "size": size, "data_b64": base64.b64encode(data).decode("ascii")}
