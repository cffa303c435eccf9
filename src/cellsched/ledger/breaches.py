"""Breach spans: when and how many GPUs of a grant's window the cluster did not provide.

Read by admission's snapshot (``ledger.snapshot.load_schedule``), ``budget`` and the report, which
all refund them to the team in the period they fall in (docs/daemon.md, "Guarantee breaches")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from sqlmodel import Session, col, select

from cellsched.ledger.tables import BreachRow


class _Grant(Protocol):
    id: int | None
    start: int
    width: int
    breach_gs: int


def breach_intervals(s: Session, rows: Sequence[_Grant]) -> dict[int, list[tuple[int, int, int]]]:
    """Per grant, the ``(start, end, width)`` intervals its window was not provided (breach),
    from ``BreachRow``. A breach recorded before those rows existed (``breach_gs`` larger than
    its rows add up to) is placed from the window's start, where breaches usually begin."""
    ids = [r.id for r in rows if r.id is not None and r.breach_gs > 0]
    out: dict[int, list[tuple[int, int, int]]] = {}
    if not ids:
        return out
    seen: dict[int, int] = {}
    for b in s.exec(select(BreachRow).where(col(BreachRow.grant_id).in_(ids)).order_by(col(BreachRow.id))):
        out.setdefault(b.grant_id, []).append((b.start, b.end, b.width))
        seen[b.grant_id] = seen.get(b.grant_id, 0) + b.gpu_seconds
    for r in rows:
        rest = r.breach_gs - seen.get(r.id or 0, 0)
        if r.id is not None and rest > 0 and r.width > 0:
            out.setdefault(r.id, []).append((r.start, r.start + rest // r.width, r.width))
    return out
