"""Which period a report covers: the current allowance period by default, a named one
(``2026-11``, ``2026-Q4``, ``2026``) or the span before a time (``7d``).

Parsing is the standard library only (the CLI parses flags before it knows whether a
server will answer); :func:`current_period` needs the cluster config and loads the
allowance arithmetic when called.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

from cellsched.errors import BadInput

if TYPE_CHECKING:
    from cellsched.spec.cluster import ClusterConfig

UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_RELATIVE = re.compile(r"^(\d+)\s*(m|min|h|d|w)$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_QUARTER = re.compile(r"^(\d{4})-[Qq]([1-4])$")
_YEAR = re.compile(r"^(\d{4})$")


def current_period(cluster: ClusterConfig, now: int) -> tuple[int, int]:
    """[since, until) of the allowance period containing ``now``: the teams' period when
    they share one (month, quarter or year), else the calendar month (UTC). Teams whose
    allowance never resets (``none``) have no say."""
    from cellsched.core.allowance import period_bounds

    kinds = {t.period for t in cluster.teams if t.period != "none"}
    kind = kinds.pop() if len(kinds) == 1 else "month"
    return period_bounds(now, kind)


def relative_seconds(value: str) -> int | None:
    """``7d`` → 604800 (``30m``/``30min``, ``12h``, ``7d``, ``2w``); None if ``value`` is not
    a relative span (then it is a time)."""
    m = _RELATIVE.match(value.strip())
    if m is None:
        return None
    n = int(m.group(1)) * UNITS[m.group(2)[0]]
    if n <= 0:
        raise BadInput(f"--since {value}: a span must be longer than zero")
    if n > MAX_SPAN_S:
        raise BadInput(f"--since {value}: a span of at most 100 years (5218w), or give a time")
    return n


MAX_SPAN_S = 5218 * 7 * 86400  # about 100 years: a report reaches back no further than that


def named_period(value: str) -> tuple[int, int]:
    """``--period``: a month (``2026-11``), a quarter (``2026-Q4``) or a year (``2026``) as
    [since, until) epoch seconds, UTC."""
    v = value.strip()
    if m := _MONTH.match(v):
        year, month = int(m.group(1)), int(m.group(2))
        if not 1 <= month <= 12:
            raise BadInput(f"--period {value}: no month {month} (use 2026-11, 2026-Q4 or 2026)")
        return _span(year, month, 1)
    if m := _QUARTER.match(v):
        return _span(int(m.group(1)), 3 * int(m.group(2)) - 2, 3)
    if m := _YEAR.match(v):
        return _span(int(m.group(1)), 1, 12)
    raise BadInput(f"--period {value!r}: use a month (2026-11), a quarter (2026-Q4) or a year (2026)")


def _span(year: int, month: int, months: int) -> tuple[int, int]:
    if not 1970 <= year <= 9998:
        raise BadInput(f"--period {year}: a year from 1970 to 9998")
    start = dt.datetime(year, month, 1, tzinfo=dt.timezone.utc)
    k = month - 1 + months
    end = dt.datetime(year + k // 12, k % 12 + 1, 1, tzinfo=dt.timezone.utc)
    return int(start.timestamp()), int(end.timestamp())
