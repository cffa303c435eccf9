"""In-memory twin of the Ray executor, on a virtual clock.

Same Protocol and same outcome rules as :class:`~cellsched.executor.ray_adapter.RayExecutor`,
but jobs are scripted (:class:`Behaviour`) and time only moves when the caller says so
(``advance``). Everything is deterministic: no wall clock, no threads, no randomness, and
ties are broken by creation order.

Timing model (what the twin promises, in virtual seconds):

- a reservation is placed as soon as capacity allows (first fit in creation order, like Ray,
  which lets a small later group pass a big pending one): it is ``placed`` (GPUs held, rank
  workers starting) from then, and ``ready`` ``ready_delay`` later;
- a gang launched at ``now`` starts at ``now``; it ends ``duration`` later, or earlier if
  stopped: SIGTERM makes a cooperative job exit ``term_delay`` later with ``term_exit_code``
  (a SIGTERM-ignoring one keeps running), SIGKILL ends it at once with -9;
- when a rank fails (non-zero exit), its peers get SIGTERM at that instant and SIGKILL
  ``peer_grace`` later (as the Ray rank workers do);
- ``lose_bundles`` loses the ranks on those bundles (exit code ``None``) and kills their peers;
- results stay until ``ack``ed (``poll`` shows them every time); ``release`` returns the
  un-acknowledged ones and forgets the rest.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Mapping, Sequence

from .base import (
    GangResult,
    GangSpec,
    NotReady,
    ReservationConflict,
    ReservationState,
    ResultKey,
    RunningGang,
    UnknownReservation,
    check_gang,
    check_name,
    classify,
    round_seconds,
)

SIGTERM_CODE = -int(signal.SIGTERM)
SIGKILL_CODE = -int(signal.SIGKILL)


@dataclass(frozen=True)
class Behaviour:
    """How a scripted job behaves. ``duration=None`` runs until stopped.

    When it ends on its own, every rank exits 0, except ``failing_rank`` which exits
    ``exit_code`` (so ``exit_code != 0`` scripts a failure of one rank).
    """

    duration: float | None = None
    exit_code: int = 0
    failing_rank: int = 0
    ignores_sigterm: bool = False
    term_delay: float = 0.0
    term_exit_code: int = SIGTERM_CODE


Script = Callable[[GangSpec], Behaviour] | Mapping[str, Behaviour]
"""A callable (sees the whole spec, e.g. to fail attempt 0 only) or a table by job name."""

_Cause = Literal["natural", "peer", "executor", "lost", "lost-peer"]


@dataclass
class _Rank:
    end: float | None = None  # None: still running with no planned end
    code: int | None = None
    cause: _Cause = "natural"

    def running_at(self, t: float) -> bool:
        return self.end is None or self.end > t


@dataclass
class _Gang:
    spec: GangSpec
    behaviour: Behaviour
    started_at: float
    gpu_ids: tuple[str, ...]
    ranks: list[_Rank]
    acked: bool = False  # the caller has stored the result: never shown again

    def ended_by(self, t: float) -> bool:
        return all(r.end is not None and r.end <= t for r in self.ranks)


@dataclass
class _Reservation:
    name: str
    width: int
    cpus_per_gpu: int
    seq: int
    placed_at: float | None = None
    gpu_ids: tuple[str, ...] = ()
    lost: set[int] = field(default_factory=set)
    back_at: float | None = None  # when lost bundles are re-placed (None: until heal())
    gangs: dict[tuple[str, int], _Gang] = field(default_factory=dict)


class MemoryExecutor:
    """The executor Protocol over a scripted, virtual-clock fake cluster.

    ``capacity`` is the fake cluster's GPU count (``None`` = unbounded); a reservation wider
    than what is free stays ``pending`` until enough is released.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        capacity: int | None = None,
        now: float = 0.0,
        prefix: str = "cellsched/",
        ready_delay: float = 0.0,
        peer_grace: float = 3.0,
    ) -> None:
        self.now = now
        self.prefix = prefix
        self.capacity = capacity
        self.ready_delay = ready_delay
        self.peer_grace = peer_grace
        self._script = script
        self._resv: dict[str, _Reservation] = {}
        self._seq = 0

    # -- clock and fault injection -------------------------------------------------------

    def advance(self, now: float) -> None:
        """Move the virtual clock to ``now`` (never backwards)."""
        if now < self.now:
            raise ValueError(f"time goes forward: {now} < {self.now}")
        self.now = now
        self._place()

    def lose_bundles(self, name: str, bundles: Sequence[int], back_at: float | None = None) -> None:
        """Simulate losing the node(s) under ``bundles`` at ``now``.

        Ranks on them end with exit code ``None`` (their gangs are ``lost``), their peers are
        SIGKILLed. The reservation is ``rescheduling`` until ``back_at`` (or ``heal``).
        """
        r = self._get(name)
        lost = set(bundles)
        t = self.now
        for g in r.gangs.values():
            hit = [i for i, b in enumerate(g.spec.bundles) if b in lost and g.ranks[i].running_at(t)]
            if not hit:
                continue
            for i, rank in enumerate(g.ranks):
                if i in hit:
                    g.ranks[i] = _Rank(t, None, "lost")
                elif rank.running_at(t):
                    g.ranks[i] = _Rank(t, SIGKILL_CODE, "lost-peer")
        r.lost |= lost
        r.back_at = back_at

    def heal(self, name: str) -> None:
        """Lost bundles of ``name`` are placed again (the group is ``ready`` again)."""
        r = self._get(name)
        r.lost.clear()
        r.back_at = None

    # -- Protocol ------------------------------------------------------------------------

    def reserve(self, name: str, width: int, cpus_per_gpu: int = 0) -> None:
        check_name(name, self.prefix)
        if width < 1:
            raise ValueError(f"{name}: width must be >= 1, got {width}")
        old = self._resv.get(name)
        if old is not None:
            if (old.width, old.cpus_per_gpu) != (width, cpus_per_gpu):
                raise ReservationConflict(
                    name, f"exists with width {old.width}, cpus_per_gpu {old.cpus_per_gpu}"
                )
            return
        self._seq += 1
        self._resv[name] = _Reservation(name, width, cpus_per_gpu, self._seq)
        self._place()

    def reservation_state(self, name: str) -> ReservationState:
        r = self._resv.get(name)
        if r is None:
            return "missing"
        if r.placed_at is None:
            return "pending"
        if r.lost:
            if r.back_at is not None and self.now >= r.back_at:
                self.heal(name)
            else:
                return "rescheduling"
        if self.now < r.placed_at + self.ready_delay:
            return "placed"  # GPUs held, rank workers still starting
        return "ready"

    def reservations(self) -> list[str]:
        return sorted(self._resv)

    def launch(self, gang: GangSpec) -> None:
        r = self._get(gang.reservation)
        if gang.key in r.gangs:
            return
        state = self.reservation_state(r.name)
        if state != "ready":
            raise NotReady(r.name, f"cannot launch {gang.job}: group is {state}")
        busy = {
            b
            for g in r.gangs.values()
            for b, rank in zip(g.spec.bundles, g.ranks)
            if rank.running_at(self.now)
        }
        check_gang(gang, r.width, busy)
        b = self._behaviour(gang)
        t = self.now
        ranks = [_Rank() for _ in gang.bundles]
        if b.duration is not None:
            e = t + b.duration
            for i in range(len(ranks)):
                ranks[i] = _Rank(e, 0, "natural")
            if b.exit_code != 0:
                fr = min(b.failing_rank, len(ranks) - 1)
                ranks[fr] = _Rank(e, b.exit_code, "natural")
                for i in range(len(ranks)):
                    if i != fr:
                        ranks[i] = self._peer_stop(b, e)
        ids = tuple(r.gpu_ids[i] for i in gang.bundles)
        r.gangs[gang.key] = _Gang(gang, b, t, ids, ranks)

    def running(self, name: str) -> list[RunningGang]:
        r = self._resv.get(name)
        if r is None:
            return []
        return [
            RunningGang(g.spec.job, g.spec.attempt, tuple(g.spec.bundles), g.started_at)
            for k, g in sorted(r.gangs.items())
            if not g.ended_by(self.now)
        ]

    def poll(self, name: str) -> list[GangResult]:
        r = self._resv.get(name)
        if r is None:
            return []
        return [
            self._result(r.name, g)
            for _, g in sorted(r.gangs.items())
            if not g.acked and g.ended_by(self.now)
        ]

    def ack(self, name: str, keys: Iterable[ResultKey]) -> None:
        r = self._resv.get(name)
        if r is None:
            return
        for k in keys:
            g = r.gangs.get((k[0], k[1]))
            if g is not None and g.ended_by(self.now):
                g.acked = True

    def terminate(self, name: str, job: str | None = None) -> None:
        self._signal(name, job, signal.SIGTERM)

    def kill(self, name: str, job: str | None = None) -> None:
        self._signal(name, job, signal.SIGKILL)

    def release(self, name: str) -> list[GangResult]:
        if name not in self._resv:
            return []
        self.kill(name)
        out = self.poll(name)
        del self._resv[name]
        self._place()
        return out

    # -- internals -----------------------------------------------------------------------

    def _get(self, name: str) -> _Reservation:
        r = self._resv.get(name)
        if r is None:
            raise UnknownReservation(name, "no such reservation")
        return r

    def _behaviour(self, gang: GangSpec) -> Behaviour:
        s = self._script
        if s is None:
            return Behaviour()
        if callable(s):
            return s(gang)
        return s.get(gang.job, Behaviour())

    def _peer_stop(self, b: Behaviour, t: float) -> _Rank:
        """A peer of a failed rank: SIGTERM at t, SIGKILL ``peer_grace`` later."""
        if b.ignores_sigterm or b.term_delay >= self.peer_grace:
            return _Rank(t + self.peer_grace, SIGKILL_CODE, "peer")
        return _Rank(t + b.term_delay, b.term_exit_code, "peer")

    def _signal(self, name: str, job: str | None, sig: signal.Signals) -> None:
        r = self._resv.get(name)
        if r is None:
            return
        t = self.now
        for g in r.gangs.values():
            if g.ended_by(t) or (job is not None and g.spec.job != job):
                continue
            b = g.behaviour
            for i, rank in enumerate(g.ranks):
                if not rank.running_at(t):
                    continue
                if sig == signal.SIGKILL:
                    g.ranks[i] = _Rank(t, SIGKILL_CODE, "executor")
                elif not b.ignores_sigterm:
                    end = t + b.term_delay
                    if rank.end is None or end < rank.end:
                        g.ranks[i] = _Rank(end, b.term_exit_code, "executor")

    def _place(self) -> None:
        """Place pending reservations, first fit in creation order, lowest GPU ids first."""
        used = {gid for r in self._resv.values() for gid in r.gpu_ids}
        for r in sorted(self._resv.values(), key=lambda r: r.seq):
            if r.placed_at is not None:
                continue
            if self.capacity is None:
                start = max((int(g) for g in used), default=-1) + 1
                free = [str(i) for i in range(start, start + r.width)]
            else:
                free = [str(i) for i in range(self.capacity) if str(i) not in used][: r.width]
            if len(free) < r.width:
                continue
            r.placed_at = self.now
            r.gpu_ids = tuple(free)
            used |= set(free)

    def _result(self, name: str, g: _Gang) -> GangResult:
        ends = [rk.end for rk in g.ranks]
        assert all(e is not None for e in ends)
        codes = tuple(rk.code for rk in g.ranks)
        causes = [rk.cause for rk in g.ranks]
        lost = "lost" in causes
        natural_failure = any(rk.cause == "natural" and rk.code != 0 for rk in g.ranks)
        outcome = classify(codes, "executor" in causes, natural_failure, lost)
        detail = ""
        if lost:
            detail = "lost ranks " + ",".join(str(i) for i, c in enumerate(causes) if c == "lost")
        return GangResult(
            reservation=name,
            job=g.spec.job,
            attempt=g.spec.attempt,
            outcome=outcome,
            exit_codes=codes,
            started_at=g.started_at,
            ended_at=max(e for e in ends if e is not None),
            gpu_seconds=round_seconds(sum(e - g.started_at for e in ends if e is not None)),
            gpu_ids=g.gpu_ids,
            detail=detail,
        )
