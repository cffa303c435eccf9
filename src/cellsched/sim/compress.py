"""Compression: after capacity comes back, move waiting grants earlier, exactly.

The rule (what the exhaustive pass does): take the waiting grants in order of (start, seq)
and give each, in turn, ``Schedule.move_earlier`` — the earliest window the calendars then
allow, never later than it was. One pass is a fixed point: a move only takes capacity
before the mover's old start and only gives capacity back at or after it, so a grant that
could not move at its turn cannot move later in the pass, and the grants before it are
unaffected by what comes after.

Trying every waiting grant at every job end is O(queue) calendar searches per event. The
fast path tries only grants that *can* move, in the same order, so it gives the same
schedule. On the pool calendar F, a waiting grant g (width W, start s, length L) can move
iff (i) F >= W just before s (it can slide left), or (ii) some run of F >= W of length >= L
ends before s (it can jump into a hole). After a pass every grant fails both. So only
capacity given back — a *region* where F rose (the rest of an ended job's window, the part
of a moved grant's old window it no longer covers) — can make a grant movable: through (i)
for grants starting inside the region, or through (ii) for runs crossing the region. Each
region is a *source* that proposes its next such grant; proposals are taken from a heap in
(start, seq) order, each is tried with the real ``move_earlier``, and a move adds a region.

Measured on itp.csv prefixes and on the benchmark's traces, this path is exact (the tests
hold it equal to the exhaustive pass, including a real case where a cut run turns a slide
into a jump) but slower than the exhaustive pass: re-finding jump runs after every take costs
more than trying every grant. It stays as the starting point for a calendar index that
answers "runs of F >= w around here" without scanning; the exhaustive pass is the default.

That argument needs F to be the only thing that can block a move. Team calendars
(``max_gpus``) and allowances split by month/quarter/year can block one too, so with either
of them the compressor falls back to the exhaustive pass.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from heapq import heappop, heappush
from itertools import compress, islice

from cellsched.core.admission import Grant, Schedule

INF = 1 << 62


class _Lane:
    """Waiting grants of one pool: all of them by (start, seq), and per width with lengths."""

    __slots__ = ("keys", "width_keys", "width_lens", "min_len")

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []
        self.width_keys: dict[int, list[tuple[int, int]]] = {}
        self.width_lens: dict[int, list[int]] = {}
        self.min_len: dict[int, int] = {}  # a lower bound: the shortest ever added

    def add(self, key: tuple[int, int], width: int, length: int) -> None:
        keys = self.keys
        keys.insert(bisect_left(keys, key), key)
        wk = self.width_keys.get(width)
        if wk is None:
            wk = self.width_keys[width] = []
            self.width_lens[width] = []
            self.min_len[width] = length
        i = bisect_left(wk, key)
        wk.insert(i, key)
        self.width_lens[width].insert(i, length)
        if length < self.min_len[width]:
            self.min_len[width] = length

    def remove(self, key: tuple[int, int], width: int) -> None:
        keys = self.keys
        del keys[bisect_left(keys, key)]
        wk = self.width_keys[width]
        i = bisect_left(wk, key)
        del wk[i]
        del self.width_lens[width][i]


class Compressor:
    """Keeps the waiting grants and moves them earlier when capacity is given back."""

    def __init__(self, schedule: Schedule, exhaustive: bool = False) -> None:
        self.schedule = schedule
        self.exhaustive = exhaustive or any(
            t.calendar is not None or t.book.period != "none" for t in schedule.teams.values()
        )
        self.waiting: dict[int, Grant] = {}
        self.lanes: dict[str, _Lane] = {name: _Lane() for name in schedule.pools}
        self.regions: list[tuple[str, int, int]] = []  # capacity given back since the last pass
        self.tries = 0

    # -- bookkeeping -------------------------------------------------------------------

    def add(self, seq: int, g: Grant) -> None:
        self.waiting[seq] = g
        self.lanes[g.pool].add((g.start, seq), g.width, g.end - g.start)

    def remove(self, seq: int, g: Grant) -> None:
        del self.waiting[seq]
        self.lanes[g.pool].remove((g.start, seq), g.width)

    def freed(self, pool: str, start: int, end: int) -> None:
        """Capacity of ``pool`` came back over [start, end) (an early end, a cancel)."""
        if end > start:
            self.regions.append((pool, start, end))

    def pending(self) -> bool:
        return bool(self.regions)

    # -- the pass ----------------------------------------------------------------------

    def run(self, now: int) -> Iterator[tuple[int, Grant, Grant]]:
        """Compress; yields (seq, old grant, new grant) for every grant that moved. A grant
        moved to ``now`` is no longer waiting: the caller starts it."""
        regions, self.regions = self.regions, []
        if self.exhaustive:
            yield from self._exhaustive(now)
            return
        pools = sorted({r[0] for r in regions}, key=list(self.schedule.pools).index)
        for pool in pools:
            yield from self._pool_pass(pool, [(a, b) for p, a, b in regions if p == pool], now)

    def _move(self, seq: int, g: Grant, now: int) -> Grant | None:
        self.tries += 1
        ng = self.schedule.move_earlier(g, now)
        if ng.start >= g.start:
            return None
        self.remove(seq, g)
        if ng.start > now:
            self.add(seq, ng)
        return ng

    def _exhaustive(self, now: int) -> Iterator[tuple[int, Grant, Grant]]:
        """Every waiting grant in (start, seq) order gets its turn. A grant that its pool
        calendar alone cannot let move is passed over without ``move_earlier``: it could
        only slide if F >= W just before its start, or jump into a window that ends by its
        start (with the grant released, F only rises inside its own window). Team calendars
        and allowances can only refuse more, so passing over changes nothing."""
        pools = self.schedule.pools
        lanes = [lane.keys for lane in self.lanes.values() if lane.keys]
        if not lanes:
            return
        # The lanes are kept sorted: a copy (or a merge of several pools) beats sorting.
        order = list(lanes[0]) if len(lanes) == 1 else sorted(k for keys in lanes for k in keys)
        # Per (pool, width): how far the calendar has been read for runs of F >= width, the
        # longest run seen that ended by then, and where the run still open then began. A
        # move takes capacity only before the mover's start (behind this sweep) and gives it
        # back only from its old start on (ahead of it), so what was read can only have
        # shrunk since: an over-estimate, safe for passing over, confirmed by earliest().
        seen: dict[tuple[str, int], list[int]] = {}
        waiting = self.waiting
        for start, seq in order:
            g = waiting[seq]
            cal = pools[g.pool][1]
            w = g.width
            if cal.free_at(start - 1) < w:
                length = g.end - start
                st = seen.get((g.pool, w))
                if st is None:
                    st = seen[(g.pool, w)] = [now, 0, -1]
                upto, best, open_at = st
                longest = best
                if start > upto:
                    open_at_next = -1
                    for a, b in cal.runs(w, upto, start, upto):
                        if a == upto and open_at >= 0:
                            a = open_at
                        if b <= start:
                            best = max(best, b - a)
                        else:
                            open_at_next = a
                            longest = max(longest, start - a)
                    longest = max(longest, best)
                    st[0], st[1], st[2] = start, best, open_at_next
                elif open_at >= 0:
                    longest = max(best, start - open_at)
                if longest < length or cal.earliest(w, length, now, start) is None:
                    continue
            ng = self._move(seq, g, now)
            if ng is not None:
                yield seq, g, ng

    def _pool_pass(self, pool: str, regions: list[tuple[int, int]], now: int) -> Iterator[tuple[int, Grant, Grant]]:
        cal = self.schedule.pools[pool][1]
        lane = self.lanes[pool]
        waiting = self.waiting
        heap: list[tuple[tuple[int, int], int, int]] = []  # (proposed key, source, generation)
        sources: list[tuple[int, int]] = []  # regions [x, y) where F rose during this pass
        cache: list[dict[int, tuple[int, int, int, list[tuple[int, int]]] | None] | None] = []
        watch: list[tuple[int, int, int, int, int]] = []  # (lo, hi, width, source, ident) of runs computed
        watch_made: list[int] = []
        gen: list[int] = []  # per source: which of its proposals is the live one
        taken: list[tuple[int, int]] = []  # windows moves took during this pass
        cursor = (now, INF)  # keys <= cursor have had their turn (or start now and cannot move)

        def jump_runs(src: int) -> list[tuple[int, list[tuple[int, int]]]]:
            """Per width, the runs of F >= width meeting region ``src`` that a later grant
            could jump into (long enough, ending before that width's last waiting start).

            Kept per width until a move takes capacity within the *unfiltered* runs of
            that width (cut at the last waiting start): F rises only in regions, which are
            sources of their own, so only a take can change them; and a take can split a
            run that was of no use (it reached past every waiting start) into one that is,
            which is why the span watched is the unfiltered one."""
            x, y = sources[src]
            entry = cache[src]
            if entry is None:
                top = cal.max_free(x, y)
                outside = -1
                entry = {}
                for w, wk in lane.width_keys.items():
                    if w > top or not wk:
                        continue  # F in the region only falls from here on
                    if y - x < lane.min_len[w]:
                        # A long enough run must leave the region on one side or the other.
                        if outside < 0:
                            outside = max(cal.free_at(x - 1), cal.free_at(y))
                        if outside < w:
                            continue
                    entry[w] = None
                cache[src] = entry
            out = []
            for w, kept in entry.items():
                wk = lane.width_keys[w]
                if not wk:
                    continue
                if kept is not None:
                    version, lo, hi, rs, _ = kept
                    for a, b in islice(taken, version, None):
                        if a < hi and b > lo:
                            break
                    else:
                        entry[w] = (len(taken), lo, hi, rs, kept[4])  # still the same runs
                        if rs:
                            out.append((w, rs))
                        continue
                shortest = lane.min_len[w]
                last = wk[-1][0]
                every = cal.runs(w, x, y, now, last)
                lo = min(x, every[0][0]) if every else x
                hi = max(y, min(every[-1][1], last)) if every else y
                rs = [(a, b) for a, b in every if b - a >= shortest and b < last]
                ident = len(watch_made)
                watch_made.append(ident)
                entry[w] = (len(taken), lo, hi, rs, ident)
                if hi > lo:
                    watch.append((lo, hi, w, src, ident))
                if rs:
                    out.append((w, rs))
            return out

        def propose(src: int) -> None:
            """Push the first grant after the cursor that capacity given back over region
            ``src`` lets move on the calendar as it is now (see the module docstring). F only
            falls between now and that grant's turn, except in newer regions, which have
            sources of their own: so nothing before the proposal can need a turn."""
            x, y = sources[src]
            keys = lane.keys
            best: tuple[int, int] | None = None
            # (i) slides: grants starting in (x, y] with F >= W just before their start.
            k = bisect_right(keys, max(cursor, (x, INF)))
            n = len(keys)
            while k < n:
                key = keys[k]
                if key[0] > y:
                    break
                if cal.free_at(key[0] - 1) >= waiting[key[1]].width:
                    best = key
                    break
                k += 1
            # (ii) jumps: for each run of F >= w meeting [x, y), the first grant of width w
            # starting after the run and no longer than it.
            for w, rs in jump_runs(src):
                wk = lane.width_keys[w]
                lens = lane.width_lens[w]
                for a, b in rs:
                    span = b - a
                    lo = bisect_right(wk, max(cursor, (b, INF)))
                    hi = len(wk) if best is None else bisect_left(wk, best, lo)
                    hit = next(compress(range(lo, hi), map(span.__ge__, islice(lens, lo, hi))), None)
                    if hit is not None:
                        best = wk[hit]
            gen[src] += 1  # this proposal replaces any the source still has in the heap
            if best is not None:
                heappush(heap, (best, src, gen[src]))

        def open_region(x: int, y: int) -> None:
            if y > x:
                sources.append((x, y))
                cache.append(None)
                gen.append(0)
                propose(len(sources) - 1)

        for x, y in regions:
            open_region(max(x, now), y)
        while heap:
            key, src, made = heappop(heap)
            if made != gen[src]:
                continue  # the source has proposed again since
            seq = key[1]
            g = waiting.get(seq)
            # key <= cursor: another source proposed it first and it has had its turn.
            if key > cursor and g is not None and g.start == key[0]:
                cursor = key
                ng = self._move(seq, g, now)
                if ng is not None:
                    yield seq, g, ng
                    t0, t1 = ng.start, ng.end
                    taken.append((t0, t1))
                    # The take may cut a run another source watches, so that a grant that
                    # sat inside the run (it could slide, through some region) now starts
                    # after it and can only jump: such sources look again at once.
                    again = set()
                    for lo, hi, w, other, version in watch:
                        if lo < t1 and hi > t0 and other != src and other not in again:
                            kept = cache[other][w]  # type: ignore[index]
                            if kept is not None and kept[4] == version and cal.min_free(max(lo, t0), min(hi, t1)) < w:
                                again.add(other)
                    for other in sorted(again):
                        propose(other)
                    if len(watch) > 4 * len(sources) + 64:  # drop entries of runs computed again since
                        watch[:] = [e for e in watch if (k := cache[e[3]][e[2]]) is not None and k[4] == e[4]]  # type: ignore[index]
                    open_region(max(g.start, ng.end), g.end)
            propose(src)
