"""The commands over HTTP: ``/api/...``, one route per CLI command (``docs/api.md``).

Each route takes the proven caller (``Depends(identity)``) and calls ``cellsched.ops`` with
``identity.user`` as the caller; who may do what is decided there, in the service layer
(members submit; members or admins cancel). The answer is exactly the JSON the command
prints with ``--json``; an error is the app's one shape, ``{"error", "exit_code"}``, with
the line the CLI prints. Request bodies are pydantic models that forbid unknown keys.

A spec arrives as its text and file name (the format by the extension) and is sealed here.
A spec with code: the client snapshots the code (it is on the client's machine), uploads
the archive to ``PUT /api/code/{digest}`` (content-addressed, checked, stored once; its own
size limit, ``ServerState.max_code_body``), then submits the spec with the digest.

The routes are plain functions: FastAPI runs them in its thread pool, where the ledger's
write lock serialises the writers.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from cellsched import ops
from cellsched.runtime.clock import now_s
from cellsched.server.app import state_of
from cellsched.server.auth import Identity, identity

router = APIRouter(prefix="/api", tags=["commands"])

MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z: the last second a report can print


def _no_nul(v: str | None) -> str | None:
    # PostgreSQL cannot hold NUL in text: refused here rather than a database error later.
    if v is not None and "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


Name = Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_no_nul)]
ProjectQ = Annotated[str, Query(min_length=1, max_length=512), AfterValidator(_no_nul)]
OptName = Annotated[str | None, Query(min_length=1, max_length=512), AfterValidator(_no_nul)]
Digest = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]
Who = Annotated[Identity, Depends(identity)]


class JSON(Response):
    """The ops JSON as the CLI would print it (``default=str``, NaN allowed), compact; ASCII
    on the wire, so that any string the ledger holds (even a lone surrogate) arrives intact."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), default=str).encode("ascii")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValidateIn(_In):
    specs: list[ops.SpecIn] = Field(min_length=1, max_length=1000)


class CancelIn(_In):
    project: Name


class VerifyIn(_In):
    project: Name
    spec: ops.SpecIn | None = None
    code_now: ops.CodeNow | None = None


@router.post("/validate", response_class=JSON, summary="cellsched validate")
def validate(body: ValidateIn, who: Who) -> JSON:
    """Check and seal specs (text + file name each, and their code's snapshot reference);
    nothing is written."""
    return JSON(ops.validate_specs(None, who.user, body.specs, now_s()))


async def submitter(request: Request, who: Who) -> Identity:
    """The caller of a submit, or 429 when they are past their rate (``ServerState.submits``:
    a burst of 120, then one a second): every submit, refused ones too, is an event of the
    ledger, so a loop of them would grow it without bound."""
    import math

    rate = state_of(request).submits
    wait = rate.take(who.user, time.monotonic())
    if wait > 0:
        raise HTTPException(429, f"{who.user} is submitting faster than the server takes ({rate.burst} at once, then "
                                 f"{rate.per_s:g} a second): wait {math.ceil(wait)} s",
                            headers={"Retry-After": str(math.ceil(wait))})
    return who


@router.post("/submit", response_class=JSON, summary="cellsched submit")
def submit(body: ops.SpecIn, request: Request, who: Annotated[Identity, Depends(submitter)],
           replace: bool = False) -> JSON:
    """Seal and submit a spec: ``decision`` is ``granted`` or ``refused`` (the CLI's exit 1),
    both a 200; best-effort work is ``queued`` or ``refused`` (docs/lending.md). A spec with code names a snapshot uploaded first (``PUT /api/code/{digest}``).
    ``replace``: it replaces the live grant of its name (``submit --replace``)."""
    state = state_of(request)
    t0 = time.perf_counter()
    out = ops.submit(state.env, who.user, body, now_s(), replace=replace)
    if state.metrics is not None:
        state.metrics.observe_submit(time.perf_counter() - t0, out)
    return JSON(out)


@router.post("/plan", response_class=JSON, summary="cellsched plan (submit --dry-run)")
def plan(body: ops.SpecIn, request: Request, who: Who, replace: bool = False) -> JSON:
    """What ``submit`` would answer now, with nothing written (``dry_run: true``); a spec with
    code needs only its snapshot's reference, nothing uploaded."""
    return JSON(ops.submit(state_of(request).env, who.user, body, now_s(), dry_run=True, replace=replace))


@router.get("/calendar", response_class=JSON, summary="cellsched calendar")
def calendar(request: Request, who: Who, pool: OptName = None,
             days: Annotated[int, Query(ge=1, le=366)] = 14,
             fit: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
             team: OptName = None) -> JSON:
    """Per pool, the widest grant that could start in each column over ``days``; with
    ``fit`` (``16x24h``), the earliest window of that shape (for ``team``: admission's own)."""
    return JSON(ops.calendar(state_of(request).env, who.user, now_s(), pool=pool, days=days, fit=fit, team=team))


@router.put("/code/{digest}", response_class=JSON, summary="upload a code snapshot")
async def put_code(digest: Digest, request: Request, who: Who) -> JSON:
    """Store a code snapshot (the archive ``executor/_codepack`` makes) under its content
    digest. The archive's content must have that digest; storing one that is there already
    changes nothing. Members of a team and admins only: anyone else is refused before the
    body is read, and at most ``uploads_at_once`` (2) bodies are read at a time (each may be up
    to the server's code body limit, 100 MiB by default), one of them per user (429 for a
    user's second); a body that stops arriving gives its turn up (408)."""
    state = state_of(request)
    ops.check_may_upload_code(state.env, who.user)
    if who.user in state.uploading:
        raise HTTPException(429, f"{who.user} is uploading code already: one upload at a time")
    if state.uploads is None:
        state.uploads = asyncio.Semaphore(state.uploads_at_once)
    state.uploading.add(who.user)
    try:
        async with state.uploads:
            blob = await _upload_body(request, state.upload_idle_s, state.upload_read_s)
            return JSON(await run_in_threadpool(ops.store_code, state.env, who.user, digest, blob, now_s()))
    finally:
        state.uploading.discard(who.user)


async def _upload_body(request: Request, idle_s: float, read_s: float) -> bytes:
    """The request's body, or 408 if no data comes for ``idle_s`` or it is not all in after
    ``read_s`` seconds (a turn of the upload slots is not held at the client's pace)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + read_s
    chunks = []
    stream = request.stream().__aiter__()
    while True:
        wait = min(idle_s, deadline - loop.time())
        try:
            if wait <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(stream.__anext__(), wait)
        except StopAsyncIteration:
            return b"".join(chunks)
        except TimeoutError:
            why = f"no data for {idle_s:g} s" if loop.time() < deadline else f"not all in after {read_s:g} s"
            raise HTTPException(408, f"code upload: {why}: its turn is given up (send the archive again)") from None
        except ClientDisconnect:  # nobody to answer: not a server error either
            raise HTTPException(400, "code upload: the client went away") from None
        chunks.append(chunk)


@router.get("/code/{digest}", response_class=JSON, summary="is a code snapshot stored?")
def get_code(digest: Digest, request: Request, who: Who) -> JSON:
    """The stored snapshot's size (404 if the ledger does not hold it: upload it)."""
    return JSON(ops.code_stored(state_of(request).env, who.user, digest, now_s()))


@router.post("/cancel", response_class=JSON, summary="cellsched cancel")
def cancel(body: CancelIn, request: Request, who: Who) -> JSON:
    """End a project's live grant now, or cancel its live best-effort submission (members of
    its team or admins)."""
    return JSON(ops.cancel(state_of(request).env, who.user, body.project, now_s()))


@router.post("/verify", response_class=JSON, summary="cellsched verify")
def verify(body: VerifyIn, request: Request, who: Who) -> JSON:
    """Check a grant's receipt and sealed spec; with ``spec``, that its words are the sealed
    ones, and (``code_now``, the client's snapshot digest today) whether its code changed."""
    return JSON(ops.verify(state_of(request).env, who.user, body.project, now_s(), spec=body.spec,
                           code_now=body.code_now))


@router.get("/status", response_class=JSON, summary="cellsched status")
def status(request: Request, who: Who, project: OptName = None,
           everything: Annotated[bool, Query(alias="all")] = False) -> JSON:
    """Every project's newest grant (or one project's), with progress and job attempts, then
    best-effort submissions (items with ``kind`` "best-effort"); names no longer live only if
    they ended in the last 7 days, unless ``all``."""
    return JSON(ops.status(state_of(request).env, who.user, project, now_s(), everything))


@router.get("/budget", response_class=JSON, summary="cellsched budget")
def budget(request: Request, who: Who, name: ProjectQ) -> JSON:
    """A team's allowance this period (``name`` a team, or a project for its line)."""
    return JSON(ops.budget(state_of(request).env, who.user, name, now_s()))


@router.get("/report", response_class=JSON, summary="cellsched report")
def report(request: Request, who: Who,
           since: Annotated[int | None, Query(ge=0, le=MAX_TIME)] = None,
           until: Annotated[int | None, Query(ge=0, le=MAX_TIME)] = None,
           team: OptName = None,
           last: Annotated[int | None, Query(ge=1, le=MAX_TIME)] = None) -> JSON:
    """Utilisation over ``[since, until)`` (epoch seconds; default the current allowance
    period; ``last`` seconds: the span before ``until``, ``--since 7d``): the data
    ``report --html`` and ``--png`` are drawn from."""
    return JSON(ops.report(state_of(request).env, who.user, since, until, team, now_s(), last=last))


@router.get("/audit", response_class=JSON, summary="cellsched audit")
def audit(request: Request, who: Who) -> JSON:
    """The ledger's hash chain, re-derived (``ok`` false names the first bad event)."""
    return JSON(ops.audit(state_of(request).env.ledger, who.user, now_s()))


@router.get("/daemon", response_class=JSON, summary="cellsched daemon")
def daemon(request: Request, who: Who) -> JSON:
    """Who serves the ledger (its lease), by the database's clock."""
    return JSON(ops.daemon(state_of(request).env, who.user, now_s()))


@router.get("/cluster", response_class=JSON, summary="pools' GPU types, teams' periods")
def cluster(request: Request, who: Who) -> JSON:
    """What the CLI shows beside a grant: each pool's GPU type and size, each team's period."""
    return JSON(ops.cluster(state_of(request).env, who.user, now_s()))


@router.get("/logs", response_class=JSON, summary="cellsched logs: the listing")
def logs(request: Request, who: Who, project: ProjectQ, job: OptName = None,
         rank: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
         attempt: Annotated[int | None, Query(ge=1, le=1_000_000)] = None) -> JSON:
    """The project's attempts and the rank logs ``logs`` prints for these arguments."""
    return JSON(ops.logs(state_of(request).env, who.user, project, job, rank, attempt, now_s()))


@router.get("/logs/read", response_class=JSON, summary="cellsched logs: one rank's bytes")
def log_read(request: Request, who: Who, project: ProjectQ,
             job: Annotated[str, Query(min_length=1, max_length=512), AfterValidator(_no_nul)],
             attempt: Annotated[int, Query(ge=1, le=1_000_000)],
             rank: Annotated[int, Query(ge=0, le=1_000_000)],
             offset: Annotated[int, Query(ge=0, le=1 << 50)] = 0,
             limit: Annotated[int, Query(ge=1, le=ops.LOG_CHUNK)] = ops.LOG_CHUNK) -> JSON:
    """Up to ``limit`` bytes of one rank's log from ``offset`` (base64), for ``logs`` and
    ``logs --follow`` (which polls with the ``next_offset`` it was given)."""
    return JSON(ops.log_read(state_of(request).env, who.user, project, job, attempt, rank, offset, now_s(),
                             limit=limit))
