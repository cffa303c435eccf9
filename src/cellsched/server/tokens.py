"""Bearer tokens: issued by admins, 256-bit random, stored only as SHA-256 hashes.

A token proves a user over TCP (``Authorization: Bearer cst_...``). The secret is shown
once, when it is created; the ledger keeps its SHA-256, its owner, who issued it, when it
expires and whether it was revoked. Every creation and revocation is an event in the
ledger's hash chain (``token_created``/``token_revoked``, subject the token's id; never the
secret or its hash).

The rules, decided here for any caller (server routes and the local CLI alike):

- only admins (``admins`` in cluster.toml) create tokens, and only for a user the cluster
  config knows (a team member or an admin), so a typo does not mint a token for nobody;
- a token cannot create tokens, even an admin's: new tokens are issued by an admin proven
  by the kernel (the server's Unix socket) or holding the ledger itself, so a leaked token,
  once revoked, leaves nothing behind;
- admins see and revoke every token; a user sees and revokes their own.

A valid token's lookup is kept for :data:`LOOKUP_TTL_S` seconds (:class:`TokenCache`): a
revocation through this server works at once, one made elsewhere within that bound.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select

from cellsched.errors import BadInput, Denied, NotFound
from cellsched.ledger import events
from cellsched.ledger.tables import TokenRow
from cellsched.server.auth import TOKEN_PREFIX, Identity, token_hash
from cellsched.service import Env

SECRET_BYTES = 32  # 256 bits
DEFAULT_EXPIRES = "90d"
NEVER = ("never", "none")
USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")
NOTE_MAX = 200
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# How long a valid token's lookup is kept (``TokenCache``): a token revoked other than
# through this server stops working here within this many seconds.
LOOKUP_TTL_S = 5.0
LOOKUP_CACHE_SIZE = 4096

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expires(text: str | None) -> int | None:
    """Seconds until expiry from ``90d``, ``12h``, ``30m``, ``2w`` or ``3600s``; None for
    ``never``/``none`` (or None)."""
    if text is None:
        return None
    t = text.strip().lower()
    if t in NEVER:
        return None
    m = re.fullmatch(r"(\d{1,6})\s*([smhdw])", t)
    if m is None or int(m.group(1)) == 0:
        raise BadInput(f"expires: {text!r} is not a duration (use 90d, 12h, 30m, 2w, or never)")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class TokenInfo:
    """What anyone may see of a token: never the secret, never its hash."""

    id: str
    user: str
    created_by: str
    created_at: int
    expires_at: int | None
    revoked_at: int | None
    revoked_by: str | None
    note: str

    @classmethod
    def of(cls, row: TokenRow) -> TokenInfo:
        return cls(row.id, row.user, row.created_by, row.created_at, row.expires_at, row.revoked_at,
                   row.revoked_by, row.note)

    def state(self, now: int) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def to_json(self, now: int) -> dict[str, Any]:
        return {"id": self.id, "user": self.user, "state": self.state(now), "created_by": self.created_by,
                "created_at": self.created_at, "expires_at": self.expires_at, "revoked_at": self.revoked_at,
                "revoked_by": self.revoked_by, "note": self.note}


def is_admin(env: Env, user: str) -> bool:
    return user in env.cluster.admins


def known_user(env: Env, user: str) -> bool:
    """A user the cluster config names: an admin or a member of some team."""
    return is_admin(env, user) or any(user in t.members for t in env.cluster.teams)


def issue(env: Env, user: str, created_by: str, now: int, expires_at: int | None = None, note: str = "",
          via: str = "local") -> tuple[str, str]:
    """A new token for ``user``, recorded with its ``token_created`` event: (public id,
    secret). The secret is returned once and never stored. No rules checked: see
    :func:`create`."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    tid = "t" + secrets.token_hex(6)
    with env.ledger.write() as s:
        s.add(TokenRow(id=tid, sha256=token_hash(secret), user=user, created_by=created_by, created_at=now,
                       expires_at=expires_at, note=note))
        s.flush()
        events.append(s, now, "token_created", tid, created_by,
                      {"user": user, "expires_at": expires_at, "note": note, "via": via})
    return tid, secret


class TokenCache:
    """Valid tokens looked up lately, so that a request need not read the ledger to prove
    its caller: token hash -> (id, user, expires_at), each kept :data:`LOOKUP_TTL_S`
    seconds (monotonic clock) from its lookup, at most :data:`LOOKUP_CACHE_SIZE` of them.

    Expiry is checked against the request's clock on every use. A revocation through this
    process (``revoke``) empties the cache when it commits, and a lookup that read the
    ledger before that is not kept (``generation``); a revocation by anyone else (the
    local CLI on the ledger, another server) takes effect here within LOOKUP_TTL_S.
    Unknown tokens are never kept: a flood of made-up ones costs a read each, as before."""

    def __init__(self, ttl: float = 0.0, size: int = 0) -> None:
        self.ttl = ttl or LOOKUP_TTL_S
        self.size = size or LOOKUP_CACHE_SIZE
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[str, str, int | None, float]] = {}
        self.generation = 0

    def get(self, sha256: str, now: int) -> tuple[str, str] | None:
        with self._lock:
            hit = self._kept.get(sha256)
        if hit is None:
            return None
        tid, user, expires_at, until = hit
        if time.monotonic() >= until or (expires_at is not None and now >= expires_at):
            return None
        return tid, user

    def put(self, sha256: str, tid: str, user: str, expires_at: int | None, generation: int) -> None:
        with self._lock:
            if generation != self.generation:
                return  # a revocation committed since this lookup read the ledger
            if len(self._kept) >= self.size:
                self._kept.clear()  # rare (more live tokens than the size): simplest bound
            self._kept[sha256] = (tid, user, expires_at, time.monotonic() + self.ttl)

    def clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self.generation += 1


def _cache(env: Env) -> TokenCache:
    cache = env.token_cache
    if cache is None:
        with _CACHE_LOCK:
            cache = env.token_cache
            if cache is None:
                cache = env.token_cache = TokenCache()
    return cache  # type: ignore[no-any-return]


_CACHE_LOCK = threading.Lock()


def lookup(env: Env, secret: str, now: int) -> tuple[str, str] | None:
    """(token id, user) for a valid token, else None (unknown, expired or revoked), as the
    ledger says now."""
    return _read(env, token_hash(secret), now, None)


def kept(env: Env, secret: str, now: int) -> tuple[str, str] | None:
    """(token id, user) if a recent lookup of this valid token is kept, else None (then
    :func:`lookup_kept` reads the ledger). No I/O."""
    return _cache(env).get(token_hash(secret), now)


def lookup_kept(env: Env, secret: str, now: int) -> tuple[str, str] | None:
    """:func:`lookup` for a request to the server: a valid token's lookup is kept a few
    seconds (:class:`TokenCache`), so a revocation made elsewhere than through this server
    takes effect here within :data:`LOOKUP_TTL_S`."""
    h = token_hash(secret)
    cache = _cache(env)
    hit = cache.get(h, now)
    if hit is not None:
        return hit
    return _read(env, h, now, cache)


def _read(env: Env, sha256: str, now: int, cache: TokenCache | None) -> tuple[str, str] | None:
    generation = 0 if cache is None else cache.generation
    with env.ledger.read() as s:
        row = s.exec(select(TokenRow).where(TokenRow.sha256 == sha256)).first()
    if row is None or row.revoked_at is not None or (row.expires_at is not None and now >= row.expires_at):
        return None
    if cache is not None:
        cache.put(sha256, row.id, row.user, row.expires_at, generation)
    return row.id, row.user


def create(env: Env, caller: Identity, user: str, expires: str | None, note: str, now: int) -> tuple[TokenInfo, str]:
    """Issue a token for ``user`` expiring after ``expires`` (``90d``; ``never``), as
    ``caller``: (what the token is, its secret, to be shown once)."""
    if not is_admin(env, caller.user):
        raise Denied(f"{caller.user} may not create tokens: only admins ({', '.join(env.cluster.admins) or 'none'})")
    if caller.via == "token":
        raise Denied("tokens are not issued with a token: an admin creates them on the head node "
                     "(through the server's Unix socket) or on the ledger")
    user = user.strip()
    if not USER_RE.fullmatch(user):
        raise BadInput(f"user: {user!r} is not a user name")
    if not known_user(env, user):
        raise BadInput(f"user: {user} is neither an admin nor a member of any team in the cluster config")
    if len(note) > NOTE_MAX or any(ord(c) < 32 or ord(c) == 127 for c in note):
        raise BadInput(f"note: one line of at most {NOTE_MAX} characters, no control characters")
    ttl = parse_expires(expires)
    expires_at = None if ttl is None else now + ttl
    tid, secret = issue(env, user, caller.user, now, expires_at, note, via=caller.via)
    return TokenInfo(tid, user, caller.user, now, expires_at, None, None, note), secret


def listing(env: Env, caller: Identity) -> list[TokenInfo]:
    """Every token for an admin; the caller's own for anyone else. Oldest first."""
    q = select(TokenRow).order_by(col(TokenRow.created_at), col(TokenRow.id))
    if not is_admin(env, caller.user):
        q = q.where(TokenRow.user == caller.user)
    with env.ledger.read() as s:
        return [TokenInfo.of(r) for r in s.exec(q).all()]


def revoke(env: Env, caller: Identity, token_id: str, now: int) -> tuple[TokenInfo, bool]:
    """Revoke a token at once (admins: any; users: their own): (the token, whether it was
    revoked now; False if it already was)."""
    if not ID_RE.fullmatch(token_id):  # not an id we issue (and nothing to send to the database)
        raise NotFound(f"no token {token_id[:40]!r} (see `cellsched token list`)")
    with env.ledger.write() as s:
        row = s.get(TokenRow, token_id)
        if row is None:
            raise NotFound(f"no token {token_id!r} (see `cellsched token list`)")
        if not (is_admin(env, caller.user) or row.user == caller.user):
            raise Denied(f"{caller.user} may not revoke token {token_id} of {row.user}: only its user or admins")
        if row.revoked_at is not None:
            return TokenInfo.of(row), False
        row.revoked_at, row.revoked_by = now, caller.user
        s.add(row)
        s.flush()
        events.append(s, now, "token_revoked", row.id, caller.user, {"user": row.user, "via": caller.via})
        info = TokenInfo.of(row)
    _cache(env).clear()  # committed: from now on no request of this process gets in with it
    return info, True

