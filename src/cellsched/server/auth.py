"""Who is calling: proven, never claimed.

On the Unix socket the kernel says (``SO_PEERCRED``, read by ``cellsched.server.peercred``
into ``scope[PEER_KEY]``): the caller is the OS user of the connecting process, and a token
sent there is ignored. Over TCP, a bearer token an admin issued (``server/tokens.py``).
Environment variables, headers naming a user and the like never establish identity; a
request with neither is a 401.

Routes here: ``/api/whoami`` and the tokens (``/api/tokens``). The rules about who may do
what with tokens live in ``server/tokens.py``; the routes only pass the proven caller.
"""

from __future__ import annotations

import hashlib
import pwd
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

router = APIRouter()

PEER_KEY = "cellsched.peer"  # scope key: {"uid": int, "gid": int, "pid": int}, set on the Unix socket only
TOKEN_PREFIX = "cst_"  # every token starts so: recognisable to log redaction and to secret scanners
MAX_SECRET = 256  # longer "tokens" are not ours: refused before hashing


@dataclass(frozen=True)
class Identity:
    """The authenticated caller: an OS user name, and how it was proven ("socket",
    "token", or "local" for the CLI on its own ledger; ``token_id`` is the token's public
    handle)."""

    user: str
    via: str
    token_id: str | None = None


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


def user_of_uid(uid: int) -> str:
    """The OS user name of ``uid`` (``uid:N`` if the system has no name for it)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


async def identity(request: Request) -> AsyncIterator[Identity]:
    """FastAPI dependency: the caller, or 401; and the request counted as one of the
    caller's in progress until it is answered, or 429 if they have
    ``ServerState.per_user_at_once`` (16) in progress already: one user cannot take the
    thread pool every route runs in (40 threads) from the others.

    A token kept from a recent lookup is checked here on the event loop (no I/O); otherwise
    the ledger is read in the thread pool, so a lookup never blocks the event loop. Lookups
    are kept a few seconds (``tokens.LOOKUP_TTL_S``): a token revoked other than through
    this server stops working within that; through it, at once."""
    from cellsched.server.app import state_of

    who = await _proven(request)
    state = state_of(request)
    busy = state.in_progress  # (touched on the event loop's thread only)
    if busy.get(who.user, 0) >= state.per_user_at_once:
        raise HTTPException(429, f"{who.user} has {state.per_user_at_once} requests in progress already: "
                                 "wait for their answers", headers={"Retry-After": "1"})
    busy[who.user] = busy.get(who.user, 0) + 1
    try:
        yield who
    finally:
        left = busy[who.user] - 1
        if left:
            busy[who.user] = left
        else:
            del busy[who.user]


async def _proven(request: Request) -> Identity:
    """The caller, or 401 (:func:`identity`)."""
    peer = request.scope.get(PEER_KEY)
    if peer is not None:
        return Identity(user_of_uid(int(peer["uid"])), "socket")
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise _unauthorized("no credentials: log in with `cellsched login URL` (a token from an admin)")
    if len(secret) > MAX_SECRET:
        raise _unauthorized("invalid, expired or revoked token")
    from starlette.concurrency import run_in_threadpool

    from cellsched.runtime.clock import now_s
    from cellsched.server.app import state_of
    from cellsched.server.tokens import kept, lookup_kept

    env, now = state_of(request).env, now_s()
    found = kept(env, secret, now)
    if found is None:
        found = await run_in_threadpool(lookup_kept, env, secret, now)
    if found is None:
        raise _unauthorized("invalid, expired or revoked token")
    return Identity(found[1], "token", found[0])


Caller = Annotated[Identity, Depends(identity)]


class TokenCreate(BaseModel):
    """``POST /api/tokens``: for whom, for how long (``90d``, ``12h``, ``never``; default
    90 days), and a note (where the token is used)."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=64)
    expires: str | None = Field(default="90d", max_length=32)
    note: str = Field(default="", max_length=200)


def _env(request: Request):  # type: ignore[no-untyped-def]
    from cellsched.server.app import state_of

    return state_of(request).env


@router.get("/api/whoami")
def whoami(request: Request, who: Caller) -> dict[str, Any]:
    """The caller as the server sees them: user, how it was proven, the token's id, and
    their teams."""
    env = _env(request)
    return {"user": who.user, "via": who.via, "token": who.token_id,
            "admin": who.user in env.cluster.admins,
            "teams": [t.name for t in env.cluster.teams if who.user in t.members]}


@router.post("/api/tokens", status_code=201)
def create_token(body: TokenCreate, request: Request, who: Caller) -> dict[str, Any]:
    """Issue a token (admins, proven by the Unix socket). The answer holds the secret
    (``token``): it is shown this once and never again."""
    from cellsched.runtime.clock import now_s
    from cellsched.server import tokens

    now = now_s()
    info, secret = tokens.create(_env(request), who, body.user, body.expires, body.note, now)
    return {**info.to_json(now), "token": secret}


@router.get("/api/tokens")
def list_tokens(request: Request, who: Caller) -> list[dict[str, Any]]:
    """Tokens: all of them for admins, the caller's own for anyone else (never a secret)."""
    from cellsched.runtime.clock import now_s
    from cellsched.server import tokens

    now = now_s()
    return [t.to_json(now) for t in tokens.listing(_env(request), who)]


@router.delete("/api/tokens/{token_id}")
def revoke_token(token_id: str, request: Request, who: Caller) -> dict[str, Any]:
    """Revoke a token at once (admins: any; users: their own). Revoking a revoked token
    changes nothing (``revoked_now`` false)."""
    from cellsched.runtime.clock import now_s
    from cellsched.server import tokens

    now = now_s()
    info, fresh = tokens.revoke(_env(request), who, token_id, now)
    return {**info.to_json(now), "revoked_now": fresh}
