"""The order in which queued best-effort tasks get idle GPUs: fair share across teams by
recent best-effort usage, FIFO within a team (docs/lending.md, "Who goes first").

Pure: plain data in, a list out; no I/O, no clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

USAGE_WINDOW_S = 24 * 3600  # "recent": what a team was charged for best-effort work this long back


@dataclass(frozen=True)
class QueuedTask:
    """A queued best-effort task as the order sees it: its ``id``, its ``team``, the ``gpus``
    it needs, when it was first queued (``queued_at``: a preempted task keeps it, so it keeps
    its place), its submission (``be_id``) and ``seq``, its place inside the submission (job
    order in the spec, then index: the task rows' creation order)."""

    id: int
    team: str
    gpus: int
    queued_at: int
    be_id: int
    seq: int


def order(tasks: Iterable[QueuedTask], usage_by_team: Mapping[str, int]) -> list[QueuedTask]:
    """Every task of ``tasks``, once, in the order they should get idle GPUs.

    ``usage_by_team``: each team's recent best-effort usage, the GPU-seconds it was charged
    for best-effort work in the last :data:`USAGE_WINDOW_S` seconds (a team not in it: 0).

    - **Across teams, fair share**: the next task is the first waiting task of the team with
      the least usage; ties go to the team whose name sorts first.
    - **Round-robin**: once a team's task is picked, the team's usage counts that task's
      GPUs (one GPU-second per GPU), so teams with equal usage take turns, and a team with
      less recent usage goes first until the tasks picked make up the difference.
    - **Within a team, FIFO**: by ``(queued_at, be_id, seq)``: the oldest submission's tasks
      first, each submission's tasks in the order its spec lists them; ``id`` breaks what is
      left, so the order never depends on the input's order.
    """
    queues: dict[str, list[QueuedTask]] = {}
    for t in tasks:
        queues.setdefault(t.team, []).append(t)
    for q in queues.values():
        q.sort(key=lambda t: (t.queued_at, t.be_id, t.seq, t.id), reverse=True)  # pop() takes the first
    heap = [(max(0, int(usage_by_team.get(team, 0))), team) for team in queues]
    heapq.heapify(heap)
    out: list[QueuedTask] = []
    while heap:
        used, team = heapq.heappop(heap)
        q = queues[team]
        t = q.pop()
        out.append(t)
        if q:
            heapq.heappush(heap, (used + max(1, t.gpus), team))
    return out
