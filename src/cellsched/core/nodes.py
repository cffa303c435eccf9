"""The node-aware calendar of one pool: free GPUs per node over time, and where grants go.

A pool of ``gpus`` GPUs is ``gpus // gpus_per_node`` full nodes, plus one smaller node
holding the remainder when the division is not exact. **The node rule**: a grant no wider
than ``gpus_per_node`` lives on one node; a wider one takes ``width / gpus_per_node`` whole
full nodes (its width must be a multiple). Every reservation names its nodes (indices
0..n-1 in the pool), fixed when it is made, so what admission promises is a packing that
placement can deliver as it stands.

:class:`NodeCalendar` is still the pool's :class:`CapacityCalendar` (free GPUs of the whole
pool: what the flat methods ``free_at``, ``min_free``, ``earliest``, ``free_until`` ... read),
and keeps beside it one calendar per node. Searches go through a **threshold index**, one
per GPU count ``v`` (built the first time a request needs it):

- ``count``: how many nodes have at least ``v`` GPUs free, as a step function of time;
- every maximal span during which one node has at least ``v`` free (a *run*), kept sorted
  by its end, with its start beside it, and again sorted by its start.

A node fits ``v`` GPUs over ``[t, t + d)`` iff one of its runs covers that window, so the
number of nodes that fit is ``count(t)`` minus the runs covering ``t`` that end inside the
window: bisects and one C-level scan. The earliest start for ``k`` nodes of ``v`` GPUs is
at ``start`` or at the start of some run (had a node fit one second earlier, it would still
fit). The search starts where the pool's flat calendar first has the GPUs, skips every
stretch where ``count`` alone is short (``CapacityCalendar.earliest`` on ``count``), and when
only ``f < k`` nodes fit at a candidate it jumps to the start of the ``(k - f)``-th run at
least ``d`` long that begins later (a run that began earlier and covers a later window
covers this one: it is among the ``f``); hours whose longest run is shorter are skipped
whole. For one node, that run's start is the answer. Exact, not a heuristic.

Which nodes: whole nodes are the lowest-numbered ones wholly free over every hour the
window touches (a bitmask per hour, ANDed), else those whose run ends soonest after the
window; a narrow grant goes to the best fit in GPUs among nodes already in use (the first
``SCAN_NODES``), else to the highest-numbered wholly free node (whole nodes are taken from
the bottom, narrow grants break them from the top), else to the best fit among the nodes
whose run ends soonest.

A pool that is one node (``gpus_per_node == gpus``) has no index: the node *is* the pool,
and every answer is the flat calendar's, bit for bit.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from functools import reduce
from itertools import compress, islice
from operator import and_

from cellsched.core.calendar import FAR_FUTURE, FAR_PAST, CapacityCalendar, _tail

_LAST = 1 << 62  # sorts after any node index
BEST_FIT_OF = 4  # a narrow grant's node is the best fit in GPUs among this many candidates
SCAN_NODES = 16  # nodes tried in index order for a narrow grant before any wholly free one
HOUR = 3600  # the buckets of the whole-node masks


def node_sizes(gpus: int, per_node: int) -> list[int]:
    """GPUs of each node of a pool: full nodes, then the remainder if there is one."""
    full, rest = divmod(gpus, per_node)
    return [per_node] * full + ([rest] if rest else [])


def whole_nodes(width: int, per_node: int) -> int | None:
    """How many whole nodes a grant of ``width`` takes (0: it shares one node), or None when
    the width breaks the node rule (wider than a node and not a multiple of it)."""
    if width <= per_node:
        return 0
    q, r = divmod(width, per_node)
    return None if r else q


def admissible_widths_near(width: int, per_node: int, full_nodes: int) -> list[int]:
    """The admissible widths nearest to ``width`` (one below, one above, when they exist)."""
    if whole_nodes(width, per_node) is not None:
        return [width]
    q = width // per_node
    out = [q * per_node]  # q >= 1 here: width > per_node
    if q + 1 <= full_nodes:
        out.append((q + 1) * per_node)
    return out


def _runs_of(cal: CapacityCalendar, v: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """Maximal spans [a, b) with at least ``v`` free on ``cal`` such that b >= lo and a <= hi
    (so a span touching [lo, hi] counts: it may merge with a change inside)."""
    t, f = cal._t, cal._f
    n = len(t)
    k = max(0, bisect_right(t, lo - 1) - 1)
    stop = bisect_right(t, hi)
    out: list[tuple[int, int]] = []
    short = v.__gt__
    while k < stop:
        if f[k] < v:
            k = next(compress(range(k + 1, stop), map(v.__le__, _tail(f, k + 1))), stop)
            if k >= stop:
                break
        a = k
        while a > 0 and f[a - 1] >= v:
            a -= 1
        b = next(compress(range(k + 1, n), map(short, _tail(f, k + 1))), n)
        out.append((t[a], t[b] if b < n else FAR_FUTURE))
        k = b
    return out


class _Threshold:
    """Runs of ``>= v`` GPUs free, over every node that has ``v`` GPUs at all."""

    __slots__ = ("count", "end_starts", "ends", "h0", "hlens", "hmax", "start_lens", "starts", "v")

    def __init__(self, v: int, nodes: list[CapacityCalendar]) -> None:
        self.v = v
        eligible = [i for i, c in enumerate(nodes) if c.capacity >= v]
        self.count = count = CapacityCalendar(len(eligible))
        runs: list[tuple[int, int, int]] = []
        for i in eligible:
            runs.extend((b, i, a) for a, b in _runs_of(nodes[i], v, FAR_PAST, FAR_FUTURE))
        runs.sort()
        self.ends: list[tuple[int, int]] = [(b, i) for b, i, _ in runs]  # (run end, node), sorted
        self.end_starts: list[int] = [a for _, _, a in runs]  # the run's start, beside its end
        self.starts: list[tuple[int, int]] = []  # (run start, node), sorted
        self.start_lens: list[int] = []  # the run's length, beside its start
        self._by_start(runs)
        # count as a step function, by one sweep over the runs' edges
        delta: dict[int, int] = {}
        for b, _, a in runs:
            delta[a] = delta.get(a, 0) + 1
            if b < FAR_FUTURE:
                delta[b] = delta.get(b, 0) - 1
        ts, fs = [FAR_PAST], [delta.pop(FAR_PAST, 0)]
        for x in sorted(delta):
            val = fs[-1] + delta[x]
            if val != fs[-1]:
                ts.append(x)
                fs.append(val)
        count._t, count._f = ts, fs

    def _by_start(self, runs: list[tuple[int, int, int]]) -> None:
        """Fill ``starts``/``start_lens`` (and the hours' longest runs) from (end, node,
        start) triples."""
        by_a = sorted((a, i, b - a) for b, i, a in runs)
        self.starts = [(a, i) for a, i, _ in by_a]
        self.start_lens = [n for _, _, n in by_a]
        hours = [a // HOUR for a, _, _ in by_a if a > FAR_PAST]
        # Hours from the first run start on (none yet: the first one sets h0, so an idle
        # calendar does not hold a list from 1970 to now).
        self.h0 = min(hours, default=0)
        self.hmax = [0] * (max(hours) - self.h0 + 1) if hours else []
        self.hlens: list[list[int]] = [[] for _ in self.hmax]  # run lengths per hour, sorted
        for (a, _, n) in by_a:
            if a > FAR_PAST:
                q = a // HOUR - self.h0
                self.hlens[q].append(n)
                if n > self.hmax[q]:
                    self.hmax[q] = n
        for lst in self.hlens:
            lst.sort()

    def _hour(self, a: int) -> None:
        """Recompute the longest run starting in the hour of ``a``."""
        if a <= FAR_PAST:
            return
        q = a // HOUR
        if not self.hmax:
            self.h0 = q
        if q < self.h0:
            self.hmax[:0] = [0] * (self.h0 - q)
            self.hlens[:0] = [[] for _ in range(self.h0 - q)]
            self.h0 = q
        k = q - self.h0
        if k >= len(self.hmax):
            more = k - len(self.hmax) + 1
            self.hmax.extend([0] * more)
            self.hlens.extend([] for _ in range(more))
        starts = self.starts
        i = bisect_left(starts, (q * HOUR, -1))
        j = bisect_left(starts, ((q + 1) * HOUR, -1), i)
        lens = sorted(islice(_tail(self.start_lens, i), j - i))
        self.hlens[k] = lens
        self.hmax[k] = lens[-1] if lens else 0

    def _long_start(self, t: int, d: int, m: int) -> int | None:
        """Index in ``starts`` of the ``m``-th run beginning after ``t`` at least ``d`` long.
        Hours whose longest run is shorter are skipped whole."""
        starts, lens, hmax, h0 = self.starts, self.start_lens, self.hmax, self.h0
        long_enough = d.__le__

        def take(lo: int, hi: int, need: int) -> list[int]:
            return list(islice(compress(range(lo, hi), map(long_enough, islice(_tail(lens, lo), hi - lo))), need))

        q = t // HOUR
        i = bisect_right(starts, (t, _LAST))
        hits = take(i, bisect_left(starts, ((q + 1) * HOUR, -1), i), m)  # the rest of t's hour
        if len(hits) == m:
            return hits[-1]
        m -= len(hits)
        b = max(q + 1 - h0, 0)
        hlens = self.hlens
        for x in compress(range(b, len(hmax)), map(long_enough, _tail(hmax, b))):
            lst = hlens[x]
            here = len(lst) - bisect_left(lst, d)  # runs of this hour at least d long
            if here < m:
                m -= here
                continue
            lo = bisect_left(starts, ((x + h0) * HOUR, -1))
            return take(lo, bisect_left(starts, ((x + h0 + 1) * HOUR, -1), lo), m)[-1]
        return None

    def replace(self, node: int, old: list[tuple[int, int]], new: list[tuple[int, int]], lo: int, hi: int) -> None:
        """Node ``node``'s runs ``old`` (touching [lo, hi)) are now ``new``."""
        ends, es, starts, lens, count = self.ends, self.end_starts, self.starts, self.start_lens, self.count
        for a, b in old:
            i = bisect_left(ends, (b, node))
            del ends[i], es[i]
            i = bisect_left(starts, (a, node))
            del starts[i], lens[i]
            if min(b, hi) > max(a, lo):
                count._add(max(a, lo), min(b, hi), -1)
        for a, b in new:
            i = bisect_left(ends, (b, node))
            ends.insert(i, (b, node))
            es.insert(i, a)
            i = bisect_left(starts, (a, node))
            starts.insert(i, (a, node))
            lens.insert(i, b - a)
            if min(b, hi) > max(a, lo):
                count._add(max(a, lo), min(b, hi), 1)
        for a, _ in old:
            self._hour(a)
        for a, _ in new:
            self._hour(a)

    def fitting(self, t: int, d: int) -> int:
        """How many nodes have at least ``v`` free throughout [t, t + d)."""
        c = self.count.free_at(t)
        if c:
            ends = self.ends
            i = bisect_right(ends, (t, _LAST))
            j = bisect_left(ends, (t + d, -1), i)
            if j > i:
                c -= sum(map(t.__ge__, islice(_tail(self.end_starts, i), j - i)))
        return c

    def earliest(self, k: int, d: int, start: int, deadline: int | None) -> int | None:
        """Earliest t >= start at which ``k`` nodes fit ``v`` over [t, t + d), t + d <= deadline."""
        count = self.count
        limit = FAR_FUTURE if deadline is None else deadline - d
        t = count.earliest(k, d, start, deadline)
        while t is not None:
            f = self.fitting(t, d)
            if f >= k:
                return t
            # A run that began by t and covers a later window covers this one too, so it is
            # among the f: a later start needs k - f more runs, at least d long, beginning
            # after t. The (k - f)-th of them is the next candidate; for one node it is the
            # answer (that run holds the window from its start).
            x = self._long_start(t, d, k - f)
            if x is None:
                return None
            a = self.starts[x][0]
            if k == 1:
                return a if a <= limit else None
            t = count.earliest(k, d, a, deadline)
        return None

    def candidates(self, t: int, d: int, m: int) -> list[int]:
        """Up to ``m`` nodes that fit ``v`` over [t, t + d), soonest run end first."""
        ends = self.ends
        i = bisect_left(ends, (t + d, -1))
        return [ends[x][1] for x in islice(compress(range(i, len(ends)), map(t.__ge__, _tail(self.end_starts, i))), m)]

    def choose(self, k: int, t: int, d: int) -> tuple[int, ...] | None:
        """``k`` nodes that fit ``v`` over [t, t + d): those whose run ends soonest after it."""
        ends = self.ends
        i = bisect_left(ends, (t + d, -1))
        picked = list(islice(compress(range(i, len(ends)), map(t.__ge__, _tail(self.end_starts, i))), k))
        if len(picked) < k:
            return None
        return tuple(sorted(ends[x][1] for x in picked))

    def forget_before(self, t: int) -> None:
        """As the nodes' calendars forget: runs over by ``t`` go, runs open at ``t`` now
        start in the far past (as the node's first segment does)."""
        self.count.forget_before(t)
        i = bisect_right(self.ends, (t, _LAST))
        del self.ends[:i], self.end_starts[:i]
        self.end_starts = [FAR_PAST if a <= t else a for a in self.end_starts]
        self._by_start([(b, n, a) for a, (b, n) in zip(self.end_starts, self.ends)])


class _Whole:
    """Which full nodes are wholly free throughout each hour: one bitmask per hour (bit n:
    node n). ANDing the hours a window touches gives nodes that surely fit it whole (a
    subset of those that do: a node busy only in the part of an end hour outside the window
    is missed), in a few C-level operations however many nodes and grants there are."""

    __slots__ = ("full", "masks", "per", "q0", "tail")

    def __init__(self, nodes: list[CapacityCalendar], per: int) -> None:
        self.per = per
        self.full = [i for i, c in enumerate(nodes) if c.capacity == per]
        points = [x for i in self.full for x in nodes[i]._t[1:]]
        self.tail = 0
        if not points:  # nothing reserved yet: every full node is free throughout
            self.q0 = None
            self.masks = []
            for i in self.full:
                self.tail |= 1 << i
            return
        lo = min(points)
        hi = max(points)
        self.q0 = lo // HOUR
        masks = [0] * (hi // HOUR - self.q0 + 1)
        for i in self.full:
            bit = 1 << i
            t, f = nodes[i]._t, nodes[i]._f
            n = len(t)
            for k in range(n):
                if f[k] != per:
                    continue
                qa = -(-max(t[k], lo) // HOUR) - self.q0
                qb = (t[k + 1] if k + 1 < n else hi + HOUR) // HOUR - self.q0
                qb = min(qb, len(masks))
                if qb > qa:
                    masks[qa:qb] = [m | bit for m in masks[qa:qb]]
            if f[-1] == per:
                self.tail |= bit
        self.masks = masks

    def _extend(self, q: int) -> None:
        """Make hour ``q`` (and those before it) explicit: past the last, nodes are at their tail."""
        more = q - self.q0 - len(self.masks) + 1
        if more > 0:
            self.masks.extend([self.tail] * more)

    def sure(self, t: int, d: int) -> int:
        """Nodes wholly free over every hour [t, t + d) touches."""
        if self.q0 is None:
            return self.tail
        a = t // HOUR - self.q0
        b = (t + d - 1) // HOUR - self.q0 + 1
        m = self.masks
        if a < 0:
            return 0  # before what was built: nothing is sure
        out = reduce(and_, m[a:b], -1)
        if b > len(m):
            out &= self.tail
        return out

    def changed(self, node: CapacityCalendar, n: int, start: int, end: int, freed: bool) -> None:
        """Node ``n`` changed over [start, end)."""
        if node.capacity != self.per:
            return
        qa, qb = start // HOUR, (end - 1) // HOUR
        if self.q0 is None:
            self.q0 = qa
        if qa < self.q0:
            self.masks[:0] = [0] * (self.q0 - qa)  # nothing sure before the first hour built
            self.q0 = qa
        self._extend(qb)
        m, bit = self.masks, 1 << n
        if not freed:  # a reserve: the node is busy somewhere in each of these hours
            a, b = qa - self.q0, qb - self.q0 + 1
            m[a:b] = [x & ~bit for x in m[a:b]]
            return
        per = self.per
        for q in range(qa, qb + 1):
            if node.min_free(q * HOUR, (q + 1) * HOUR) == per:
                m[q - self.q0] |= bit
            else:
                m[q - self.q0] &= ~bit

    def forget_before(self, t: int) -> None:
        if self.q0 is None:
            return
        drop = t // HOUR - self.q0
        if drop > 0:
            del self.masks[:drop]
            self.q0 += drop


def _lowest_bits(mask: int, k: int) -> list[int]:
    """The indices of the ``k`` lowest set bits of ``mask``."""
    bits = bin(mask)[:1:-1]  # bit 0 first
    out = []
    i = bits.find("1")
    while i >= 0 and len(out) < k:
        out.append(i)
        i = bits.find("1", i + 1)
    return out


class NodeCalendar(CapacityCalendar):
    """Free GPUs of a pool over time, per node; reservations are placed on nodes.

    The flat methods inherited from :class:`CapacityCalendar` describe the pool as a whole (a
    necessary condition for any node placement); ``earliest_fit``, ``choose``, ``reserve``
    and ``release`` follow the node rule (module docstring)."""

    __slots__ = ("_held", "_idx", "_one", "_reach", "_version", "_whole_masks", "_widest_node", "nodes", "per_node")

    def __init__(self, capacity: int, per_node: int | None = None) -> None:
        super().__init__(capacity)
        per_node = capacity if per_node is None or per_node >= capacity else per_node
        if per_node < 1:
            raise ValueError("per_node must be >= 1")
        self.per_node = per_node
        self._one = per_node >= capacity
        self.nodes = [self] if self._one else [CapacityCalendar(s) for s in node_sizes(capacity, per_node)]
        self._widest_node = per_node
        self._version = 0  # bumped by every change, so answers about one instant can be kept
        self._reach: dict[tuple[int, int], tuple[int, int]] = {}
        self._whole_masks: _Whole | None = None  # built the first time a search needs it
        self._idx: dict[int, _Threshold] = {}
        # Reservations by (end, width): [(start, nodes)], so a release that does not name
        # its nodes (a snapshot rebuilt without them) finds the ones the reserve took.
        self._held: dict[tuple[int, int], list[tuple[int, tuple[int, ...]]]] = {}

    @property
    def full_nodes(self) -> int:
        return self.capacity // self.per_node

    def admits(self, width: int) -> bool:
        """Whether ``width`` obeys the node rule here (and fits the pool's full nodes)."""
        if width <= self.per_node:
            return width <= self._widest_node
        k = whole_nodes(width, self.per_node)
        return k is not None and k <= self.full_nodes

    def _shape(self, width: int) -> tuple[int, int]:
        """(GPUs per node, nodes) of a grant of ``width``; ValueError if it breaks the rule."""
        if width <= self.per_node:
            return width, 1
        k = whole_nodes(width, self.per_node)
        if k is None:
            raise ValueError(f"{width} GPUs is not a whole number of {self.per_node}-GPU nodes")
        return self.per_node, k

    def _index(self, v: int) -> _Threshold:
        idx = self._idx.get(v)
        if idx is None:
            idx = self._idx[v] = _Threshold(v, self.nodes)
        return idx

    # -- searches ----------------------------------------------------------------------

    def earliest_fit(self, width: int, duration: int, start: int, deadline: int | None = None) -> int | None:
        """Earliest t >= start at which ``width`` GPUs fit on nodes by the node rule over
        [t, t + duration), with t + duration <= deadline; None when there is none."""
        if self._one:
            return self.earliest(width, duration, start, deadline)
        if not self.admits(width):
            return None
        v, k = self._shape(width)
        flat = self.earliest(width, duration, start, deadline)  # nodes fit no earlier
        if flat is None:
            return None
        idx = self._index(v)
        if v == self.per_node and self._whole().sure(flat, duration).bit_count() >= k:
            return flat  # whole nodes surely free over the window's hours: no scan needed
        return idx.earliest(k, duration, flat, deadline)

    def choose(self, width: int, start: int, end: int) -> tuple[int, ...] | None:
        """The nodes a grant of ``width`` over [start, end) would take now, or None."""
        if self._one:
            return (0,) if self.min_free(start, end) >= width else None
        if not self.admits(width) or end <= start:
            return None
        v, k = self._shape(width)
        d = end - start
        if v == self.per_node:
            # Whole nodes: the lowest-numbered ones surely free over the window's hours,
            # else (a window's end hours are busy elsewhere) the index's soonest-ending runs.
            sure = self._whole().sure(start, d)
            if sure.bit_count() >= k:
                return tuple(_lowest_bits(sure, k))
            return self._index(v).choose(k, start, d)
        # One node for a narrow grant. First a node already in use that fits (best fit in
        # GPUs among the first SCAN_NODES nodes, so whole nodes stay whole for whole-node
        # grants); else the highest-numbered node wholly free over the window's hours (whole
        # nodes are taken from the bottom, narrow grants break them from the top); else
        # the best fit among the index's soonest-ending runs.
        best = None
        nodes = self.nodes
        per = self.per_node
        for n in range(min(SCAN_NODES, len(nodes))):
            room = nodes[n].min_free(start, end)
            if v <= room < per and (best is None or room < best[0]):
                best = (room, n)
                if room == v:
                    break
        if best is not None:
            return (best[1],)
        sure = self._whole().sure(start, d)
        if sure:
            return (sure.bit_length() - 1,)
        for n in self._index(v).candidates(start, d, BEST_FIT_OF):
            room = nodes[n].min_free(start, end)
            if best is None or room < best[0]:
                best = (room, n)
        return None if best is None else (best[1],)

    def _whole(self) -> _Whole:
        if self._whole_masks is None:
            self._whole_masks = _Whole(self.nodes, self.per_node)
        return self._whole_masks

    def fits_moved(self, width: int, start: int, end: int, own_start: int, own: tuple[int, ...]) -> bool:
        """Whether ``width`` GPUs fit over [start, end) once the same grant's reservation
        from ``own_start`` on (on nodes ``own``) is given back; nothing is touched. A node
        fits if it is free over the whole window now, or if it is one of ``own`` and free
        until ``own_start`` (from there its own GPUs come back)."""
        upto = min(own_start, end)
        if self._one:
            return self.min_free(start, upto) >= width
        if not self.admits(width):
            return False
        v, k = self._shape(width)
        n = self._index(v).fitting(start, end - start)
        if n >= k or upto == end:
            return n >= k
        for x in own:
            node = self.nodes[x]
            if node.min_free(start, upto) >= v and node.min_free(start, end) < v:
                n += 1
        return n >= k

    def widest_fit(self, start: int, end: int) -> int:
        """The widest grant the node rule lets fit over the whole of [start, end)."""
        if self._one:
            return self.min_free(start, end)
        whole = self._index(self.per_node).fitting(start, end - start)
        if whole:
            return whole * self.per_node
        return max(c.min_free(start, end) for c in self.nodes)  # one node, partly free

    def reach(self, width: int, t: int) -> int:
        """How far from ``t`` the free GPUs reach for ``width`` by the node rule: the latest
        ``r`` such that the nodes it needs are free over [t, r) (t itself when they are not
        free at t; FAR_FUTURE when they stay free)."""
        if self._one:
            return self.free_until(width, t)
        if not self.admits(width):
            return t
        hit = self._reach.get((width, t))
        if hit is not None and hit[0] == self._version:
            return hit[1]
        r = self._reach_of(width, t)
        if len(self._reach) > 256:
            self._reach.clear()
        self._reach[(width, t)] = (self._version, r)
        return r

    def _reach_of(self, width: int, t: int) -> int:
        v, k = self._shape(width)
        idx = self._index(v)
        if idx.count.free_at(t) < k:
            return t
        ends, es = idx.ends, idx.end_starts
        i = bisect_right(ends, (t, _LAST))
        # The runs covering t are those starting by t among the ends after t: the k-th
        # latest of them is the reach.
        n = len(ends)
        hits = compress(range(n - 1, i - 1, -1), map(t.__ge__, islice(reversed(es), n - i)))
        x = next(islice(hits, k - 1, None), None)
        return t if x is None else ends[x][0]

    # -- writers -----------------------------------------------------------------------

    def reserve(self, start: int, end: int, width: int, nodes: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Take ``width`` GPUs over [start, end) on ``nodes`` (chosen here when None);
        refuses (ValueError) to over-commit the pool or any node. Returns the nodes."""
        if width <= 0 or end <= start:
            raise ValueError(f"bad reservation [{start}, {end}) x {width}")
        if self._one:
            if nodes not in (None, (0,)):
                raise ValueError(f"pool has one node, not {nodes}")
            super().reserve(start, end, width)
            nodes = (0,)
        else:
            v, k = self._shape(width)
            if nodes is None:
                nodes = self.choose(width, start, end)
                if nodes is None:
                    raise ValueError(f"over-commit: no {k} node(s) with {v} GPUs free over [{start}, {end})")
            nodes = tuple(sorted(nodes))
            if len(nodes) != k or len(set(nodes)) != k or not all(0 <= n < len(self.nodes) for n in nodes):
                raise ValueError(f"{width} GPUs take {k} node(s) of {v}, not {nodes}")
            for n in nodes:
                if self.nodes[n].min_free(start, end) < v:
                    raise ValueError(f"over-commit: node {n} has not {v} GPUs free over [{start}, {end})")
            if self.min_free(start, end) < width:
                raise ValueError(f"over-commit: {width} GPUs not free over [{start}, {end})")
            self._add(start, end, -width)
            for n in nodes:
                self._node_add(n, start, end, -v)
        self._held.setdefault((end, width), []).append((start, nodes))
        return nodes

    def release(self, start: int, end: int, width: int, nodes: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Give back ``width`` GPUs over [start, end) that an earlier reserve took on
        ``nodes`` (when None: the nodes of the reservation ending at ``end`` with this width
        that began latest at or before ``start``). Returns the nodes."""
        if end <= start:
            return nodes or ()
        key = (end, width)
        held = self._held.get(key, [])
        pos = None
        for i, (s0, ns) in enumerate(held):
            if s0 <= start and (nodes is None or ns == tuple(sorted(nodes))):
                if pos is None or s0 > held[pos][0]:
                    pos = i
        if pos is None:
            if nodes is None:
                raise ValueError(f"release of GPUs that were not reserved over [{start}, {end})")
            s0, found = start, tuple(sorted(nodes))
        else:
            s0, found = held.pop(pos)
            if not held:
                del self._held[key]
        if self._one:
            super().release(start, end, width)
        else:
            v, _ = self._shape(width)
            for n in found:
                node = self.nodes[n]
                if node.capacity - node.max_free(start, end) < v:
                    raise ValueError(f"release of GPUs that were not reserved on node {n} over [{start}, {end})")
            if self.capacity - self.max_free(start, end) < width:
                raise ValueError(f"release of GPUs that were not reserved over [{start}, {end})")
            self._add(start, end, width)
            for n in found:
                self._node_add(n, start, end, v)
        if s0 < start:
            self._held.setdefault((start, width), []).append((s0, found))
        return found

    def forget_before(self, t: int) -> None:
        super().forget_before(t)
        if self._one:
            return
        self._version += 1
        for c in self.nodes:
            c.forget_before(t)
        for idx in self._idx.values():
            idx.forget_before(t)
        if self._whole_masks is not None:
            self._whole_masks.forget_before(t)
        for key in [k for k in self._held if k[0] <= t]:
            del self._held[key]

    # -- internals ---------------------------------------------------------------------

    def _node_add(self, n: int, start: int, end: int, delta: int) -> None:
        self._version += 1
        node = self.nodes[n]
        # Only thresholds the change crosses have runs that change (see the class doc).
        lo_before, hi_before = node.min_free(start, end), node.max_free(start, end)
        lo_after, hi_after = lo_before + delta, hi_before + delta
        low = min(lo_before, lo_after)
        high = max(hi_before, hi_after)
        touched = [idx for v, idx in self._idx.items() if low < v <= high and v <= node.capacity]
        olds = [_runs_of(node, idx.v, start, end) for idx in touched]
        node._add(start, end, delta)
        if self._whole_masks is not None:
            self._whole_masks.changed(node, n, start, end, delta > 0)
        for idx, old in zip(touched, olds):
            idx.replace(n, old, _runs_of(node, idx.v, start, end), start, end)
