"""The write side of a grant's lifecycle: every state change of a grant after admission.

Each function runs inside a ledger write (the caller's session) and appends the event that
explains it, so derived rows and the event chain never disagree."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from cellsched.ledger import events
from cellsched.ledger.tables import GrantRow


def end_grant(s: Session, row: GrantRow, now: int, state: str, caller: str, extra: dict[str, Any]) -> int:
    """End ``row`` at ``now`` (or before it starts) with ``state``, refund the rest of the
    window, and record the event; returns GPU-seconds refunded. Runs inside a write."""
    cut = min(max(now, row.start), row.end)
    refund = row.width * (row.end - cut)
    row.end = cut
    row.refunded_gs += refund
    row.state = state
    row.ended_at = now
    s.add(row)
    events.append(s, now, state, row.project_id, caller, {"grant": row.id, "end": cut, "refunded_gpu_seconds": refund, **extra})
    return refund


