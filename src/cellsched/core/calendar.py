"""Capacity calendar: free GPUs of one pool as a step function of integer time.

Breakpoints live in two parallel Python lists (times, free-from-that-time), so lookups are
``bisect`` and scans touch only the segments a window crosses. Equal neighbours are merged
on every change, so the list stays as short as the schedule is busy. A long calendar (a
pool with a year of grants) also keeps the least and the most free of every BLOCK
breakpoints, so a search over months reads a block at a time. Any change drops them; they
are made again once the long scans since the last change have read as many breakpoints as
making them does (a calendar that changes between every two searches never pays for them).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from itertools import compress, islice

FAR_PAST = -(1 << 62)
FAR_FUTURE = 1 << 62
BLOCK = 64  # breakpoints per block of the long-scan summaries
LONG = 4 * BLOCK  # spans shorter than this are scanned directly
BLOCKED_FROM = 4096  # calendars shorter than this never make the summaries


def _tail(xs: list[int], k: int) -> Iterator[int]:
    """An iterator over ``xs[k:]`` without copying or stepping over the first ``k``."""
    it = iter(xs)
    it.__setstate__(k)  # type: ignore[attr-defined]
    return it


class CapacityCalendar:
    """Free GPUs over time for a pool of ``capacity`` GPUs; time is integer seconds."""

    __slots__ = ("capacity", "_blk", "_scanned", "_t", "_f")

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError("capacity must be >= 0")
        self.capacity = capacity
        self._t: list[int] = [FAR_PAST]
        self._f: list[int] = [capacity]
        self._blk: tuple[list[int], list[int]] | None = None  # (mins, maxes) per BLOCK
        self._scanned = 0  # breakpoints long scans have read since the last change

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
        t = self._t
        i = bisect_right(t, start) - 1
        j = bisect_left(t, end, i + 1)
        return self._min(i, j) if j - i > 1 else self._f[i]

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
        if self.capacity - self.max_free(start, end) < width:
            raise ValueError(f"release of GPUs that were not reserved over [{start}, {end})")
        self._add(start, end, width)

    def earliest(self, width: int, duration: int, start: int, deadline: int | None = None) -> int | None:
        """Earliest t >= start with ``width`` GPUs free over [t, t + duration) and
        t + duration <= deadline; None when there is no such t."""
        if width > self.capacity:
            return None
        limit = FAR_FUTURE if deadline is None else deadline - duration
        if start > limit:
            return None
        t, f = self._t, self._f
        n = len(t)
        i = bisect_right(t, start) - 1
        cand = start
        # Scans run in C (map/compress over the lists, a block at a time on long calendars):
        # skip segments with too few GPUs, then check a whole window with one min(); only a
        # too-short run costs another round.
        while True:
            if f[i] < width:
                i = self._first(width.__le__, 1, i + 1, n)
                if i >= n:  # cannot happen: the last segment is the idle tail of the pool
                    return None
                cand = t[i]
            if cand > limit:
                return None
            j = bisect_left(t, cand + duration, i + 1)
            if j - i == 1 or self._min(i + 1, j) >= width:
                return cand
            i = self._first(width.__gt__, 0, i + 1, j)

    def free_until(self, width: int, t: int) -> int:
        """The end of the span from ``t`` on with at least ``width`` GPUs free throughout:
        ``t`` itself when fewer are free at ``t``, FAR_FUTURE when the span never ends."""
        tt, f = self._t, self._f
        i = bisect_right(tt, t) - 1
        if f[i] < width:
            return t
        n = len(tt)
        k = next(compress(range(i + 1, n), map(width.__gt__, _tail(f, i + 1))), n)
        return tt[k] if k < n else FAR_FUTURE

    def widest(self, start: int, end: int) -> int:
        """The most GPUs free together over the whole of [start, end)."""
        return self.min_free(start, end)

    def max_free(self, start: int, end: int) -> int:
        """Most free GPUs at any instant of [start, end) (0 if the span is empty)."""
        if end <= start:
            return 0
        t = self._t
        i = bisect_right(t, start) - 1
        j = bisect_left(t, end, i + 1)
        return max(self._f[i:j]) if j - i > 1 else self._f[i]

    def runs(self, width: int, start: int, end: int, floor: int = FAR_PAST) -> list[tuple[int, int]]:
        """The maximal spans [a, b) with at least ``width`` GPUs free throughout that meet
        [start, end), in time order; ``a`` is cut at ``floor``, and ``b`` is FAR_FUTURE for
        the idle tail."""
        if end <= start:
            return []
        t, f = self._t, self._f
        n = len(t)
        i = bisect_right(t, start) - 1
        j = bisect_left(t, end, i + 1)
        out: list[tuple[int, int]] = []
        enough, short = width.__le__, width.__gt__
        k = i
        while True:
            if f[k] < width:
                k = next(compress(range(k + 1, j), map(enough, islice(_tail(f, k + 1), j - k - 1))), j)
                if k >= j:
                    break
            a = k
            while a > 0 and f[a - 1] >= width and t[a] > floor:
                a -= 1
            b = k + 1
            if b < n and f[b] >= width:  # most runs end at the next breakpoint: skip the scan
                b = next(compress(range(b + 1, n), map(short, islice(_tail(f, b + 1), n - b - 1))), n)
            out.append((max(t[a], floor), t[b] if b < n else FAR_FUTURE))
            if b >= j:
                break
            k = b
        return out

    def forget_before(self, t: int) -> None:
        """Drop history before ``t``: nothing can be reserved in the past any more."""
        i = bisect_right(self._t, t) - 1
        if i > 0:
            del self._t[1 : i + 1]
            del self._f[: i]
            self._blk = None
            self._scanned = 0

    # -- internals ---------------------------------------------------------------------

    def _blocks(self) -> tuple[list[int], list[int]]:
        """The least and the most free of each BLOCK breakpoints."""
        blk = self._blk
        if blk is None:
            f = self._f
            starts = range(0, len(f), BLOCK)
            blk = self._blk = ([min(f[a : a + BLOCK]) for a in starts], [max(f[a : a + BLOCK]) for a in starts])
        return blk

    def _direct(self, span: int) -> bool:
        """Whether a scan of ``span`` breakpoints reads them one by one (short, or no blocks
        made yet and the scans since the last change have not yet paid for making them)."""
        if span < LONG or len(self._f) < BLOCKED_FROM:
            return True
        if self._blk is not None:
            return False
        self._scanned += span
        return self._scanned < len(self._f)

    def _min(self, lo: int, hi: int) -> int:
        """min(f[lo:hi]) (hi > lo), a block at a time over a long span of a long calendar."""
        f = self._f
        if self._direct(hi - lo):
            return min(f[lo:hi])
        a, b = -(-lo // BLOCK), hi // BLOCK  # the whole blocks inside [lo, hi): a .. b - 1
        return min(min(f[lo : a * BLOCK], default=FAR_FUTURE), min(self._blocks()[0][a:b]),
                   min(f[b * BLOCK : hi], default=FAR_FUTURE))

    def _first(self, test: Callable[[int], bool], side: int, lo: int, hi: int) -> int:
        """The first index in [lo, hi) whose free GPUs pass ``test`` (hi when none): ``side``
        1 when ``test`` asks for at least some GPUs (blocks judged by their most), 0 when
        for fewer (by their least)."""
        f = self._f
        if hi - lo < LONG or len(f) < BLOCKED_FROM or (self._blk is None and self._scanned < len(f)):
            x = next(compress(range(lo, hi), map(test, islice(_tail(f, lo), hi - lo))), hi)
            self._scanned += x - lo  # what it read, not the span: most skips stop early
            return x
        a = -(-lo // BLOCK)
        x = next(compress(range(lo, a * BLOCK), map(test, islice(_tail(f, lo), a * BLOCK - lo))), None)
        if x is not None:
            return x
        summary = self._blocks()[side]
        stop = hi // BLOCK
        while a < stop:
            b = next(compress(range(a, stop), map(test, islice(_tail(summary, a), stop - a))), None)
            if b is None:
                break
            base = b * BLOCK
            x = next(compress(range(base, base + BLOCK), map(test, islice(_tail(f, base), BLOCK))), None)
            if x is not None:
                return x
            a = b + 1  # (cannot happen: the block's summary passed)
        base = max(stop * BLOCK, lo)
        return next(compress(range(base, hi), map(test, islice(_tail(f, base), hi - base))), hi)

    def _split(self, at: int) -> int:
        """Index of the breakpoint at ``at``, inserting one if needed."""
        self._blk = None
        self._scanned = 0
        t = self._t
        i = bisect_right(t, at) - 1
        if t[i] != at:
            i += 1
            t.insert(i, at)
            self._f.insert(i, self._f[i - 1])
        return i

    def _add(self, start: int, end: int, delta: int) -> None:
        self._blk = None
        self._scanned = 0
        t, f = self._t, self._f
        # (the two splits of _split, inline: end's bisect starts from start's)
        i = bisect_right(t, start) - 1
        if t[i] != start:
            i += 1
            t.insert(i, start)
            f.insert(i, f[i - 1])
        j = bisect_right(t, end, i) - 1
        if t[j] != end:
            j += 1
            t.insert(j, end)
            f.insert(j, f[j - 1])
        f[i:j] = map(delta.__add__, f[i:j])
        # Merge equal neighbours at both edges (j first: deleting it keeps i valid).
        if j < len(t) and f[j] == f[j - 1]:
            del t[j], f[j]
        if i > 0 and f[i] == f[i - 1]:
            del t[i], f[i]

