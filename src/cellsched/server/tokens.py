"""Bearer tokens: issued by admins, 256-bit random, stored only as SHA-256 hashes.

(First version: issue and lookup. Its owner adds listing, revocation and the admin rules.)
"""

from __future__ import annotations

import secrets

from cellsched.ledger.tables import TokenRow
from cellsched.server.auth import token_hash
from cellsched.service import Env


def issue(env: Env, user: str, created_by: str, now: int, expires_at: int | None = None, note: str = "") -> tuple[str, str]:
    """A new token for ``user``: (public id, secret). The secret is returned once and never stored."""
    secret = secrets.token_urlsafe(32)
    tid = "t" + secrets.token_hex(4)
    with env.ledger.write() as s:
        s.add(TokenRow(id=tid, sha256=token_hash(secret), user=user, created_by=created_by, created_at=now,
                       expires_at=expires_at, note=note))
    return tid, secret


def lookup(env: Env, secret: str, now: int) -> tuple[str, str] | None:
    """(token id, user) for a valid token, else None (unknown, expired or revoked)."""
    from sqlmodel import select

    with env.ledger.read() as s:
        row = s.exec(select(TokenRow).where(TokenRow.sha256 == token_hash(secret))).first()
    if row is None or row.revoked_at is not None or (row.expires_at is not None and now >= row.expires_at):
        return None
    return row.id, row.user
