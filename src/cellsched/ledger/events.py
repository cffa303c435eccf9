"""The append-only event chain: each event stores the SHA-256 of the one before it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from cellsched.ledger.tables import EventRow, SchemaInfo

GENESIS = "0" * 64


def _event_hash(prev_hash: str, seq: int, at: int, kind: str, subject: str, actor: str, data: str) -> str:
    body = json.dumps([prev_hash, seq, at, kind, subject, actor, data], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def append(s: Session, at: int, kind: str, subject: str, actor: str, data: dict[str, Any]) -> EventRow:
    """Append one event; must run inside :meth:`Ledger.write` (which serialises writers)."""
    last = s.exec(select(EventRow).order_by(col(EventRow.seq).desc()).limit(1)).first()
    seq = 1 if last is None else last.seq + 1
    prev = GENESIS if last is None else last.hash
    info = s.get(SchemaInfo, 1)
    if info is not None and info.head_seq >= seq:
        # The newest events were deleted: chain from the recorded head, so the gap stays
        # visible to audit instead of being papered over by this append.
        seq, prev = info.head_seq + 1, info.head_hash
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    row = EventRow(
        seq=seq, at=at, kind=kind, subject=subject, actor=actor, data=text, prev_hash=prev,
        hash=_event_hash(prev, seq, at, kind, subject, actor, text),
    )
    s.add(row)
    if info is not None:
        info.head_seq, info.head_hash = seq, row.hash
        s.add(info)
    s.flush()
    return row


@dataclass(frozen=True)
class AuditResult:
    ok: bool
    events: int
    first_bad: int | None = None
    problem: str | None = None
    head: str = GENESIS


def audit(s: Session) -> AuditResult:
    """Re-derive the chain; report the first event that was edited, removed or reordered."""
    prev = GENESIS
    expected = 1
    count = 0
    for row in s.exec(select(EventRow).order_by(col(EventRow.seq))):
        if row.seq != expected:
            return AuditResult(False, count, expected, f"event {expected} is missing (next is {row.seq})", prev)
        if row.prev_hash != prev:
            return AuditResult(False, count, row.seq, f"event {row.seq} does not follow event {row.seq - 1}", prev)
        h = _event_hash(row.prev_hash, row.seq, row.at, row.kind, row.subject, row.actor, row.data)
        if h != row.hash:
            return AuditResult(False, count, row.seq, f"event {row.seq} ({row.kind} {row.subject}) was altered", prev)
        prev = row.hash
        expected += 1
        count += 1
    info = s.get(SchemaInfo, 1)
    if info is not None and (info.head_seq, info.head_hash) != (count, prev):
        if info.head_seq > count:
            return AuditResult(False, count, count + 1, f"events {count + 1} to {info.head_seq} were removed", prev)
        return AuditResult(False, count, info.head_seq or 1, "the chain's head does not match the recorded head", prev)
    return AuditResult(True, count, None, None, prev)
