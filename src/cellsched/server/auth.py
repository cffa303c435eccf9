"""Who is calling: proven, never claimed.

On the Unix socket the kernel says (``SO_PEERCRED``, read by ``cellsched.server.peercred``
into ``scope[PEER_KEY]``); over TCP a bearer token an admin issued. Environment variables,
headers naming a user and the like never establish identity.

(First version: the identity dependency and token lookup. Its owner extends it.)
"""

from __future__ import annotations

import hashlib
import pwd
from dataclasses import dataclass

from fastapi import APIRouter, HTTPException, Request

router = APIRouter()

PEER_KEY = "cellsched.peer"  # scope key: {"uid": int, "gid": int, "pid": int}, set on the Unix socket only


@dataclass(frozen=True)
class Identity:
    """The authenticated caller: an OS user name, and how it was proven ("socket" or
    "token"; ``token_id`` is the token's public handle)."""

    user: str
    via: str
    token_id: str | None = None


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status_code=401, detail=message, headers={"WWW-Authenticate": "Bearer"})


async def identity(request: Request) -> Identity:
    """FastAPI dependency: the caller, or 401."""
    peer = request.scope.get(PEER_KEY)
    if peer is not None:
        try:
            return Identity(pwd.getpwuid(peer["uid"]).pw_name, "socket")
        except KeyError:
            return Identity(f"uid:{peer['uid']}", "socket")
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthorized("no credentials: log in with `cellsched login URL` (a token from an admin)")
    from cellsched.runtime.clock import now_s
    from cellsched.server.app import state_of
    from cellsched.server.tokens import lookup

    found = lookup(state_of(request).env, secret.strip(), now_s())
    if found is None:
        raise _unauthorized("invalid, expired or revoked token")
    return Identity(found[1], "token", found[0])
