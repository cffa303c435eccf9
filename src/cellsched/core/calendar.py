"""Capacity calendar: free GPUs of one pool as a step function of integer time.

Breakpoints live in two parallel Python lists (times, free-from-that-time), so lookups are
``bisect`` and scans touch only the segments a window crosses. Equal neighbours are merged
on every change, so the list stays as short as the schedule is busy.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

FAR_PAST = -(1 << 62)
FAR_FUTURE = 1 << 62


class CapacityCalendar:
    """Free GPUs over time for a pool of ``capacity`` GPUs; time is integer seconds."""

    __slots__ = ("capacity", "_t", "_f")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._t: list[int] = [FAR_PAST]
        self._f: list[int] = [capacity]

    def __len__(self) -> int:
        return len(self._t)

    def steps(self) -> list[tuple[int, int]]:
        """(time, free from then on) for every breakpoint after the far-past sentinel."""
        return list(zip(self._t[1:], self._f[1:]))

    def free_at(self, t: int) -> int:
        return self._f[bisect_right(self._t, t) - 1]

    def min_free(self, start: int, end: int) -> int:
        """Fewest free GPUs at any instant of [start, end) (capacity if the span is empty)."""
        if end <= start:
            return self.capacity
        t, f = self._t, self._f
        i = bisect_right(t, start) - 1
        lo = f[i]
        n = len(t)
        i += 1
        while i < n and t[i] < end:
            if f[i] < lo:
                lo = f[i]
            i += 1
        return lo

    def reserve(self, start: int, end: int, width: int) -> None:
        """Take ``width`` GPUs over [start, end); refuses (ValueError) to over-commit."""
        if width <= 0 or end <= start:
            raise ValueError(f"bad reservation [{start}, {end}) x {width}")
        if self.min_free(start, end) < width:
            raise ValueError(f"over-commit: {width} GPUs not free over [{start}, {end})")
        self._add(start, end, -width)

    def release(self, start: int, end: int, width: int) -> None:
        """Give back ``width`` GPUs over [start, end) that an earlier reserve took."""
        if end <= start:
            return
        if self.capacity - self._max_free(start, end) < width:
            raise ValueError(f"release of GPUs that were not reserved over [{start}, {end})")
        self._add(start, end, width)

    def earliest(self, width: int, duration: int, start: int, deadline: int | None = None) -> int | None:
        """Earliest t >= start with ``width`` GPUs free over [t, t + duration) and
        t + duration <= deadline; None when there is no such t."""
        if width > self.capacity:
            return None
        t, f = self._t, self._f
        n = len(t)
        i = bisect_right(t, start) - 1
        cand = start
        limit = FAR_FUTURE if deadline is None else deadline - duration
        if cand > limit:
            return None
        while True:
            if f[i] < width:
                i += 1
                if i >= n:
                    return None
                cand = t[i]
                if cand > limit:
                    return None
                continue
            i += 1
            if i >= n or t[i] >= cand + duration:
                return cand

    def widest(self, start: int, end: int) -> int:
        """The most GPUs free together over the whole of [start, end)."""
        return self.min_free(start, end)

    def forget_before(self, t: int) -> None:
        """Drop history before ``t``: nothing can be reserved in the past any more."""
        i = bisect_right(self._t, t) - 1
        if i > 0:
            del self._t[1 : i + 1]
            del self._f[: i]

    # -- internals ---------------------------------------------------------------------

    def _max_free(self, start: int, end: int) -> int:
        t, f = self._t, self._f
        i = bisect_right(t, start) - 1
        hi = f[i]
        i += 1
        while i < len(t) and t[i] < end:
            hi = max(hi, f[i])
            i += 1
        return hi

    def _split(self, at: int) -> int:
        """Index of the breakpoint at ``at``, inserting one if needed."""
        t = self._t
        i = bisect_right(t, at) - 1
        if t[i] != at:
            i += 1
            t.insert(i, at)
            self._f.insert(i, self._f[i - 1])
        return i

    def _add(self, start: int, end: int, delta: int) -> None:
        i = self._split(start)
        j = self._split(end)
        f = self._f
        for k in range(i, j):
            f[k] += delta
        # Merge equal neighbours at both edges (j first: deleting it keeps i valid).
        t = self._t
        if j < len(t) and f[j] == f[j - 1]:
            del t[j], f[j]
        if i > 0 and f[i] == f[i - 1]:
            del t[i], f[i]


def earliest_common(
    calendars: Sequence[tuple[CapacityCalendar, int]],
    duration: int,
    start: int,
    deadline: int | None = None,
) -> int | None:
    """Earliest t >= start at which every (calendar, width) pair fits over [t, t+duration)."""
    t = start
    while True:
        moved = False
        for cal, width in calendars:
            found = cal.earliest(width, duration, t, deadline)
            if found is None:
                return None
            if found != t:
                t = found
                moved = True
        if not moved:
            return t
