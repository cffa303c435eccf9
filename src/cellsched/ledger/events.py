"""The append-only event chain: each event stores the SHA-256 of the one before it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert as sa_insert
from sqlalchemy import select as sa_select
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


def append_many(s: Session, items: Sequence[tuple[int, str, str, str, dict[str, Any]]]) -> tuple[int, str]:
    """``append`` for several events ``(at, kind, subject, actor, data)``, in order: the
    same chain as appending them one by one, with one read of the head and one insert (a
    group commit writes a batch of submits so). Must run inside :meth:`Ledger.write`.
    Returns the new head, ``(seq, hash)``."""
    s.flush()  # events added through the session come first (a Core read does not autoflush)
    e = EventRow.__table__.c  # type: ignore[attr-defined]
    last = s.connection().execute(sa_select(e.seq, e.hash).order_by(e.seq.desc()).limit(1)).first()
    seq = 1 if last is None else last[0] + 1
    prev = GENESIS if last is None else last[1]
    info = s.get(SchemaInfo, 1)
    if info is not None and info.head_seq >= seq:
        seq, prev = info.head_seq + 1, info.head_hash  # as ``append``: the gap stays visible
    rows = []
    for at, kind, subject, actor, data in items:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        h = _event_hash(prev, seq, at, kind, subject, actor, text)
        rows.append({"seq": seq, "at": at, "kind": kind, "subject": subject, "actor": actor, "data": text,
                     "prev_hash": prev, "hash": h})
        seq, prev = seq + 1, h
    if not rows:
        return seq - 1, prev
    s.connection().execute(sa_insert(EventRow.__table__), rows)  # type: ignore[attr-defined]
    if info is not None:
        info.head_seq, info.head_hash = seq - 1, prev
        s.add(info)
        s.flush()
    return seq - 1, prev


@dataclass(frozen=True)
class AuditResult:
    """``ok``, the events checked, the first bad event (``first_bad``, a sequence number; None
    when the chain is intact), what is wrong (``problem``) and the chain's head. When the
    chain is intact but a derived table disagrees with it, ``table`` and ``row`` name the
    first row that differs; ``rows`` counts the derived rows compared."""

    ok: bool
    events: int
    first_bad: int | None = None
    problem: str | None = None
    head: str = GENESIS
    table: str | None = None
    row: str | None = None
    rows: int = 0


def audit(s: Session, derived: bool = True) -> AuditResult:
    """Re-derive the chain and report the first event that was edited, removed or reordered;
    then (``derived``) rebuild grants, charges, refunds, breaches, job runs and projects from
    the events and name the first table row that differs (:mod:`cellsched.ledger.audit`)."""
    from cellsched.ledger.audit import Rebuild

    rebuild = Rebuild() if derived else None
    prev = GENESIS
    expected = 1
    count = 0
    e = EventRow.__table__.c  # type: ignore[attr-defined]
    query = sa_select(e.seq, e.at, e.kind, e.subject, e.actor, e.data, e.prev_hash, e.hash).order_by(e.seq)
    for seq, at, kind, subject, actor, data, prev_hash, hash_ in s.connection().execute(query):
        if seq != expected:
            return AuditResult(False, count, expected, f"event {expected} is missing (next is {seq})", prev)
        if prev_hash != prev:
            return AuditResult(False, count, seq, f"event {seq} does not follow event {seq - 1}", prev)
        if _event_hash(prev_hash, seq, at, kind, subject, actor, data) != hash_:
            return AuditResult(False, count, seq, f"event {seq} ({kind} {subject}) was altered", prev)
        if rebuild is not None:
            rebuild.feed(seq, at, kind, subject, data)
        prev = hash_
        expected += 1
        count += 1
    info = s.get(SchemaInfo, 1)
    if info is not None and (info.head_seq, info.head_hash) != (count, prev):
        if info.head_seq > count:
            return AuditResult(False, count, count + 1, f"events {count + 1} to {info.head_seq} were removed", prev)
        return AuditResult(False, count, info.head_seq or 1, "the chain's head does not match the recorded head", prev)
    if rebuild is None:
        return AuditResult(True, count, None, None, prev)
    diff, rows = rebuild.compare(s)
    if diff is not None:
        return AuditResult(False, count, None, f"{diff.table} {diff.row}: {diff.problem}", prev, diff.table, diff.row,
                           rows)
    return AuditResult(True, count, None, None, prev, rows=rows)
