"""The one wall clock. Everything else takes time as an integer argument.

``CELLSCHED_NOW`` (epoch seconds or ISO 8601) pins the clock, for tests and what-if runs.
"""

from __future__ import annotations

import datetime as dt
import os
import time

from cellsched.errors import BadInput


# 9999-12-31T23:59:59Z: the latest time a date can name (and every later step can print).
LATEST = 253402300799


def parse_time(value: str, what: str = "time") -> int:
    """Epoch seconds from ``1764547200``, ``2026-12-01``, ``2026-12-01T12:00`` or with a zone
    (no zone means UTC)."""
    v = value.strip()
    digits = v.removeprefix("-")
    if digits.isascii() and digits.isdigit():  # not str.isdigit alone: "²" passes it, int() refuses it
        if not 0 <= int(v) <= LATEST:
            raise BadInput(f"{what}: {v} is out of range (epoch seconds from 0 to {LATEST})")
        return int(v)
    try:
        parsed = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"{what}: {value!r} is not a time (use 2026-12-01 or 2026-12-01T12:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return int(parsed.timestamp())


def now_s() -> int:
    pinned = os.environ.get("CELLSCHED_NOW")
    if pinned:
        return parse_time(pinned, "CELLSCHED_NOW")
    return int(time.time())
