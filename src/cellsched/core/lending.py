"""Lending idle GPUs to best-effort work without moving any window (docs/lending.md).

Pure: no I/O, time passed in. The daemon calls :func:`plan` every tick with what the
calendar holds on each node and what borrowers run there; it answers which borrowers to
reclaim now (SIGTERM: their grace runs) and which queued tasks to start where.

**What is lendable.** A node's GPUs that no window holds: at instant ``t`` node ``n`` has
``size − held(n, t)`` GPUs no grant's window covers (``held`` sums the GPUs every live
grant assigned to ``n`` takes there while ``start ≤ t < end``). A borrower of ``g`` GPUs on
``n`` may start at ``now`` if ``g`` GPUs stay unheld (by windows and by the borrowers
already there) for the whole of ``[now, now + grace + min_run_s)``: it gets at least
``min_run_s`` of work before its grace could begin.

**When it is taken back.** A borrower must be gone before the calendar needs its GPUs:
if, at some ``t`` in ``[now, now + grace + lead]``, the windows of ``n`` plus the borrowers of
``n`` need more than ``size``, the borrowers of ``n`` are reclaimed now, the most recently
started first (least work lost), until what stays fits. A window known in advance is thus
reclaimed for at ``start − grace − lead`` (``lead``: how late the daemon may act, two
ticks), and it starts exactly when it would without lending.
A window that appears inside ``[now, now + grace]`` (a waiting grant pulled forward onto
``n``, a lost node's grant moved there) reclaims at once: lending never blocks a
pull-forward; the pulled-forward grant's group may wait for the grace, which the daemon
counts as a lending delay.

**Who goes first.** The caller passes the queue in fair-share order (``core.bequeue``);
a task that fits nowhere now does not hold back the tasks behind it (best-effort work
has no promise to keep), but its own submission's ``max_gpus`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

NodeKey = tuple[str, int]
"""(pool, calendar node index)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """GPUs a window holds on one node: ``gpus`` from ``start`` to ``end``."""

    node: NodeKey
    gpus: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Borrow:
    """A running borrower: task ``task`` holds ``gpus`` on ``node`` since ``started_at``
    (``preempting``: its SIGTERM has been sent, it is leaving)."""

    task: int
    node: NodeKey
    gpus: int
    started_at: int
    preempting: bool = False


@dataclass(frozen=True, slots=True)
class Want:
    """A queued task that wants ``gpus`` GPUs of pool ``pool`` on one node. ``group`` is its
    submission, which may hold at most ``cap`` GPUs at once (``held``: what it holds now)."""

    task: int
    pool: str
    gpus: int
    group: int
    cap: int


@dataclass(frozen=True, slots=True)
class Plan:
    reclaim: tuple[int, ...]  # tasks to SIGTERM now
    start: tuple[tuple[int, NodeKey], ...]  # (task, node) to start now


def holds_of(pool: str, nodes: Sequence[int], width: int, per_node: int, start: int, end: int) -> list[Hold]:
    """The holds of one grant: a grant no wider than a node takes ``width`` GPUs of its one
    node; a wider one takes each of its whole nodes."""
    each = width if len(nodes) <= 1 else per_node
    return [Hold((pool, n), each, start, end) for n in nodes]


def _peak(holds: Iterable[Hold], lo: int, hi: int) -> int:
    """Most GPUs ``holds`` (of one node) take at any instant of ``[lo, hi)``."""
    events: list[tuple[int, int]] = []
    for h in holds:
        a, b = max(h.start, lo), min(h.end, hi)
        if a < b:
            events.append((a, h.gpus))
            events.append((b, -h.gpus))
    events.sort(key=lambda e: (e[0], e[1]))  # ends before starts at one instant
    peak = cur = 0
    for _, d in events:
        cur += d
        peak = max(peak, cur)
    return peak


def plan(
    now: int,
    sizes: Mapping[NodeKey, int],
    holds: Iterable[Hold],
    borrows: Iterable[Borrow],
    queue: Sequence[Want],
    held_by_group: Mapping[int, int],
    grace: int,
    min_run_s: int = 60,
    dead: Iterable[NodeKey] = (),
    lead: int = 0,
) -> Plan:
    """Reclaims and starts for this instant (see the module docstring). ``sizes``: GPUs of
    every calendar node that may lend; ``dead``: nodes that lend nothing (lost); ``lead``:
    how late the caller may act on a decision (two of its ticks: the reclaim may be seen a
    tick late, the release after the grace another), so reclaims start that much earlier."""
    by_node: dict[NodeKey, list[Hold]] = {}
    for h in holds:
        by_node.setdefault(h.node, []).append(h)
    lent: dict[NodeKey, list[Borrow]] = {}
    for b in borrows:
        lent.setdefault(b.node, []).append(b)
    gone = set(dead)
    reclaim: list[int] = []
    # 1. Take back what the calendar needs within the grace.
    for node, bs in lent.items():
        size = 0 if node in gone else sizes.get(node, 0)
        need = _peak(by_node.get(node, ()), now, now + grace + lead + 1)
        staying = sum(b.gpus for b in bs if not b.preempting)
        leaving = sum(b.gpus for b in bs if b.preempting)
        over = need + staying + leaving - size
        if over <= 0:
            continue
        # Those already leaving free their GPUs within the grace; then the newest go first.
        over -= leaving
        for b in sorted((b for b in bs if not b.preempting), key=lambda b: (-b.started_at, -b.task)):
            if over <= 0:
                break
            reclaim.append(b.task)
            over -= b.gpus
    # 2. Start queued tasks where GPUs stay unheld long enough.
    taken = set(reclaim)
    used = {n: sum(b.gpus for b in bs) for n, bs in lent.items()}  # leaving ones still hold theirs
    room: dict[NodeKey, int] = {}
    horizon = now + grace + lead + min_run_s
    for node, size in sizes.items():
        if node in gone:
            continue
        room[node] = size - _peak(by_node.get(node, ()), now, horizon) - used.get(node, 0)
    group_held = dict(held_by_group)
    starts: list[tuple[int, NodeKey]] = []
    for w in queue:
        if group_held.get(w.group, 0) + w.gpus > w.cap:
            continue
        # Best fit: the node of the pool with the least room that still fits (keeps
        # bigger holes for wider tasks); ties by node.
        best: NodeKey | None = None
        for node, r in room.items():
            if node[0] == w.pool and r >= w.gpus and (best is None or (r, node) < (room[best], best)):
                best = node
        if best is None:
            continue
        room[best] -= w.gpus
        group_held[w.group] = group_held.get(w.group, 0) + w.gpus
        starts.append((w.task, best))
    assert not (taken & {t for t, _ in starts})
    return Plan(tuple(reclaim), tuple(starts))


def free_until(node: NodeKey, size: int, holds: Iterable[Hold], lent: int, now: int) -> int | None:
    """The first instant from ``now`` on at which the windows of ``node`` and ``lent``
    borrowed GPUs no longer fit in ``size`` (None: never, as the calendar stands). A
    borrower's own deadline: its ranks stop it there even when no daemon runs."""
    events: list[tuple[int, int]] = []
    for h in holds:
        if h.node == node and h.end > now:
            events.append((max(h.start, now), h.gpus))
            events.append((h.end, -h.gpus))
    events.sort(key=lambda e: (e[0], e[1]))
    cur = lent
    for t, d in events:
        cur += d
        if cur > size:
            return t
    return None
