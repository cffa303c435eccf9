"""Lending idle GPUs to best-effort work in the simulator (issue 16, docs/simulate.md).

Best-effort jobs never enter the admission calendar and never change it, and a borrower is
preempted the instant a guaranteed job needs its GPUs. So the guaranteed schedule does not
depend on them at all, and a lending replay is two passes:

1. the guaranteed jobs alone, through the policy (the replay of the trace with the
   best-effort rows removed: start for start the same, because it *is* that replay);
2. :func:`lend`: the best-effort queue run on the GPUs that schedule leaves idle, instant by
   instant, knowing only the present (which GPUs no running guaranteed job uses now; never
   a future start, which a daemon could not know for a grant that is pulled forward).

At one instant: ends (guaranteed and best-effort) free GPUs; each guaranteed start takes its
nodes, preempting on each the borrowers it needs gone, **the most recently started first**
(least work lost without checkpoints; ``core/lending.py`` reclaims in the same order);
submissions join the queue; then queued jobs start on idle GPUs.

**Queue order** (``core/bequeue.order``'s rule, kept incrementally: calling it on the whole
queue at every instant would cost a replay more than all else). Teams by best-effort
GPU-seconds charged in the last 24 hours (``USAGE_WINDOW_S``, as ``runtime/lending.py``
counts them: each attempt's held time, charged when it ends, preempted time included), least
first, ties by team name; once a team's job starts, its usage counts that job's GPUs, so
teams of equal usage take turns. Within a team FIFO by submission; a preempted job keeps
its place. A job that fits nowhere now does not hold back the jobs behind it (best-effort
work has no promise to keep) and, unlike in ``bequeue.order``, does not count towards its
team's turn.

**Placement.** By the node rule of every policy (``sim/placement.py``): a job no wider than a
node on one node, best fit (the fullest node with room; ties by lower index); a wider one on
whole idle nodes (its width a multiple of the node size). A width no pool can ever hold is
refused (``wider_than_pool`` or ``not_whole_nodes``).

**Work and checkpoints.** A best-effort job needs the work its guaranteed twin would do
(``TraceJob.run``). Preempted after running ``r`` seconds since its last (re)start, it keeps
``r // C * C`` seconds with ``checkpoint_interval`` ``C`` (its last periodic checkpoint),
and nothing without (``C = 0``); the rest is lost. Checkpoints and restarts cost no time.
The simulator reclaims at once, with no grace and no minimum run before a known window
(the daemon has both): exact starts for guaranteed jobs are what it measures.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from heapq import heapify, heappop, heappush, heapreplace

from cellsched.core.bequeue import USAGE_WINDOW_S
from cellsched.sim.engine import Engine
from cellsched.sim.placement import NodeMap
from cellsched.sim.trace import TraceJob


@dataclass
class Lent:
    """What the best-effort jobs did. Per job (index into ``jobs``): ``first_start`` and
    ``done_at`` (-1: never), ``attempts``; ``segments`` every run as (job, start, stop,
    nodes, completed). GPU-seconds: ``held`` (every second a borrower held GPUs),
    ``completed`` (work of the jobs that finished), ``lost`` (work undone by preemption)."""

    jobs: list[TraceJob]
    checkpoint_interval: int
    first_start: list[int]
    done_at: list[int]
    attempts: list[int]
    refused: dict[int, str] = field(default_factory=dict)
    segments: list[tuple[int, int, int, tuple[int, ...], bool]] = field(default_factory=list)
    held: int = 0
    completed: int = 0
    lost: int = 0
    preemptions: int = 0
    seconds: float = 0.0


def lend(engine: Engine, jobs: list[TraceJob], nodes: NodeMap, checkpoint_interval: int = 0) -> Lent:
    """Run best-effort ``jobs`` (submission order) on the GPUs the finished guaranteed replay
    ``engine`` leaves idle on ``nodes``; see the module docstring for the rules."""
    t0 = time.perf_counter()
    C = checkpoint_interval
    m = len(jobs)
    out = Lent(jobs, C, [-1] * m, [-1] * m, [0] * m)
    size = list(nodes.sizes)
    free = list(size)  # GPUs neither a guaranteed job nor a borrower holds, per node
    on: list[list[int]] = [[] for _ in size]  # borrowers per node
    pools = [(first, first + n, per) for _, first, n, per in nodes.pools]
    pool_of = [per for first, hi, per in pools for _ in range(first, hi)]

    def widths(w: int, placed: tuple[int, ...]) -> list[tuple[int, int]]:
        return [(g, min(w, pool_of[g])) for g in placed]

    # The guaranteed schedule as two sorted event lists: (time, seq).
    gj = engine.jobs
    g_start = sorted((engine.start[j.seq], j.seq) for j in gj if engine.start[j.seq] >= 0)
    g_end = sorted((engine.end[j.seq], j.seq) for j in gj if engine.start[j.seq] >= 0)
    g_on = {j.seq: widths(j.gpus, engine.placed[j.seq]) for j in gj if engine.start[j.seq] >= 0}

    remaining = [j.run for j in jobs]
    started = [-1] * m  # start of the running attempt, -1 when not running
    where: list[tuple[int, ...]] = [()] * m
    ends: list[tuple[int, int, int]] = []  # (time, job, attempt)
    queue: dict[str, dict[int, list[int]]] = {}  # team -> width -> heap of job indices
    charged: dict[str, deque[tuple[int, int]]] = {}  # team -> (time, GPU-seconds) in the window
    usage: dict[str, int] = {}
    segments = out.segments
    first_start, done_at, attempts = out.first_start, out.done_at, out.attempts

    queued = [0]  # jobs in the queue
    by_width: dict[int, int] = {}  # queued jobs per width
    by_team: dict[str, int] = {}  # queued jobs per team

    def enqueue(i: int) -> None:
        j = jobs[i]
        queued[0] += 1
        by_width[j.gpus] = by_width.get(j.gpus, 0) + 1
        by_team[j.team] = by_team.get(j.team, 0) + 1
        heappush(queue.setdefault(j.team, {}).setdefault(j.gpus, []), i)

    def stop(i: int, t: int, completed: bool) -> None:
        j = jobs[i]
        r = t - started[i]
        out.held += r * j.gpus
        for g, w in widths(j.gpus, where[i]):
            free[g] += w
            on[g].remove(i)
        charged.setdefault(j.team, deque()).append((t, r * j.gpus))
        usage[j.team] = usage.get(j.team, 0) + r * j.gpus
        segments.append((i, started[i], t, where[i], completed))
        started[i] = -1
        if completed:
            done_at[i] = t
            out.completed += j.run * j.gpus
            return
        kept = r // C * C if C else 0
        out.lost += (r - kept) * j.gpus
        out.preemptions += 1
        remaining[i] -= kept
        enqueue(i)

    def place(w: int) -> tuple[int, ...] | None:
        for first, hi, per in pools:
            if w <= per:
                most = max(free[first:hi])
                for k in range(w, most + 1):  # best fit: the fullest node with room
                    try:
                        return (free.index(k, first, hi),)
                    except ValueError:
                        continue
            elif w % per == 0:
                k, picked, g = w // per, [], first
                while len(picked) < k:
                    try:
                        g = free.index(per, g, hi)
                    except ValueError:
                        break
                    picked.append(g)
                    g += 1
                if len(picked) == k:
                    return tuple(picked)
        return None

    def team_usage(team: str, t: int) -> int:
        q = charged.get(team)
        while q and q[0][0] < t - USAGE_WINDOW_S:
            usage[team] -= q.popleft()[1]
        return usage.get(team, 0)

    def dispatch(t: int) -> None:
        order = None
        while True:
            # What fits now: per pool, the most idle GPUs on one node and the idle whole nodes.
            caps = [(per, max(free[first:hi]), free[first:hi].count(per)) for first, hi, per in pools]
            fit = [w for w, c in by_width.items() if c and any(
                w <= mx if w <= per else (w % per == 0 and w // per <= whole) for per, mx, whole in caps)]
            if not fit:
                return
            if order is None:  # (usage, team): least first, ties by name
                order = [(team_usage(team, t), team) for team, c in by_team.items() if c]
                heapify(order)
            pick = None
            while order:
                used, team = order[0]
                by = queue[team]
                for w in fit:
                    heap = by.get(w)
                    if heap and (pick is None or heap[0] < pick[0]):
                        pick = (heap[0], w)
                if pick is not None:
                    break
                heappop(order)  # nothing of this team fits now, nor will at this instant
            assert pick is not None, "a queued width fits but no team has it"
            i, w = pick
            heappop(queue[team][w])
            queued[0] -= 1
            by_width[w] -= 1
            by_team[team] -= 1
            if by_team[team]:  # its pick counts its GPUs: teams of equal usage take turns
                heapreplace(order, (used + max(1, w), team))
            else:
                heappop(order)
            placed = place(w)
            assert placed is not None, "a width that fits found no nodes"
            for g, pw in widths(w, placed):
                free[g] -= pw
                on[g].append(i)
            started[i], where[i] = t, placed
            attempts[i] += 1
            if first_start[i] < 0:
                first_start[i] = t
            heappush(ends, (t + remaining[i], i, attempts[i]))

    nxt = a = b = 0
    ns, ne = len(g_start), len(g_end)
    while nxt < m or a < ns or b < ne or ends:
        t = min(jobs[nxt].submit if nxt < m else 1 << 62, g_start[a][0] if a < ns else 1 << 62,
                g_end[b][0] if b < ne else 1 << 62, ends[0][0] if ends else 1 << 62)
        while b < ne and g_end[b][0] == t:
            for g, w in g_on[g_end[b][1]]:
                free[g] += w
            b += 1
        while ends and ends[0][0] == t:
            _, i, att = heappop(ends)
            if started[i] >= 0 and att == attempts[i]:
                stop(i, t, True)
        while a < ns and g_start[a][0] == t:
            for g, w in g_on[g_start[a][1]]:
                while free[g] < w:  # preempt the most recently started borrower here
                    if not on[g]:
                        raise AssertionError(f"guaranteed job over-commits node {g} at t={t}")
                    stop(max(on[g], key=lambda i: (started[i], i)), t, False)
                free[g] -= w
            a += 1
        while nxt < m and jobs[nxt].submit == t:
            j = jobs[nxt]
            if nodes.admissible(j.gpus):
                enqueue(nxt)
            else:
                out.refused[nxt] = "wider_than_pool" if j.gpus > max(
                    sum(nodes.sizes[f:f + n]) for _, f, n, _ in nodes.pools) else "not_whole_nodes"
            nxt += 1
        if queued[0]:
            dispatch(t)
    for i in range(m):
        if done_at[i] < 0 and i not in out.refused:
            raise AssertionError(f"best-effort job {jobs[i].job_id} never finished")
    out.seconds = time.perf_counter() - t0
    return out
