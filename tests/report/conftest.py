from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from report_builders import DAY, H, T0, LedgerBuilder  # noqa: E402


@pytest.fixture
def known(env):  # type: ignore[no-untyped-def]
    """``env`` holding the hand-built ledger of :func:`fill_known`."""
    fill_known(env.ledger)
    return env


def fill_known(ledger) -> None:  # type: ignore[no-untyped-def]
    """The hand-built ledger whose report is worked out in ``test_compute.KNOWN``.

    Cluster: one pool of 16 H100s; interp 1500, evals 100, pretraining 20000 GPU-h a month.
    Period: [T0, T0 + 7 d) = 2026-11-01 .. 11-08; now = T0 + 10 d.
    """
    b = LedgerBuilder(ledger)
    # a: crosses the period's start; its job started 10 minutes after the window opened.
    b.grant("a", "interp", 4, T0 - 10 * H, T0 + 10 * H, created=T0 - 12 * H, started_at=T0 - 10 * H + 600)
    b.run("a", 4, T0 - 10 * H + 600, T0 + 6 * H)
    # b: released early (all jobs done at +29 h, window cut at +30 h of a 48 h window).
    b.grant("b", "evals", 2, T0 + 24 * H, T0 + 48 * H, created=T0 + 20 * H, cut_at=T0 + 30 * H,
            started_at=T0 + 24 * H)
    b.run("b", 2, T0 + 24 * H, T0 + 29 * H)
    # c: crosses the period's end; a node was lost for an hour (8 GPU-h breached).
    b.grant("c", "pretraining", 8, T0 + 6 * DAY, T0 + 9 * DAY, created=T0 + 2 * DAY, state="expired",
            breach_gs=8 * H)
    # d: cancelled an hour after it was granted, a day before it would have started.
    b.grant("d", "interp", 2, T0 + 4 * DAY, T0 + 5 * DAY, created=T0 + 3 * DAY, cut_at=T0 + 3 * DAY + H,
            state="cancelled")
    # e: wholly before the period (October); f: granted after the period, for Nov 21.
    b.grant("e", "interp", 1, T0 - 5 * DAY, T0 - 4 * DAY, created=T0 - 6 * DAY, state="expired")
    b.run("e", 1, T0 - 5 * DAY, T0 - 4 * DAY)
    b.grant("f", "interp", 1, T0 + 20 * DAY, T0 + 21 * DAY, created=T0 + 9 * DAY)
    b.refused(T0 + 1 * DAY, "x", "interp", "over_allowance")
    b.refused(T0 + 2 * DAY, "y", "evals", "over_allowance")
    b.refused(T0 + 3 * DAY, "z", "pretraining", "no_capacity_in_window")
    b.refused(T0 - 1 * DAY, "w", "interp", "wider_than_pool")  # before the period
