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
"""

from __future__ import annotations

import re
import secrets
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


def lookup(env: Env, secret: str, now: int) -> tuple[str, str] | None:
    """(token id, user) for a valid token, else None (unknown, expired or revoked)."""
    with env.ledger.read() as s:
        row = s.exec(select(TokenRow).where(TokenRow.sha256 == token_hash(secret))).first()
    if row is None or row.revoked_at is not None or (row.expires_at is not None and now >= row.expires_at):
        return None
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
        return TokenInfo.of(row), True

