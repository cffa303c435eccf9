"""The node-aware calendar of one pool: free GPUs per node over time, and where grants go.

A pool of ``gpus`` GPUs is ``gpus // gpus_per_node`` full nodes, plus one smaller node
holding the remainder when the division is not exact. **The node rule**: a grant no wider
than ``gpus_per_node`` lives on one node; a wider one takes ``width / gpus_per_node`` whole
full nodes (its width must be a multiple). Every reservation names its nodes (indices
0..n-1 in the pool), fixed when it is made, so what admission promises is a packing that
placement can deliver as it stands.

:class:`NodeCalendar` is still the pool's :class:`CapacityCalendar` (free GPUs of the whole
pool: what the flat methods ``free_at``, ``min_free``, ``earliest``, ``free_until`` ... read),
and keeps beside it one calendar per node. Searches, fits and choices go through an **hour
index** per GPU count ``v`` (:class:`_Hours`, built the first time a request needs it, or by
``build_index``): per hour, bitmasks of the nodes with ``v`` free at its start, throughout
it and at some instant of it, and the instants in it at which a node crosses ``v`` (a
node's changes reach the index of ``v`` when something next asks it). The nodes that fit
``v`` over ``[t, t + d)`` are a few bisects and C-level ORs of big integers away; the
earliest start for ``k`` of them skips hours by cached counts and walks only the ups inside
an hour that can hold it (the class says how). Exact, not a heuristic. ``reach``
(how far the nodes stay free from an instant, for the simulator's pull-forward index) reads
the same hours: of the nodes free at the instant, it walks their first downs after it.

Which nodes: whole nodes are the lowest-numbered ones wholly free over every hour the
window touches (a bitmask per hour, ANDed), else those whose span of free GPUs ends
soonest after the window; a narrow grant goes to the best fit in GPUs among nodes already
in use (the first ``SCAN_NODES``), else to the highest-numbered wholly free node (whole
nodes are taken from the bottom, narrow grants break them from the top), else to the best
fit among the nodes whose span ends soonest. ``replace`` moves a reservation off lost nodes by the same choice.

A pool that is one node (``gpus_per_node == gpus``) has no index: the node *is* the pool,
and every answer is the flat calendar's, bit for bit.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from functools import reduce
from itertools import accumulate, compress, count, islice
from operator import and_, or_, xor

from collections.abc import Collection

from cellsched.core.calendar import FAR_FUTURE, CapacityCalendar, _tail

_LAST = 1 << 62  # sorts after any node index
BEST_FIT_OF = 4  # a narrow grant's node is the best fit in GPUs among this many candidates
SCAN_NODES = 16  # nodes tried in index order for a narrow grant before any wholly free one
SCAN_MASK = (1 << SCAN_NODES) - 1
HOUR = 3600  # the buckets of the whole-node masks and of the per-GPU-count hours
NK = 1 << 21  # a crossing's key is time * NK + node: an hour's crossings sort by (time, node)
HK = NK * HOUR  # key // HK is the crossing's hour
LOW = NK - 1  # key & LOW is the crossing's node
CHUNK = 128  # hours per cached chunk of candidate counts
DOWN_CHUNK = 64  # hours per cached OR of the downs, skipped whole by the walks for the next down
LEVEL_REACH = 64  # a chunk's shared ANDs reach this many hours past its end
# The window lengths (in whole hours after the start hour) whose counts judge chunks:
# COARSE[L] is the largest of 0-16, then every second to 32, every fourth to 64, not above L.
_COARSE = (*range(17), *range(18, 33, 2), *range(36, 65, 4))
COARSE = [max(x for x in _COARSE if x <= n) for n in range(65)]


def window_ands(vals: list[int], w: int) -> list[int]:
    """``out[a]`` = the AND of ``vals[a : a + w]`` for every a with a + w <= len(vals), in
    about 3 ANDs per value however long ``w`` (van Herk / Gil-Werman: within blocks of w, the
    ANDs from each value to its block's end and from its block's start; a window is the
    first of one block's and the second of the next's)."""
    n = len(vals)
    if w <= 0 or n < w:
        return [-1] * (n + 1) if w <= 0 else []
    pre: list[int] = []
    suf: list[int] = []
    for b0 in range(0, n, w):
        block = vals[b0 : b0 + w]
        pre.extend(accumulate(block, and_))
        s = list(accumulate(reversed(block), and_))
        s.reverse()
        suf.extend(s)
    return list(map(and_, suf[: n - w + 1], pre[w - 1 :]))


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
            m[a:b] = map((~bit).__and__, m[a:b])
            return
        # A release: every hour it spans held the node's GPUs at some instant, so its bit is
        # clear there; it is set in the hours now wholly inside a segment with ``per`` free
        # (equal neighbours are merged, so each such run is one segment).
        per, q0 = self.per, self.q0
        t, f = node._t, node._f
        lo, hi = qa * HOUR, (qb + 1) * HOUR
        i = bisect_right(t, lo) - 1
        j = bisect_left(t, hi, i + 1)
        last = len(t) - 1
        add = bit.__or__
        for k in range(i, j):
            if f[k] == per:
                a = -(-max(t[k], lo) // HOUR) - q0
                z = min(t[k + 1] if k < last else hi, hi) // HOUR - q0
                if z - a == 1:
                    m[a] |= bit
                elif z > a:
                    m[a:z] = map(add, m[a:z])

    def forget_before(self, t: int) -> None:
        if self.q0 is None:
            return
        drop = t // HOUR - self.q0
        if drop > 0:
            del self.masks[:drop]
            self.q0 += drop


class _Hours:
    """Which nodes have at least ``v`` GPUs free, hour by hour, as bitmasks (bit n: node n),
    with the instants inside each hour at which a node's free GPUs cross ``v``.

    Per hour ``q`` (index ``q - q0``): ``m0``, the nodes with ``v`` free just before the
    hour; ``sure``, those with ``v`` free throughout it; ``poss``, those with ``v`` free at
    some instant of it; ``dall``, those that drop below ``v`` in it; and its crossings,
    *ups* and *downs*, each as sorted keys ``time * NK + node`` beside the node's bit.
    Before the first hour every node is as at its calendar's start (``head``), after the
    last as at its end (``tail``). Only ``sure`` is kept as it is: ``m0`` is ``sure ^ flip``
    and ``poss`` is ``sure | part``, where ``flip`` and ``part`` hold only nodes that cross
    ``v`` in the hour (a node that does not is in all three or in none). So a change
    rewrites one mask per hour it spans, not three, outside the hours where it crosses.

    So the nodes that fit ``v`` GPUs over [t, e) are those with ``v`` free at t (``m0`` of
    t's hour with that hour's crossings up to t toggled) less those with a down in (t, e):
    a bisect and a few C-level ORs per end hour, and one OR per hour between. No window
    starting in hour q fits ``k`` nodes unless ``poss[q]`` ANDed with the ``sure`` of every
    hour such a window covers whole (the hour's *candidates*) holds ``k`` nodes. A search
    skips hours by counts of candidates, cached per chunk of CHUNK hours for a few window
    lengths (each count is for a length no longer than the search's, so a bound: the hour's
    own candidates are checked when it passes), scanned at C speed. Inside an hour that
    passes, the start is ``t`` or the instant a candidate comes up: between two ups the
    nodes that fit only leave, so when ``f`` nodes fit at t the next start that can fit is
    the ``(k - f)``-th candidate up after t. Exact."""

    __slots__ = ("_dor", "_lvl", "_maxin", "_memo", "_pending", "_ubc", "bits", "dall", "db", "dk", "elig", "flip", "head",
                 "part", "q0", "sure", "tail", "ub", "uk", "v")

    def __init__(self, v: int, nodes: list[CapacityCalendar]) -> None:
        self.v = v
        self.bits = bits = [1 << i for i in range(len(nodes))]
        head = tail = elig = 0
        ups: list[int] = []
        downs: list[int] = []
        for n, c in enumerate(nodes):
            if c.capacity < v:
                continue
            b = bits[n]
            elig |= b
            t, f = c._t, c._f
            above = f[0] >= v
            if above:
                head |= b
            if f[-1] >= v:
                tail |= b
            for k in range(1, len(f)):
                if (f[k] >= v) is not above:
                    above = not above
                    (ups if above else downs).append(t[k] * NK + n)
        self.elig, self.head, self.tail = elig, head, tail
        # Per chunk of CHUNK hours (by absolute hour // CHUNK), per count of inner hours L:
        # (the largest, [how many candidates each start hour has]), made when a search
        # needs it and dropped when an hour it read changes (L hours after the chunk at most).
        self._ubc: dict[int, dict[int, tuple[int, list[int]]]] = {}
        self._maxin = 0  # the largest L in the chunks
        # Per chunk: the ANDs of ``sure`` over 1, 2, 4 .. hours from each hour after its
        # first (to its end plus LEVEL_REACH hours), shared by every L up to LEVEL_REACH.
        self._lvl: dict[int, list[list[int]]] = {}
        self._memo: tuple[int, int, int] | None = None  # the last fit asked: (t, e, nodes)
        # Per chunk of DOWN_CHUNK hours (by absolute hour // DOWN_CHUNK): the OR of ``dall``
        # over it, made when a walk for the next down needs it; a change ORs in the nodes
        # that now go down in it, and a walk that finds none of the nodes it named there
        # makes it anew. Never less than the OR of its hours, so a walk may skip a chunk
        # whose OR misses the nodes it follows.
        self._dor: dict[int, int] = {}
        # Changes not yet in the hours, per node: (first hour, last hour, the node's calendar,
        # its crossings in those hours before the changes). ``settle`` puts them in; a node
        # changed again over the same or adjacent hours meanwhile is put in once.
        self._pending: dict[int, tuple[int, int, CapacityCalendar, list[tuple[int, bool]]]] = {}
        self.q0: int | None = None
        self.sure: list[int] = []
        self.flip: list[int] = []  # m0 ^ sure
        self.part: list[int] = []  # poss & ~sure: free for part of the hour only
        self.dall: list[int] = []
        # An hour's crossings are tuples (of ints only: the garbage collector stops walking
        # such tuples after its first look, so millions of crossings cost it nothing); a
        # change makes the hour's tuples anew.
        self.uk: list[tuple[int, ...]] = []  # keys of the ups
        self.ub: list[tuple[int, ...]] = []  # their node bits
        self.dk: list[tuple[int, ...]] = []
        self.db: list[tuple[int, ...]] = []
        if not ups and not downs:
            return  # no crossing anywhere: hours are made when the first change comes
        keys = ups + downs
        q0 = min(keys) // HK
        nh = max(keys) // HK - q0 + 1
        self.q0 = q0
        for src, kk, bb in ((sorted(ups), self.uk, self.ub), (sorted(downs), self.dk, self.db)):
            per_hour: list[list[int]] = [[] for _ in range(nh)]
            for key in src:
                per_hour[key // HK - q0].append(key)
            kk.extend(map(tuple, per_hour))
            bb.extend(tuple(bits[key & LOW] for key in keys) for keys in kk)
        state = head
        for i in range(nh):
            self._fill(i, state)
            state = reduce(xor, self.ub[i], reduce(xor, self.db[i], state))

    def _fill(self, i: int, m0: int) -> None:
        """Append hour ``i``'s masks from its crossings, ``m0`` being the state before it."""
        first = (self.q0 + i) * HK + NK  # keys below: crossings at the hour's first second
        uk, ub, dk, db = self.uk[i], self.ub[i], self.dk[i], self.db[i]
        x, y = bisect_left(uk, first), bisect_left(dk, first)
        s0 = reduce(xor, ub[:x], reduce(xor, db[:y], m0))
        sure = s0 & ~reduce(or_, db[y:], 0)
        self.sure.append(sure)
        self.flip.append(m0 ^ sure)
        self.part.append(reduce(or_, ub[x:], s0) & ~sure)
        self.dall.append(reduce(or_, db, 0))

    # -- queries -----------------------------------------------------------------------

    def at(self, t: int) -> int:
        """The nodes with at least ``v`` free at ``t``."""
        q0 = self.q0
        if q0 is None:
            return self.head
        i = t // HOUR - q0
        if i < 0:
            return self.head
        if i >= len(self.sure):
            return self.tail
        key = t * NK + NK - 1
        s = self.sure[i] ^ self.flip[i]
        x = bisect_right(self.uk[i], key)
        if x:
            s = reduce(xor, self.ub[i][:x], s)
        y = bisect_right(self.dk[i], key)
        if y:
            s = reduce(xor, self.db[i][:y], s)
        return s

    def fit(self, t: int, e: int) -> int:
        """The nodes with at least ``v`` free throughout [t, e)."""
        memo = self._memo
        if memo is not None and memo[0] == t and memo[1] == e:
            return memo[2]  # a search's last answer, asked again by the choice that follows
        out = self._fit(t, e)
        self._memo = (t, e, out)
        return out

    def _fit(self, t: int, e: int) -> int:
        q0 = self.q0
        if q0 is None:
            return self.head
        nh = len(self.sure)
        i = t // HOUR - q0
        if i >= nh:
            return self.tail
        j = (e - 1) // HOUR - q0
        if e <= t or j < 0:
            return self.at(t)
        down = 0
        if i < 0:
            s = self.head
            a = 0
        else:
            key = t * NK + NK - 1
            s = self.sure[i] ^ self.flip[i]
            dk, db = self.dk[i], self.db[i]
            x = bisect_right(self.uk[i], key)
            if x:
                s = reduce(xor, self.ub[i][:x], s)
            y = bisect_right(dk, key)
            if y:
                s = reduce(xor, db[:y], s)
            if j == i:
                z = bisect_left(dk, e * NK, y)
                return s & ~reduce(or_, db[y:z], 0) if z > y else s
            if y < len(db):
                down = reduce(or_, db[y:], 0)
            a = i + 1
        b = j if j < nh else nh
        if b - a > 8:
            # A long middle: the nodes free at t with no down since are those in ``sure``
            # of every middle hour, two ANDs from the chunk's shared ones when made.
            qa = q0 + a
            c = (qa - 1) // CHUNK
            levels = self._lvl.get(c)
            n = b - a
            span = 1 << (n.bit_length() - 1)
            lv = span.bit_length() - 1
            if levels is not None and n <= LEVEL_REACH and len(levels) > lv:
                x = qa - 1 - c * CHUNK
                s &= levels[lv][x] & levels[lv][x + n - span]
            else:
                down = reduce(or_, self.dall[a:b], down)
        elif b > a:
            down = reduce(or_, self.dall[a:b], down)
        if j < nh:
            z = bisect_left(self.dk[j], e * NK)
            if z:
                down = reduce(or_, self.db[j][:z], down)
        return s & ~down

    def _candidates(self, i: int, inner: int) -> int:
        """Nodes that may fit a window starting in hour ``i`` that surely covers the
        ``inner`` hours after it: free at some instant of hour i, throughout those."""
        nh = len(self.sure)
        m = self.sure[i] | self.part[i]
        if 0 < inner <= LEVEL_REACH and i + inner < nh:
            q = self.q0 + i  # from the chunk's shared ANDs when they are made
            levels = self._lvl.get(q // CHUNK)
            span = 1 << (inner.bit_length() - 1)
            j = span.bit_length() - 1
            if levels is not None and len(levels) > j:
                x = q - q // CHUNK * CHUNK
                return m & levels[j][x] & levels[j][x + inner - span]
        if inner > 0:
            stop = i + inner + 1
            if stop > nh:
                m &= self.tail
                stop = nh
            if stop > i + 1:
                m = reduce(and_, self.sure[i + 1 : stop], m)
        return m

    def _next_hour(self, i: int, k: int, inner: int, last: int) -> int:
        """The first hour index in [i, last] at which a window that surely covers the
        ``inner`` hours after its start hour may have ``k`` candidates (last + 1 when none
        is; len(sure) when none is before the tail)."""
        nh = min(len(self.sure), last + 1)
        enough = k.__le__
        # Counts for the nearest of a few fixed window lengths not above ``inner`` (a bound
        # a little weaker, but there are few of them, so the chunks are soon all made; the
        # caller checks the hour's own candidates).
        rough = COARSE[min(max(inner, 0), len(COARSE) - 1)]
        if rough > self._maxin:
            self._maxin = rough
        cache = self._ubc
        q0 = self.q0
        assert q0 is not None
        q, end = q0 + i, q0 + nh
        while q < end:
            c = q // CHUNK
            chunk = cache.get(c)
            if chunk is None:
                chunk = cache[c] = {}
            entry = chunk.get(rough)
            if entry is None:
                entry = chunk[rough] = self._chunk(rough, c)
            if entry[0] >= k:
                base = c * CHUNK
                off, stop = q - base, min(CHUNK, end - base)
                x = next(compress(range(off, stop), map(enough, islice(_tail(entry[1], off), stop - off))), None)
                if x is not None:
                    return base + x - q0
            q = (c + 1) * CHUNK
        return nh

    def _span(self, masks: list[int], qa: int, qb: int) -> list[int]:
        """``masks`` of absolute hours [qa, qb), as ``head`` before the first, ``tail`` after the last."""
        q0 = self.q0
        assert q0 is not None
        nh = len(masks)
        a, b = qa - q0, qb - q0
        out = masks[max(a, 0) : max(min(b, nh), 0)]
        if a < 0:
            out[:0] = [self.head] * (min(b, 0) - a)
        if b > nh:
            out.extend([self.tail] * (b - max(a, nh)))
        return out

    def _poss(self, qa: int, qb: int) -> list[int]:
        """``poss`` of absolute hours [qa, qb) (as ``_span``: ``head`` before, ``tail`` after)."""
        out = self._span(self.sure, qa, qb)
        q0 = self.q0
        assert q0 is not None
        a, b = max(qa - q0, 0), min(qb - q0, len(self.part))
        if b > a:
            x = a + q0 - qa  # where hour index a is in ``out``
            out[x : x + b - a] = map(or_, out[x : x + b - a], self.part[a:b])
        return out

    def _chunk(self, inner: int, c: int) -> tuple[int, list[int]]:
        """(largest, counts) of candidates for start hours c * CHUNK .. (c + 1) * CHUNK - 1:
        ``poss`` of the hour ANDed with ``sure`` of the ``inner`` hours after it (a sliding
        window's AND from two overlapping power-of-two ANDs: a few C-level maps)."""
        a = c * CHUNK
        if inner == 0:
            counts = list(map(int.bit_count, self._poss(a, a + CHUNK)))
            return max(counts), counts
        span = 1 << (inner.bit_length() - 1)  # (inner <= LEVEL_REACH)
        levels = self._lvl.get(c)
        if levels is None:
            levels = self._lvl[c] = [self._span(self.sure, a + 1, a + 1 + CHUNK + LEVEL_REACH)]
        while len(levels) <= span.bit_length() - 1:
            w, half = levels[-1], 1 << (len(levels) - 1)
            levels.append(list(map(and_, w, w[half:])))
        w = levels[span.bit_length() - 1]
        if span < inner:
            w = map(and_, w, w[inner - span :])
        counts = list(map(int.bit_count, map(and_, self._poss(a, a + CHUNK), w)))
        return max(counts), counts

    def _invalidate(self, qa: int, qb: int) -> None:
        """Hours qa..qb (absolute) changed: drop the chunks that read them."""
        if self._ubc:
            for c in range((qa - self._maxin) // CHUNK, qb // CHUNK + 1):
                self._ubc.pop(c, None)
        if self._lvl:
            for c in range((qa - CHUNK - LEVEL_REACH) // CHUNK, qb // CHUNK + 1):
                self._lvl.pop(c, None)

    def earliest(self, k: int, d: int, t: int, limit: int) -> int | None:
        """Earliest t' in [t, limit] at which ``k`` nodes have ``v`` free over [t', t' + d)."""
        if self.elig.bit_count() < k:
            return None
        q0 = self.q0
        if q0 is None:
            return t if t <= limit and self.head.bit_count() >= k else None
        if t > limit:
            return None
        if self.fit(t, t + d).bit_count() >= k:
            return t  # the usual case for one node: no hours to scan
        nh = len(self.sure)
        inner = d // HOUR - 1  # hours any window of length d starting in an hour covers whole
        # A window longer than the chunks' shared ANDs reach: each hour's candidates would AND
        # ``inner`` masks, so after a few such hours the ANDs of every start hour up to the
        # limit are made at once (``window_ands``: a few ANDs per hour instead of ``inner``).
        long_left = 3 if inner > LEVEL_REACH else -1
        ands: list[int] | None = None
        good: list[int] = []  # then the hours whose candidates hold k, ascending
        a0 = 0
        while t <= limit:
            i = t // HOUR - q0
            if i < 0:
                if self.fit(t, t + d).bit_count() >= k:
                    return t
                t = q0 * HOUR  # nothing comes up before the first hour: only fewer fit
                continue
            if i >= nh:
                return t if self.tail.bit_count() >= k else None
            if long_left == 0:
                a0 = i + 1  # ands[x]: ``sure`` of hours a0 + x .. a0 + x + inner - 1 (``tail`` past the last)
                last = min(limit // HOUR - q0, nh - 1) + 1
                vals = self.sure[a0 : min(last + inner, nh)]
                vals.extend([self.tail] * (last + inner - a0 - len(vals)))
                ands = window_ands(vals, inner)
                poss = map(or_, self.sure[i:last], self.part[i:last])
                good = list(compress(range(i, last), map(k.__le__, map(int.bit_count, map(and_, poss, ands)))))
                long_left = -1
            if ands is not None:
                x = bisect_left(good, i)
                if x == len(good):
                    t = (q0 + last) * HOUR  # no hour up to the limit (or the tail) has k candidates
                    continue
                j = good[x]
            else:
                j = self._next_hour(i, k, inner, limit // HOUR - q0)
            if j > i:
                t = (q0 + j) * HOUR
                continue
            if ands is not None:
                cand = (self.sure[i] | self.part[i]) & ands[i + 1 - a0]
            else:
                if long_left > 0:
                    long_left -= 1
                cand = self._candidates(i, inner)
            if cand.bit_count() >= k:  # (the counts were for a window no longer than this one)
                uk, ub = self.uk[i], self.ub[i]
                while True:
                    f = self.fit(t, t + d).bit_count()
                    if f >= k:
                        return t
                    x = bisect_right(uk, t * NK + NK - 1)
                    ups = compress(range(x, len(uk)), map(cand.__and__, ub[x:]))
                    y = next(islice(ups, k - f - 1, None), None)
                    if y is None:
                        break
                    t = uk[y] // NK
                    if t > limit:
                        return None
            t = (q0 + i + 1) * HOUR
        return None

    def reach(self, k: int, t: int) -> int:
        """The latest r such that ``k`` nodes have ``v`` free throughout [t, r): t when
        fewer have it at t, FAR_FUTURE when enough never lose it. Of the c nodes free at t,
        the (c - k + 1)-th to go down (each at its first down after t) ends it."""
        left = self.at(t)
        need = left.bit_count() - k + 1
        if need <= 0:
            return t
        q0 = self.q0
        if q0 is None:
            return FAR_FUTURE
        nh = len(self.sure)
        i = t // HOUR - q0
        if i >= nh:
            return FAR_FUTURE
        x = 0
        if i < 0:
            i = 0
        else:
            x = bisect_right(self.dk[i], t * NK + NK - 1)
        dall, dks, dbs = self.dall, self.dk, self.db
        while i < nh:
            db = dbs[i]
            here = (reduce(or_, db[x:], 0) if x else dall[i]) & left
            if here:
                c = here.bit_count()
                if c < need:
                    left &= ~here
                    need -= c
                else:
                    dk = dks[i]
                    for y in compress(range(x, len(db)), map(here.__and__, db[x:])):
                        b = db[y]
                        if left & b:
                            left &= ~b
                            need -= 1
                            if need == 0:
                                return dk[y] // NK
            i = self._next_down(left, i + 1, nh)
            x = 0
        return FAR_FUTURE

    def _next_down(self, left: int, i: int, nh: int) -> int:
        """The first hour index in [i, nh) in which a node of ``left`` goes down (nh: none),
        skipping the chunks whose ORs of downs miss ``left``."""
        dall, dor, q0 = self.dall, self._dor, self.q0
        assert q0 is not None
        sel = left.__and__
        while i < nh:
            c = (q0 + i) // DOWN_CHUNK
            a = c * DOWN_CHUNK - q0  # the chunk's first hour index (may be below 0)
            stop = min(a + DOWN_CHUNK, nh)
            m = dor.get(c)
            if m is None:
                m = dor[c] = reduce(or_, dall[max(a, 0) : a + DOWN_CHUNK], 0)
            if m & left:
                x = next(compress(range(i, stop), map(sel, _tail(dall, i))), None)
                if x is not None:
                    return x
                # It named a node of ``left`` with no down here any more: made anew
                dor[c] = reduce(or_, dall[max(a, 0) : a + DOWN_CHUNK], 0)
            i = stop
        return nh

    def soonest(self, t: int, e: int, m: int, allowed: int = -1) -> list[int]:
        """Up to ``m`` nodes (of ``allowed``) that have ``v`` free over [t, e), those whose
        span of ``v`` free ends soonest first (ties: lower node first; spans that never end
        last)."""
        out, _, left = self._soonest(t, e, m, True, allowed)
        out.extend(_lowest_bits(left, m - len(out)))
        return out

    def soonest_set(self, t: int, e: int, m: int, allowed: int = -1) -> int:
        """The nodes of ``soonest(t, e, m, allowed)``, as a mask."""
        out, taken, left = self._soonest(t, e, m, False, allowed)
        taken |= reduce(or_, map(self.bits.__getitem__, out), 0)
        more = m - taken.bit_count()
        if more > 0 and left:
            last = _lowest_bits(left, more)[-1]
            taken |= left & ((2 << last) - 1)
        return taken

    def _soonest(self, t: int, e: int, m: int, ordered: bool, allowed: int) -> tuple[list[int], int, int]:
        """For ``soonest``: (nodes whose span ends soonest, in that order; more of them as a
        mask, taken a whole hour at a time when not ``ordered`` and the hour's fitting downs
        all fit in what is still wanted; the fitting nodes left, whose spans never end)."""
        left = self.fit(t, e) & allowed
        out: list[int] = []
        taken = 0
        q0 = self.q0
        if not left or q0 is None:
            return out, taken, left
        nh = len(self.sure)
        i = e // HOUR - q0
        if i >= nh:
            return out, taken, left
        x = 0
        if i < 0:
            i = 0
        else:
            x = bisect_left(self.dk[i], e * NK)
        dall = self.dall
        want = m
        while i < nh:
            # fitting nodes going down in hour i (in e's hour: at or after e, which is their
            # first down since t; a node may have come up again before t in that hour)
            here = (reduce(or_, self.db[i][x:], 0) if x else dall[i]) & left
            if here:
                c = here.bit_count()
                if not ordered and c < want:
                    taken |= here
                    left &= ~here
                    want -= c
                else:
                    db = self.db[i]
                    for y in compress(range(x, len(db)), map(here.__and__, db[x:])):
                        b = db[y]
                        if left & b:
                            out.append(b.bit_length() - 1)
                            left &= ~b
                            want -= 1
                            if want == 0:
                                return out, taken, 0
                if not left:
                    break
            i = self._next_down(left, i + 1, nh)
            x = 0
        return out, taken, left

    # -- upkeep ------------------------------------------------------------------------

    def will_change(self, n: int, node: CapacityCalendar, qs: int, qe: int) -> None:
        """Node ``n`` (calendar ``node``) is about to change inside hours [qs, qe]: noted
        here, put into the hours by ``settle`` (before anything reads them). A node's
        changes over overlapping or adjacent hours are put in as one."""
        self._memo = None
        pending = self._pending
        p = pending.get(n)
        if p is not None:
            a, b, _, old = p
            if qs > b + 1 or qe < a - 1:  # apart: the earlier change goes in now
                self.changed(n, node, old, a, b)
                p = None
            elif a <= qs and qe <= b:
                return
        if p is None:
            pending[n] = (qs, qe, node, self.crossings(node, qs * HOUR, (qe + 1) * HOUR))
            return
        # (hours outside [a, b] are as they were before the noted changes)
        if qs < a:
            old = self.crossings(node, qs * HOUR, a * HOUR) + old
            a = qs
        if qe > b:
            old = old + self.crossings(node, (b + 1) * HOUR, (qe + 1) * HOUR)
            b = qe
        pending[n] = (a, b, node, old)

    def settle(self) -> None:
        """Put the noted changes into the hours (node by node, in index order)."""
        pending = self._pending
        for n in sorted(pending):
            a, b, node, old = pending[n]
            self.changed(n, node, old, a, b)
        pending.clear()

    def crossings(self, node: CapacityCalendar, lo: int, hi: int) -> list[tuple[int, bool]]:
        """The node's crossings of ``v`` at instants in [lo, hi): (time, up)."""
        return self._crossings(node, lo, hi)[1]

    def _crossings(self, node: CapacityCalendar, lo: int, hi: int) -> tuple[bool, list[tuple[int, bool]]]:
        """Whether the node had ``v`` free just before ``lo``, and its crossings in [lo, hi)."""
        t, f, v = node._t, node._f, self.v
        k = max(bisect_left(t, lo), 1)
        stop = bisect_left(t, hi, k)
        above = was = f[k - 1] >= v
        out = []
        for x in range(k, stop):
            if (f[x] >= v) is not above:
                above = not above
                out.append((t[x], above))
        return was, out

    def changed(self, n: int, node: CapacityCalendar, old: list[tuple[int, bool]], qs: int, qe: int) -> None:
        """Node ``n`` changed inside hours [qs, qe]; ``old`` were its crossings there."""
        b = self.bits[n]
        self._memo = None
        v, f = self.v, node._f
        was, new = self._crossings(node, qs * HOUR, (qe + 1) * HOUR)  # was: just before hour qs
        q0 = self.q0
        if q0 is None or qs < q0 or qe - q0 >= len(self.sure):
            self._cover(qs, qe)
            q0 = self.q0
        # (a handful of crossings each: list lookups beat building sets)
        for c in old:
            if c in new:
                continue
            tm, up = c
            keys, bb = (self.uk, self.ub) if up else (self.dk, self.db)
            i = tm // HOUR - q0
            ks = keys[i]
            x = bisect_left(ks, tm * NK + n)
            keys[i] = ks[:x] + ks[x + 1 :]
            bs = bb[i]
            bb[i] = bs[:x] + bs[x + 1 :]
        for c in new:
            if c in old:
                continue
            tm, up = c
            keys, bb = (self.uk, self.ub) if up else (self.dk, self.db)
            i = tm // HOUR - q0
            ks = keys[i]
            key = tm * NK + n
            x = bisect_left(ks, key)
            keys[i] = (*ks[:x], key, *ks[x:])
            bs = bb[i]
            bb[i] = (*bs[:x], b, *bs[x:])
        # Outside the hours with a crossing now, the node has no down and is in all of
        # m0, sure and poss or in none: the hours where it crossed are cleared here, the
        # others are left as they are.
        nb = ~b
        dall, flip, part = self.dall, self.flip, self.part
        for tm, up in old:
            i = tm // HOUR - q0
            flip[i] &= nb
            part[i] &= nb
            if not up:
                dall[i] &= nb
        self._node_bits(b, qs, qe, new, was)
        dor = self._dor
        if dor:  # its downs now are in the chunks' ORs (its old ones may stay: a walk renews)
            for tm, up in new:
                if not up:
                    c = tm // HOUR // DOWN_CHUNK
                    if c in dor:
                        dor[c] |= b
        self.head = self.head | b if f[0] >= v else self.head & ~b
        tail = self.tail | b if f[-1] >= v else self.tail & ~b
        if tail != self.tail:  # (a change reaching the far future: never in practice)
            self.tail = tail
            self._ubc.clear()
            self._lvl.clear()
        self._invalidate(qs, qe)

    def _cover(self, qs: int, qe: int) -> None:
        """Make hours qs..qe explicit (before the first: as ``head``; after the last: as ``tail``)."""
        if self.q0 is None:
            self.q0 = qs
        if qs < self.q0:
            more = self.q0 - qs
            h = self.head
            for lst, val in ((self.sure, h), (self.flip, 0), (self.part, 0), (self.dall, 0)):
                lst[:0] = [val] * more
            for lst in (self.uk, self.ub, self.dk, self.db):
                lst[:0] = [()] * more
            self.q0 = qs
        more = qe - self.q0 + 1 - len(self.sure)
        if more > 0:
            h = self.tail
            for lst, val in ((self.sure, h), (self.flip, 0), (self.part, 0), (self.dall, 0)):
                lst.extend([val] * more)
            for lst in (self.uk, self.ub, self.dk, self.db):
                lst.extend([()] * more)

    def _node_bits(self, b: int, qs: int, qe: int, ev: list[tuple[int, bool]], above: bool) -> None:
        """The bits ``b`` (a node's) in hours qs..qe, from its crossings ``ev`` there and
        whether it had ``v`` free just before hour qs (``above``). (Its ``flip`` and ``part``
        bits are clear outside the hours of ``ev``: the caller cleared where it crossed.)"""
        nb = ~b
        q0 = self.q0
        sure, flip, part, dall = self.sure, self.flip, self.part, self.dall
        q, p, ne = qs, 0, len(ev)
        while q <= qe:
            nxt = min(ev[p][0] // HOUR, qe + 1) if p < ne else qe + 1
            if nxt > q:  # hours without a crossing: the node is as it was throughout
                a, z = q - q0, nxt - q0
                if z - a == 1:
                    sure[a] = sure[a] | b if above else sure[a] & nb
                else:
                    sure[a:z] = map(b.__or__ if above else nb.__and__, sure[a:z])
                q = nxt
                continue
            i, first = q - q0, q * HOUR
            m0 = above
            s0, up_later, down_later, down = above, False, False, False
            while p < ne and ev[p][0] < first + HOUR:
                tm, above = ev[p]
                p += 1
                if tm == first:
                    s0 = above
                elif above:
                    up_later = True
                else:
                    down_later = True
                down = down or not above
            whole = s0 and not down_later
            sure[i] = sure[i] | b if whole else sure[i] & nb
            flip[i] = flip[i] | b if m0 != whole else flip[i] & nb
            part[i] = part[i] | b if (s0 or up_later) and not whole else part[i] & nb
            dall[i] = dall[i] | b if down else dall[i] & nb
            q += 1

    def forget_before(self, t: int) -> None:
        """As the nodes' calendars forget: hours before t's go, crossings up to ``t`` fold
        into the state its hour starts from (the calendars now start as they are at t)."""
        q0 = self.q0
        self._memo = None
        if q0 is None:
            return
        drop = t // HOUR - q0
        if drop >= len(self.sure):
            self._ubc.clear()
            self._lvl.clear()
            self._dor.clear()
        else:
            self._invalidate(q0, t // HOUR)
        for chunks in (self._ubc, self._lvl):
            for c in [c for c in chunks if c < t // HOUR // CHUNK]:
                del chunks[c]
        for c in [c for c in self._dor if c < t // HOUR // DOWN_CHUNK]:
            del self._dor[c]
        if drop >= len(self.sure):
            self.head = self.tail
            self.q0 = None
            for lst in (self.sure, self.flip, self.part, self.dall, self.uk, self.ub, self.dk, self.db):
                lst.clear()
            return
        if drop > 0:
            for lst in (self.sure, self.flip, self.part, self.dall, self.uk, self.ub, self.dk, self.db):
                del lst[:drop]
            self.q0 = q0 = q0 + drop
        if drop < 0:
            return
        s = self.at(t)
        key = t * NK + NK - 1
        for keys, bb in ((self.uk, self.ub), (self.dk, self.db)):
            x = bisect_right(keys[0], key)
            keys[0], bb[0] = keys[0][x:], bb[0][x:]
        self.head = s
        # hour 0 now starts at the state at t and has no crossings before t
        sure = s & ~reduce(or_, self.db[0], 0)
        self.sure[0] = sure
        self.flip[0] = s ^ sure
        self.part[0] = reduce(or_, self.ub[0], s) & ~sure
        self.dall[0] = reduce(or_, self.db[0], 0)


def _free_since(cal: CapacityCalendar, v: int, t: int) -> int | None:
    """The earliest r such that ``cal`` has at least ``v`` free throughout [r, t] (None
    when it has not at ``t``)."""
    times, f = cal._t, cal._f
    i = bisect_right(times, t) - 1
    if f[i] < v:
        return None
    while i > 0 and f[i - 1] >= v:
        i -= 1
    return times[i]


_ZERO_ONE = bytes.maketrans(b"01", b"\x00\x01")


def _lowest_bits(mask: int, k: int) -> list[int]:
    """The indices of the ``k`` lowest set bits of ``mask``."""
    if k <= 0 or not mask:
        return []
    bits = bin(mask)[:1:-1].encode().translate(_ZERO_ONE)  # bit 0 first, as bytes 0/1
    return list(islice(compress(count(), bits), k))


class NodeCalendar(CapacityCalendar):
    """Free GPUs of a pool over time, per node; reservations are placed on nodes.

    The flat methods inherited from :class:`CapacityCalendar` describe the pool as a whole (a
    necessary condition for any node placement); ``earliest_fit``, ``choose``, ``reserve``
    and ``release`` follow the node rule (module docstring)."""

    __slots__ = ("_held", "_hours", "_one", "_reach", "_version", "_whole_masks", "_widest_node", "nodes",
                 "per_node")

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
        self._hours: dict[int, _Hours] = {}  # for searches, fits and choices
        # Reservations by (end, width): [(start, nodes)], so a release that does not name
        # its nodes (a snapshot rebuilt without them) finds the ones the reserve took.
        # (Tuples, not lists: of ints only, the garbage collector soon stops walking them.)
        self._held: dict[tuple[int, int], tuple[tuple[int, tuple[int, ...]], ...]] = {}

    @property
    def full_nodes(self) -> int:
        return self.capacity // self.per_node

    def admits(self, width: int) -> bool:
        """Whether ``width`` obeys the node rule here (and fits the pool's full nodes)."""
        if width <= self.per_node:
            return width <= self._widest_node
        k = whole_nodes(width, self.per_node)
        return k is not None and k <= self.full_nodes

    def admissible_widths(self, lo: int, hi: int) -> list[int]:
        """The widths ``w`` with lo <= w < hi that obey the node rule here, ascending."""
        per = self.per_node
        out = list(range(max(lo, 1), min(hi, min(per, self._widest_node) + 1)))
        first = max(2, -(-lo // per))
        out.extend(range(first * per, min(hi, (self.full_nodes + 1) * per), per))
        return out

    def _shape(self, width: int) -> tuple[int, int]:
        """(GPUs per node, nodes) of a grant of ``width``; ValueError if it breaks the rule."""
        if width <= self.per_node:
            return width, 1
        k = whole_nodes(width, self.per_node)
        if k is None:
            raise ValueError(f"{width} GPUs is not a whole number of {self.per_node}-GPU nodes")
        return self.per_node, k

    def build_index(self) -> None:
        """Build the search indexes now (every GPU count's hours, the whole-node masks),
        rather than on the first searches that need them."""
        if not self._one:
            for v in range(1, self.per_node + 1):
                self._hours_of(v)
            self._whole()

    def _hours_of(self, v: int) -> _Hours:
        """The hour index of ``v`` GPUs, up to date (every search, fit and choice asks here)."""
        h = self._hours.get(v)
        if h is None:
            h = self._hours[v] = _Hours(v, self.nodes)
        elif h._pending:
            h.settle()
        return h

    # -- searches ----------------------------------------------------------------------

    def earliest_fit(self, width: int, duration: int, start: int, deadline: int | None = None) -> int | None:
        """Earliest t >= start at which ``width`` GPUs fit on nodes by the node rule over
        [t, t + duration), with t + duration <= deadline; None when there is none."""
        if self._one:
            return self.earliest(width, duration, start, deadline)
        if not self.admits(width):
            return None
        v, k = self._shape(width)
        limit = FAR_FUTURE if deadline is None else deadline - duration
        # The hour index is exact on its own; starting it where the pool's flat count first
        # has the GPUs (a scan of the whole pool's calendar) costs more than it saves.
        return self._hours_of(v).earliest(k, duration, start, limit)

    def choose(self, width: int, start: int, end: int, allowed: int = -1) -> tuple[int, ...] | None:
        """The nodes a grant of ``width`` over [start, end) would take now, or None; only
        nodes of the mask ``allowed`` (bit n: node n) when it is given."""
        if self._one:
            return (0,) if allowed & 1 and self.min_free(start, end) >= width else None
        if not self.admits(width) or end <= start:
            return None
        v, k = self._shape(width)
        d = end - start
        if v == self.per_node:
            # Whole nodes: the lowest-numbered ones surely free over the window's hours,
            # else (a window's end hours are busy elsewhere) the index's soonest-ending runs.
            sure = self._whole().sure(start, d) & allowed
            if sure.bit_count() >= k:
                return tuple(_lowest_bits(sure, k))
            picked = self._hours_of(v).soonest_set(start, end, k, allowed)
            return tuple(_lowest_bits(picked, k)) if picked.bit_count() == k else None
        # One node for a narrow grant. First a node already in use that fits (best fit in
        # GPUs among the first SCAN_NODES nodes, so whole nodes stay whole for whole-node
        # grants); else the highest-numbered node wholly free over the window's hours (whole
        # nodes are taken from the bottom, narrow grants break them from the top); else
        # the best fit among the index's soonest-ending runs.
        best = None
        nodes = self.nodes
        per = self.per_node
        scan = self._hours_of(v).fit(start, end) & SCAN_MASK & allowed  # those of them with v free
        while scan:
            b = scan & -scan
            scan ^= b
            n = b.bit_length() - 1
            room = nodes[n].min_free(start, end)
            if room < per and (best is None or room < best[0]):
                best = (room, n)
                if room == v:
                    break
        if best is not None:
            return (best[1],)
        sure = self._whole().sure(start, d) & allowed
        if sure:
            return (sure.bit_length() - 1,)
        for n in self._hours_of(v).soonest(start, end, BEST_FIT_OF, allowed):
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
        n = self._hours_of(v).fit(start, end).bit_count()
        if n >= k or upto == end:
            return n >= k
        for x in own:
            node = self.nodes[x]
            if node.min_free(start, upto) >= v and node.min_free(start, end) < v:
                n += 1
        return n >= k

    def may_move_earlier(self, width: int, length: int, now: int, start: int, own: tuple[int, ...]) -> bool:
        """Whether a grant of ``width`` over [start, start + length) on nodes ``own`` may
        fit a window of the same length starting in [now, start) once its own GPUs are
        given back, judged without giving them back: False only when no such window fits
        the pool's nodes (True may still find none).

        An earlier window either ends by ``start`` (the grant's own GPUs play no part) or
        covers the instant before it: then each of its nodes is one of ``own`` free (``v``
        GPUs) from the window's start to ``start`` (from there its own come back), or
        another node free throughout, as the index already says. With ``c`` own nodes, the
        window starts no earlier than the latest of the ``c`` own nodes free soonest (and,
        covering that instant, it leaves out the own nodes, reserved whole from ``start``:
        none is counted twice)."""
        last = start - 1
        if last < now:
            return False
        v, k = self._shape(width)
        since = sorted(r for r in (_free_since(self.nodes[n], v, last) for n in own) if r is not None)
        if len(since) >= k:
            return True
        covering = max(now, start - length + 1)  # the first start of a window covering ``last``
        for c in range(len(since), -1, -1):
            frm = max(covering, since[c - 1]) if c else now
            w = width if c == 0 else (k - c) * v  # (c > 0 only for whole nodes: k > 1)
            if self.earliest_fit(w, length, frm, last + length) is not None:
                return True
        return False

    def widest_fit(self, start: int, end: int) -> int:
        """The widest grant the node rule lets fit over the whole of [start, end)."""
        if self._one:
            return self.min_free(start, end)
        whole = self._hours_of(self.per_node).fit(start, end).bit_count()
        if whole:
            return whole * self.per_node
        for v in range(self.per_node - 1, 0, -1):  # one node, partly free
            if self._hours_of(v).fit(start, end):
                return v
        return 0

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
        return self._hours_of(v).reach(k, t)

    def replace(self, start: int, end: int, width: int, nodes: tuple[int, ...], dead: Collection[int],
                now: int) -> tuple[int, ...] | None:
        """Move the reservation of ``width`` GPUs over [start, end) on ``nodes`` off the
        nodes in ``dead`` (lost hardware), from ``max(start, now)`` on: a grant that has not
        started moves whole, one that has keeps its past where it was.

        By the node rule and with the nodes it keeps: a grant on one node moves to another
        alive node; one on whole nodes keeps its alive nodes and takes as many other alive
        whole nodes as it lost. The new nodes are chosen as admission chooses (``choose``,
        among the alive nodes it does not hold) and must be free throughout what is left of
        the window; then the reservation moves in this calendar (the dead nodes' share is
        given back on them) and the nodes it now has are returned, ascending. None when no
        such nodes are free: nothing is touched (the daemon records a breach). ``nodes``
        unchanged when none of them is dead or the window is over."""
        gone = [n for n in nodes if n in dead]
        frm = max(start, now)
        if not gone or frm >= end:
            return tuple(nodes)
        if self._one:
            return None  # the pool's only node is lost
        v, k = self._shape(width)
        bits = [1 << n for n in range(len(self.nodes))]
        blocked = reduce(or_, (bits[n] for n in dead if 0 <= n < len(bits)), 0)
        blocked = reduce(or_, (bits[n] for n in nodes), blocked)
        allowed = ((1 << len(bits)) - 1) & ~blocked
        kept = [n for n in nodes if n not in dead]
        more = self.choose(len(gone) * v if k > 1 else width, frm, end, allowed)
        if more is None:
            return None
        moved = tuple(sorted(kept + list(more)))
        self.release(frm, end, width, tuple(nodes))
        return self.reserve(frm, end, width, moved)

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
        self._held[(end, width)] = self._held.get((end, width), ()) + ((start, nodes),)
        return nodes

    def release(self, start: int, end: int, width: int, nodes: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Give back ``width`` GPUs over [start, end) that an earlier reserve took on
        ``nodes`` (when None: the nodes of the reservation ending at ``end`` with this width
        that began latest at or before ``start``). Returns the nodes."""
        if end <= start:
            return nodes or ()
        key = (end, width)
        held = self._held.get(key, ())
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
            s0, found = held[pos]
            if len(held) > 1:
                self._held[key] = held[:pos] + held[pos + 1 :]
            else:
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
            self._held[(start, width)] = self._held.get((start, width), ()) + ((s0, found),)
        return found

    def forget_before(self, t: int) -> None:
        super().forget_before(t)
        if self._one:
            return
        self._version += 1
        for h in self._hours.values():
            h.settle()  # (from the calendars as they are before they forget)
        for c in self.nodes:
            c.forget_before(t)
        for h in self._hours.values():
            h.forget_before(t)
        if self._whole_masks is not None:
            self._whole_masks.forget_before(t)
        for key in [k for k in self._held if k[0] <= t]:
            del self._held[key]

    # -- internals ---------------------------------------------------------------------

    def _node_add(self, n: int, start: int, end: int, delta: int) -> None:
        self._version += 1
        node = self.nodes[n]
        qs, qe = start // HOUR, end // HOUR
        hours = self._hours
        if hours:
            # Only the GPU counts the change crosses have crossings that change.
            t, f = node._t, node._f
            i = bisect_right(t, start) - 1
            j = bisect_left(t, end, i + 1)
            seg = f[i:j]
            low, high = min(seg), max(seg)
            if delta < 0:
                low += delta
            else:
                high += delta
            cap = node.capacity
            for v, h in hours.items():
                if low < v <= high and v <= cap:
                    h.will_change(n, node, qs, qe)
        node._add(start, end, delta)
        if self._whole_masks is not None:
            self._whole_masks.changed(node, n, start, end, delta > 0)
