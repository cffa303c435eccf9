"""What history says about how long grants hold their windows: the input of the expected
start (``cellsched.core.expect``), read from the ledger.

A grant that ended (``completed`` or ``expired``; not ``cancelled`` or ``replaced``, which
say nothing about how long work runs) in the last ``window_s`` seconds counts with the
GPU-seconds of the window it held (``width x (end - start)``: its window as cut when it was
released) against the GPU-seconds granted (``width x (promised_end - promised_start)``).
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from cellsched.core.admission import Grant
from cellsched.core.expect import WINDOW_S, Ratios, expected_starts, ratios_from
from cellsched.ledger.snapshot import grant_of
from cellsched.ledger.tables import GrantRow

ENDED = ("completed", "expired")


def ratios(s: Session, now: int, window_s: int = WINDOW_S) -> Ratios:
    """Per team (and for the cluster) the share of granted windows held, recently."""
    rows = s.exec(select(GrantRow).where(col(GrantRow.state).in_(ENDED),
                                         col(GrantRow.ended_at) >= now - window_s,
                                         col(GrantRow.ended_at) <= now).order_by(col(GrantRow.id)))
    return ratios_from(((r.team, r.width * max(0, r.end - r.start),
                         r.width * (r.promised_end - r.promised_start)) for r in rows), window_s)


def live_grants(s: Session, now: int) -> list[tuple[int, Grant]]:
    """Every grant holding GPUs from ``now`` on (running or waiting), keyed by id."""
    rows = s.exec(select(GrantRow).where(col(GrantRow.state).in_(("granted", "reserving", "active")),
                                         col(GrantRow.end) > now).order_by(col(GrantRow.id)))
    return [(r.id or 0, grant_of(r)) for r in rows]


def expected_for(s: Session, pools: dict[str, int], now: int, ids: list[int],
                 extra: tuple[int, Grant] | None = None) -> tuple[dict[int, int], Ratios]:
    """Expected starts of the grants ``ids`` (and of ``extra``, a grant not in the ledger: a
    dry run's), with the ratios they rest on."""
    live = live_grants(s, now)
    if extra is not None:
        live.append(extra)
    want = list(ids) + ([extra[0]] if extra is not None else [])
    r = ratios(s, now)
    return expected_starts(pools, live, r, now, want=want), r
