"""Team allowances: GPU-seconds per period, charged by the part of a window in each period.

Periods are calendar months, quarters or years in UTC, or ``none`` (one period forever).
A grant is charged in full when granted; an early release refunds the part not held.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from functools import lru_cache

from cellsched.core.calendar import FAR_FUTURE, FAR_PAST

UTC = dt.timezone.utc
_MONTHS = {"month": 1, "quarter": 3, "year": 12}
_SHORTEST_DAYS = {"month": 28, "quarter": 90, "year": 365}


@lru_cache(maxsize=4096)
def _bounds_cached(month_index: int, period: str) -> tuple[int, int]:
    step = _MONTHS[period]
    first = month_index - month_index % step
    y0, m0 = divmod(first, 12)
    y1, m1 = divmod(first + step, 12)
    start = dt.datetime(y0, m0 + 1, 1, tzinfo=UTC)
    if y1 > dt.MAXYEAR:  # the last period of year 9999 (a spec's latest time) never ends
        return int(start.timestamp()), FAR_FUTURE
    end = dt.datetime(y1, m1 + 1, 1, tzinfo=UTC)
    return int(start.timestamp()), int(end.timestamp())


def period_bounds(t: int, period: str) -> tuple[int, int]:
    """[start, end) of the period containing ``t`` (epoch seconds, UTC)."""
    if period == "none":
        return FAR_PAST, FAR_FUTURE
    d = dt.datetime.fromtimestamp(t, UTC)
    return _bounds_cached(d.year * 12 + d.month - 1, period)


def periods_touched_at_most(duration: int, period: str) -> int:
    """How many periods a window of ``duration`` seconds can touch at most."""
    if period == "none":
        return 1
    return 2 + duration // (_SHORTEST_DAYS[period] * 86400)


def split_by_period(start: int, end: int, width: int, period: str) -> list[tuple[int, int]]:
    """GPU-seconds of ``width`` GPUs over [start, end), as (period start, GPU-seconds)."""
    out: list[tuple[int, int]] = []
    t = start
    while t < end:
        p0, p1 = period_bounds(t, period)
        stop = min(end, p1)
        out.append((p0, width * (stop - t)))
        t = stop
    return out


@dataclass
class TeamBook:
    """Charged GPU-seconds of one team, per period start."""

    allowance: int
    period: str
    charged: dict[int, int] = field(default_factory=dict)

    def charge(self, start: int, end: int, width: int, sign: int = 1) -> None:
        for p0, gs in split_by_period(start, end, width, self.period):
            self.charged[p0] = self.charged.get(p0, 0) + sign * gs
            if self.charged[p0] == 0:
                del self.charged[p0]

    def refund(self, start: int, end: int, width: int) -> None:
        self.charge(start, end, width, sign=-1)

    def remaining(self, t: int) -> int:
        """GPU-seconds not yet charged in the period containing ``t``."""
        return self.allowance - self.charged.get(period_bounds(t, self.period)[0], 0)

    def shortfall(self, start: int, end: int, width: int) -> tuple[int, int] | None:
        """First (period start, GPU-seconds missing) if the window does not fit, else None."""
        for p0, gs in split_by_period(start, end, width, self.period):
            missing = self.charged.get(p0, 0) + gs - self.allowance
            if missing > 0:
                return p0, missing
        return None

    def next_fit(self, start: int, end: int, width: int) -> int | None:
        """None if [start, end) fits the allowance; else the earliest later start that could.

        Every start in between overdraws the same period at least as much: sliding the window
        later shrinks that period's part only once the window reaches past the period's end,
        so the first start that can fit puts exactly the room left (rounded down to whole
        seconds of ``width`` GPUs) into that period, or lies past it when there is no room."""
        short = self.shortfall(start, end, width)
        if short is None:
            return None
        p0 = short[0]
        p1 = period_bounds(p0, self.period)[1]
        room = self.allowance - self.charged.get(p0, 0)
        return max(start + 1, p1 - room // width if room >= 0 else p1)


@dataclass(frozen=True)
class BestEffortUse:
    """A team's best-effort allowance in one period (docs/lending.md, "Allowance").

    A best-effort submission counts in the period it was submitted in, all of it: while it
    is live (queued: its tasks may still run) it **reserves** its whole budget, or what it
    was charged if that is more; once it has ended, only what it was **charged** (a cancelled
    one whose tasks still hold GPUs reserves as a live one until they have left: they are
    charged then). So ``remaining = allowance − charged of the ended ones − reserved by the
    live ones``, never below 0 (summed by the ledger: ``ledger.best_effort.use_of``). A
    submission is accepted only if its budget fits in ``remaining``: the team can never be
    charged more than its allowance in a period, whatever its submissions' tasks do."""

    allowance: int
    charged: int  # charged to every submission of the period, live or ended
    reserved: int  # what the live submissions may still be charged, beyond their charge so far

    @property
    def committed(self) -> int:
        return self.charged + self.reserved

    @property
    def remaining(self) -> int:
        return max(0, self.allowance - self.committed)

    @property
    def overdrawn(self) -> int:
        return max(0, self.committed - self.allowance)

