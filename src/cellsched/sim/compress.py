"""Pulling waiting grants forward when capacity comes back, as ``cellsched serve`` does.

The cluster's ``policy.pull_forward`` names the rule (docs/admission.md):

- ``start_now``: at every instant when GPUs come free, the longest waiting grant
  (window length; ties by start, then submission) whose whole window fits *now* starts now
  (``Schedule.start_now``), and again, until none fits (``start_waiting_now`` in the core
  is the rule written plainly). Nothing moves into the future. ``hold_oldest`` and
  ``hold_when_busy`` (the default) first move the oldest waiting grant to its earliest
  window (always, or while its pool has 3 h of work waiting), as a ``Hold``.
- ``compact``: exact compression. In order of (start, submission) each waiting grant is moved by
  ``Schedule.move_earlier`` to the earliest window the calendar then allows, now or later.
  One pass is again a fixed point (a move takes capacity only before the mover's old start
  and gives it back only from there on). Every early end can shift the whole queue, so a
  congested replay costs time in proportion to the queue at each event.

Both passes only *find* grants; moving them is the core's job. ``start_now`` finds its
grants without trying every one: per width w, the span from now over which the nodes a
grant of width w needs are free ends at R(w) (``NodeCalendar.reach``; on a one-node pool,
the flat ``free_until``), and a grant of width w fits now iff its start <= R(w) or its
length <= R(w) - now (before its own window it holds nothing). On a pool of several nodes
that test is necessary but not sufficient (the nodes free up to R(w) need not be the
grant's own): a grant longer than R(w) - now is offered only once the core's own node
tests (``Schedule.pool_takes_now``) pass, and the core has the last word, as it has with
team limits. The waiting grants are kept per (pool, width)
sorted by (start, submission) with their lengths beside them and sorted, so the longest
grant that fits is a few bisects and short C-level scans per width.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator
from heapq import heappop, heappush
from itertools import islice

from cellsched.core.admission import Grant, Hold, Schedule, as_hold, pull_rule

INF = 1 << 62


class _Lane:
    """Waiting grants of one pool: all of them by (start, seq), and per width with their
    lengths in the same order and sorted."""

    __slots__ = ("keys", "width_keys", "width_lens", "width_sorted")

    def __init__(self) -> None:
        self.keys: list[tuple[int, int]] = []
        self.width_keys: dict[int, list[tuple[int, int]]] = {}
        self.width_lens: dict[int, list[int]] = {}
        self.width_sorted: dict[int, list[int]] = {}

    def add(self, key: tuple[int, int], width: int, length: int) -> None:
        keys = self.keys
        keys.insert(bisect_left(keys, key), key)
        wk = self.width_keys.get(width)
        if wk is None:
            wk = self.width_keys[width] = []
            self.width_lens[width] = []
            self.width_sorted[width] = []
        i = bisect_left(wk, key)
        wk.insert(i, key)
        self.width_lens[width].insert(i, length)
        insort(self.width_sorted[width], length)

    def remove(self, key: tuple[int, int], width: int) -> None:
        keys = self.keys
        del keys[bisect_left(keys, key)]
        wk = self.width_keys[width]
        i = bisect_left(wk, key)
        del wk[i]
        length = self.width_lens[width].pop(i)
        ws = self.width_sorted[width]
        del ws[bisect_left(ws, length)]


class Waiting:
    """The waiting grants, and the passes that pull them forward when capacity is freed."""

    def __init__(self, schedule: Schedule, rule: str = "start_now", reserve: int | Hold | None = None) -> None:
        rule, by_rule = pull_rule(rule)
        hold = by_rule if reserve is None else as_hold(reserve)
        self.schedule = schedule
        self.rule = rule
        # Team calendars and allowances split by period can block a start the pool allows,
        # and so can nodes (the index's reach may come from other nodes than the grant's
        # own): with any of them the core's word is final, not the pool index's.
        self.multi_node = any(len(cal.nodes) > 1 for _, cal in schedule.pools.values())
        self.constrained = self.multi_node or any(
            t.calendar is not None or t.book.period != "none" for t in schedule.teams.values())
        self.grants: dict[int, Grant] = {}
        self.lanes: dict[str, _Lane] = {name: _Lane() for name in schedule.pools}
        self._work: dict[str, int] = {name: 0 for name in schedule.pools}  # waiting GPU-seconds
        self.freed_since = False  # capacity came back since the last pass
        self.hold = hold if rule == "start_now" else Hold()
        self.reserve = self.hold.count
        # Heap of the seqs of waiting grants the hold applies to, lazily cleaned (seq order =
        # submission order; a grant's width never changes, so neither does whether it holds).
        self._oldest: list[tuple[int, int]] = []  # (seq, seq): ranked by submission
        self._in_heap: set[int] = set()
        # With ``hold.biggest``: every waiting grant by (-GPU-seconds, seq), as lazily cleaned
        # (a grant's window keeps its size when it moves).
        self._big: list[tuple[int, int]] = []
        self._in_big: set[int] = set()

    def add(self, seq: int, g: Grant) -> None:
        self.grants[seq] = g
        if self.reserve and seq not in self._in_heap and self.hold.holds(g):
            self._in_heap.add(seq)
            heappush(self._oldest, (seq, seq))
        if self.hold.biggest and seq not in self._in_big:
            self._in_big.add(seq)
            heappush(self._big, (-g.gpu_seconds, seq))
        self.lanes[g.pool].add((g.start, seq), g.width, g.end - g.start)
        self._work[g.pool] += g.gpu_seconds

    def remove(self, seq: int, g: Grant) -> None:
        del self.grants[seq]
        self.lanes[g.pool].remove((g.start, seq), g.width)
        self._work[g.pool] -= g.gpu_seconds

    def _deep(self, now: int) -> set[str] | None:
        """The pools with at least ``hold.backlog_s`` of work waiting (their waiting grants'
        GPU-seconds, but those starting now, over their GPUs), or None: every pool."""
        if not self.hold.backlog_s:
            return None
        deep = set()
        for pool, lane in self.lanes.items():
            work = self._work[pool]
            for _, seq in lane.keys[:bisect_right(lane.keys, (now, INF))]:
                work -= self.grants[seq].gpu_seconds
            if self.hold.busy(work, self.schedule.pools[pool][1].capacity):
                deep.add(pool)
        return deep

    def freed(self) -> None:
        """GPUs came free (a job ended, a grant moved away): the next pass has work."""
        self.freed_since = True

    def run(self, now: int) -> Iterator[tuple[int, Grant, Grant]]:
        """Pull forward; yields (seq, old grant, new grant) for every grant that moved. A grant
        moved to ``now`` is no longer waiting: the caller starts it."""
        if not self.freed_since:
            return
        self.freed_since = False
        if self.rule == "compact":
            yield from self._compact(now)
            return
        yield from self._start_now(now)

    def _take(self, seq: int, g: Grant, ng: Grant, now: int) -> None:
        self.remove(seq, g)
        if ng.start > now:
            self.add(seq, ng)

    def _start_now(self, now: int) -> Iterator[tuple[int, Grant, Grant]]:
        """``core.admission.start_waiting_now``, by index: repeatedly the longest grant (ties
        by start, then submission) that fits its pool now is offered ``Schedule.start_now``.
        With team limits the core may still say no: that grant is held back until the next
        start (which can free team capacity or allowance it needs), as the plain rule, which
        tries every grant again after each start, would find it."""
        schedule = self.schedule
        if self.hold:
            tried: set[int] = set()
            # The oldest (of those the hold applies to), then the biggest windows.
            deep = self._deep(now)
            if deep is None or deep:  # no pool busy enough: no grant holds (skip the heap)
                yield from self._hold_places(self._oldest, self._in_heap, self.reserve, now, tried,
                                             self.hold.ahead_s, deep)
            if self.hold.biggest:
                yield from self._hold_places(self._big, self._in_big, self.hold.biggest, now, tried)
        lanes = [(pool, lane) for pool, lane in self.lanes.items() if lane.keys]
        held: list[tuple[int, Grant]] = []
        try:
            while True:
                best: tuple[int, tuple[int, int]] | None = None
                for pool, lane in lanes:
                    cand = self._longest_fit(pool, lane, now)
                    if cand is not None and (best is None or cand < best):
                        best = cand
                if best is None:
                    return
                seq = best[1][1]
                g = self.grants[seq]
                ng = schedule.start_now(g, now)
                if ng.start != now:
                    if not self.constrained:
                        raise AssertionError(f"grant {g.project} fits its pool now but the core did not start it")
                    self.remove(seq, g)
                    held.append((seq, g))
                    continue
                self._take(seq, g, ng, now)
                yield seq, g, ng
                for seq, g in held:
                    self.add(seq, g)
                held.clear()
        finally:
            for seq, g in held:
                self.add(seq, g)

    def _hold_places(self, heap: list[tuple[int, int]], members: set[int], count: int, now: int,
                     tried: set[int], ahead_s: int = 0,
                     deep: set[str] | None = None) -> Iterator[tuple[int, Grant, Grant]]:
        """The first ``count`` waiting grants of ``heap`` ((rank, seq), lazily cleaned: seqs
        no longer waiting are dropped, and from ``members``), but those ``tried`` already,
        are moved as early as the calendar allows (``Schedule.move_earlier``): now, or an
        earlier future window that the grants started after them must leave alone. The
        first whose window starts less than ``ahead_s`` from now ends it (its promise is
        near: nobody holds a place this time). Grants of pools not in ``deep`` (when given)
        are passed over. The core's ``_hold_places``, by index."""
        grants = self.grants
        back: list[tuple[int, int]] = []
        held = 0
        while heap and held < count:
            item = heappop(heap)
            seq = item[1]
            g = grants.get(seq)
            if g is None:
                members.discard(seq)
                continue
            back.append(item)
            if g.start <= now or seq in tried or (deep is not None and g.pool not in deep):
                continue  # starts now by its own event, held its place already, or no backlog
            if g.start - now < ahead_s:
                break
            tried.add(seq)
            ng = self.schedule.move_earlier(g, now)
            if ng.start < g.start:
                self._take(seq, g, ng, now)
                yield seq, g, ng
            if ng.start <= now:
                back.pop()
                members.discard(seq)
            else:
                held += 1
        for item in back:
            heappush(heap, item)

    def _longest_fit(self, pool: str, lane: _Lane, now: int) -> tuple[int, tuple[int, int]] | None:
        """(-length, key) of the longest waiting grant of ``pool`` that fits its pool now.
        Per width w the grants that fit are those starting by R(w) (a prefix of the width's
        list) and those no longer than R(w) - now."""
        cal = self.schedule.pools[pool][1]
        free = cal.free_at(now)
        floor = (now, INF)  # grants starting now start by their own event
        best: tuple[int, tuple[int, int]] | None = None
        for w, wk in lane.width_keys.items():
            if w > free or not wk:
                continue
            lens = lane.width_lens[w]
            lo = bisect_right(wk, floor)
            if lo >= len(wk):
                continue
            reach = cal.reach(w, now)
            room = reach - now
            k = bisect_right(wk, (reach, INF), lo)
            longest = max(islice(lens, lo, k)) if k > lo else -1
            # The longest no longer than the room, from the sorted lengths; it may belong
            # only to grants before lo (starting now), then the slow way.
            ws = lane.width_sorted[w]
            p = bisect_right(ws, room)
            fits = ws[p - 1] if p else -1
            if longest > fits and self.multi_node:
                # Longer grants starting by the reach fit only if their own nodes are the
                # free ones: asked here, as the core asks (a few reads, nothing touched).
                at = self._prefix_fit(wk, lens, lo, k, fits, now)
                if at >= 0:
                    cand = (-lens[at], wk[at])
                    if best is None or cand < best:
                        best = cand
                    continue
                longest = -1
            at = -1
            if fits > longest:
                try:
                    at = lens.index(fits, lo)
                except ValueError:
                    fits = max(filter(room.__ge__, islice(lens, lo, None)), default=-1)
            if fits >= longest:
                if fits < 0:
                    continue
                if at < 0:
                    at = lens.index(fits, lo)
                longest = fits
            else:
                at = lens.index(longest, lo, k)
            cand = (-longest, wk[at])
            if best is None or cand < best:
                best = cand
        return best

    def _prefix_fit(self, wk: list[tuple[int, int]], lens: list[int], lo: int, k: int, fits: int, now: int) -> int:
        """Of the grants at [lo, k) of a width's list (those starting by its reach) longer
        than ``fits``, the index of the longest (ties: the first) whose window the pool's
        nodes take now with its own given back (``Schedule.pool_takes_now``, the core's own
        node tests), or -1. Grants no longer than the room fit without asking."""
        grants, takes = self.grants, self.schedule.pool_takes_now
        for _, i in sorted((-lens[i], i) for i in range(lo, k) if lens[i] > fits):
            if takes(grants[wk[i][1]], now):
                return i
        return -1

    def _compact(self, now: int) -> Iterator[tuple[int, Grant, Grant]]:
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
        grants = self.grants
        for start, seq in order:
            g = grants[seq]
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
            ng = self.schedule.move_earlier(g, now)
            if ng.start < g.start:
                self._take(seq, g, ng, now)
                yield seq, g, ng
