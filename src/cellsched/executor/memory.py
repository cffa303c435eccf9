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
- a gang's window is enforced by its ranks: SIGTERM at ``term_at`` (a cooperative job exits
  ``term_delay`` later), SIGKILL at ``kill_at``, whoever is watching;
- ``fence(epoch)`` raises the epoch the ranks of every live reservation remember; commands
  from an executor with an older ``epoch`` raise ``Fenced`` (``connect`` gives a second
  executor on the same fake cluster, as a second daemon would have);
- ``crash_cluster`` models a local Ray that died with the daemon: every reservation is gone,
  but the gangs that were running go on as orphans that nobody can see or stop; an orphan's
  ``attempt_fate`` is ``unknown`` while it lives and ``dead`` afterwards;
- ``overlaps`` lists every time two attempts of one (reservation, job) ran at once;
- ``nodes`` (default: one node holding ``capacity`` GPUs) is what ``nodes()`` reports; a
  reservation with a ``Placement`` is placed only when every node it names is alive, matches
  its label selector and resources, and has room for its bundles there (besides the overall
  ``capacity``); otherwise it stays ``pending``, as on Ray;
- ``lend(owner, bundles, name)`` at ``now`` makes ``name`` a reservation of its own on those
  bundles' GPUs, ``placed`` at ``now`` and ``ready`` ``ready_delay`` later (its rank workers
  start), ``rescheduling`` while its owner is (losing an owner's lent bundle loses the
  borrower's ranks there); its gangs follow their ``Behaviour`` like any. ``release(name)``
  gives the bundles back at that instant: the owner is ``placed`` for ``ready_delay`` (its
  rank workers on them start again; its running gangs go on), then ``ready``;
- there are no log files: ``pull_logs`` returns 0;
- results stay until ``ack``ed (``poll`` shows them every time); ``release`` returns the
  un-acknowledged ones and forgets the rest.
"""

from __future__ import annotations

import copy
import signal
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Callable, Iterable, Literal, Mapping, NamedTuple, Sequence

from . import _codepack
from .base import (
    CODE_FAILED_CODE,
    REFUSED_CODE,
    Fate,
    Fenced,
    GangResult,
    GangSpec,
    InvalidGang,
    NodeInfo,
    NotReady,
    Placement,
    ReservationConflict,
    ReservationState,
    ResultKey,
    RunningGang,
    UnknownReservation,
    check_bundles,
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

    @property
    def last_end(self) -> float | None:
        """When the last rank ends (None: not planned yet, maybe never)."""
        ends = [r.end for r in self.ranks]
        return None if None in ends else max(e for e in ends if e is not None)


class Overlap(NamedTuple):
    """Two attempts of one job in one reservation running at once (from ``start`` on)."""

    reservation: str
    job: str
    first: int  # attempt that started first
    second: int
    start: float


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
    epoch: int = 0  # the newest epoch its ranks have seen
    placement: Placement | None = None
    # When its rank workers last (re)started, if not at ``placed_at``: bundles given back
    # by a borrower (``ready`` again ``ready_delay`` after it).
    ranks_from: float | None = None
    lent: dict[int, str] = field(default_factory=dict)  # an owner's bundle -> its borrower
    lender: str | None = None  # a borrower: the group whose bundles it has
    lent_from: tuple[int, ...] = ()  # a borrower: its owner's bundle of each of its bundles


@dataclass
class _World:
    """The fake cluster, shared by every executor ``connect``ed to it."""

    now: float
    resv: dict[str, _Reservation] = field(default_factory=dict)
    seq: int = 0
    orphans: list[tuple[str, _Gang]] = field(default_factory=list)  # outlived a crash
    history: list[tuple[str, _Gang]] = field(default_factory=list)  # every gang launched
    # (reservation, job, attempt) that attempt_fate declared dead: like the lock files on
    # Ray, they make a later launch of that attempt refuse to run (exit code 125)
    declared_dead: set[tuple[str, str, int]] = field(default_factory=set)


class MemoryExecutor:
    """The executor Protocol over a scripted, virtual-clock fake cluster.

    ``capacity`` is the fake cluster's GPU count (``None`` = unbounded); a reservation wider
    than what is free stays ``pending`` until enough is released. ``nodes``: the fake
    cluster's nodes (for ``nodes()`` and for reservations with a ``Placement``).
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
        nodes: Sequence[NodeInfo] | None = None,
    ) -> None:
        self._w = _World(now)
        self._nodes = None if nodes is None else list(nodes)
        self.prefix = prefix
        self.capacity = capacity
        self.ready_delay = ready_delay
        self.peer_grace = peer_grace
        self.epoch = 0
        self._script = script
        # Code digests this executor was given the bytes of (checked): ``has_code``.
        self.code: set[str] = set()

    @property
    def now(self) -> float:
        return self._w.now

    @property
    def _resv(self) -> dict[str, _Reservation]:
        return self._w.resv

    def connect(self, epoch: int = 0) -> MemoryExecutor:
        """Another executor on the same fake cluster (same clock, groups and jobs), with its
        own ``epoch``: what a second daemon would have."""
        other = copy.copy(self)
        other.epoch = epoch
        other.code = set()  # a new daemon holds no code yet
        return other

    # -- clock and fault injection -------------------------------------------------------

    def advance(self, now: float) -> None:
        """Move the virtual clock to ``now`` (never backwards)."""
        if now < self.now:
            raise ValueError(f"time goes forward: {now} < {self.now}")
        self._w.now = now
        self._place()

    def lose_bundles(self, name: str, bundles: Sequence[int], back_at: float | None = None) -> None:
        """Simulate losing the node(s) under ``bundles`` at ``now``.

        Ranks on them end with exit code ``None`` (their gangs are ``lost``), their peers are
        SIGKILLed. The reservation is ``rescheduling`` until ``back_at`` (or ``heal``).
        """
        r = self._get(name)
        lost = set(bundles)
        self._lose_ranks(r, lost)
        for bname in sorted(set(r.lent.values())):  # their state follows the owner's
            bw = self._resv[bname]
            self._lose_ranks(bw, {i for i, b in enumerate(bw.lent_from) if b in lost})
        r.lost |= lost
        r.back_at = back_at

    def _lose_ranks(self, r: _Reservation, lost: set[int]) -> None:
        """Ranks of ``r`` running on ``lost`` bundles are lost now; their peers SIGKILLed."""
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

    def crash_cluster(self, orphans_until: float | None = None) -> None:
        """The local Ray dies with the daemon at ``now``: every reservation vanishes
        (``missing``, ``reservations()`` empty) and no result is ever reported, but the gangs
        running now survive as orphans until ``orphans_until`` (then they die, as their
        supervisors would once they notice; ``None``: until their own end or ``kill_at``)."""
        t = self.now
        for name, r in sorted(self._resv.items()):
            for _, g in sorted(r.gangs.items()):
                if g.ended_by(t):
                    continue
                if orphans_until is not None:
                    until = max(t, orphans_until)
                    for i, rank in enumerate(g.ranks):
                        if rank.running_at(until):
                            g.ranks[i] = _Rank(until, SIGKILL_CODE, "lost")
                self._w.orphans.append((name, g))
        self._resv.clear()

    def overlaps(self) -> list[Overlap]:
        """Every pair of gangs of one (reservation, job) that ran at the same virtual time,
        over the whole history (released and orphaned gangs included); should be empty."""
        by: dict[tuple[str, str], list[_Gang]] = defaultdict(list)
        for name, g in self._w.history:
            by[(name, g.spec.job)].append(g)
        out = []
        for (name, job), gangs in sorted(by.items()):
            for a, b in combinations(gangs, 2):  # in launch order: a started first
                a_end = a.last_end
                if a_end is None or b.started_at < a_end:
                    out.append(Overlap(name, job, a.spec.attempt, b.spec.attempt, b.started_at))
        return out

    def heal(self, name: str) -> None:
        """Lost bundles of ``name`` are placed again (the group is ``ready`` again)."""
        r = self._get(name)
        r.lost.clear()
        r.back_at = None

    # -- Protocol ------------------------------------------------------------------------

    def reserve(self, name: str, width: int, cpus_per_gpu: int = 0,
                placement: Placement | None = None) -> None:
        check_name(name, self.prefix)
        if width < 1:
            raise ValueError(f"{name}: width must be >= 1, got {width}")
        if placement is not None and len(placement.nodes) != width:
            raise ValueError(f"{name}: placement names {len(placement.nodes)} nodes "
                             f"for {width} bundles")
        old = self._resv.get(name)
        if old is not None:
            if old.lender is not None:
                raise ReservationConflict(name, f"is a borrower of {old.lender}")
            if (old.width, old.cpus_per_gpu) != (width, cpus_per_gpu):
                raise ReservationConflict(
                    name, f"exists with width {old.width}, cpus_per_gpu {old.cpus_per_gpu}"
                )
            if placement is not None and old.placement is not None and (
                    old.placement.nodes != placement.nodes):
                raise ReservationConflict(name, f"exists on nodes {list(old.placement.nodes)}")
            return
        self._w.seq += 1
        self._resv[name] = _Reservation(name, width, cpus_per_gpu, self._w.seq, epoch=self.epoch,
                                        placement=placement)
        self._place()

    def nodes(self) -> list[NodeInfo]:
        if self._nodes is None:
            return [NodeInfo("memory-node-0", "127.0.0.1", self.capacity or 0)]
        return sorted(self._nodes, key=lambda n: n.node_id)

    def pull_logs(self, name: str) -> int:
        return 0  # the twin's jobs write no logs

    def _fits_nodes(self, r: _Reservation, used: dict[str, int]) -> bool:
        """Whether ``r``'s placement can be honoured now (``used``: bundles per node)."""
        if r.placement is None:
            return True
        nodes = {n.node_id: n for n in self.nodes()}
        want: dict[str, int] = defaultdict(int)
        for n in r.placement.nodes:
            want[n] += 1
        for node_id, k in want.items():
            n = nodes.get(node_id)
            if n is None or not n.alive or used.get(node_id, 0) + k > n.gpus:
                return False
            if any(n.labels.get(a) != b for a, b in r.placement.label_selector.items()):
                return False
            if any(n.resources.get(a, 0) < v * k for a, v in r.placement.bundle_resources.items()):
                return False
        return True

    def reservation_state(self, name: str) -> ReservationState:
        r = self._resv.get(name)
        if r is None:
            return "missing"
        if r.lender is not None and self.reservation_state(r.lender) == "rescheduling":
            return "rescheduling"  # the borrower's bundles are the owner's
        if r.placed_at is None:
            return "pending"
        if r.lost:
            if r.back_at is not None and self.now >= r.back_at:
                self.heal(name)
            else:
                return "rescheduling"
        if self.now < (r.placed_at if r.ranks_from is None else r.ranks_from) + self.ready_delay:
            return "placed"  # GPUs held, rank workers still starting
        return "ready"

    def reservations(self) -> list[str]:
        return sorted(n for n in self._resv if n.startswith(self.prefix))

    def launch(self, gang: GangSpec) -> None:
        r = self._get(gang.reservation)
        self._check_epoch(r)
        if gang.key in r.gangs:
            return
        state = self.reservation_state(r.name)
        if state != "ready":
            raise NotReady(r.name, f"cannot launch {gang.job}: group is {state}")
        check_gang(gang, r.width, self._busy(r) | set(r.lent))
        b = self._behaviour(gang)
        t = self.now
        ranks = [_Rank() for _ in gang.bundles]
        if (r.name, gang.job, gang.attempt) in self._w.declared_dead:
            b = Behaviour(0, exit_code=REFUSED_CODE)
            ranks = [_Rank(t, REFUSED_CODE, "natural") for _ in gang.bundles]
        elif gang.code_digest is not None and not self._take_code(gang):
            b = Behaviour(0, exit_code=CODE_FAILED_CODE)
            ranks = [_Rank(t, CODE_FAILED_CODE, "natural") for _ in gang.bundles]
        elif b.duration is not None:
            e = t + b.duration
            for i in range(len(ranks)):
                ranks[i] = _Rank(e, 0, "natural")
            if b.exit_code != 0:
                fr = min(b.failing_rank, len(ranks) - 1)
                ranks[fr] = _Rank(e, b.exit_code, "natural")
                for i in range(len(ranks)):
                    if i != fr:
                        ranks[i] = self._peer_stop(b, e)
        ranks = [self._windowed(b, rank, gang.term_at, gang.kill_at) for rank in ranks]
        ids = tuple(r.gpu_ids[i] for i in gang.bundles)
        g = r.gangs[gang.key] = _Gang(gang, b, t, ids, ranks)
        self._w.history.append((r.name, g))

    def lend(self, owner: str, bundles: Sequence[int], name: str) -> None:
        check_name(name, self.prefix)
        o = self._get(owner)
        self._check_epoch(o)
        bs = tuple(bundles)
        old = self._resv.get(name)
        if old is not None:
            if (old.lender, old.lent_from) == (owner, bs):
                return
            raise ReservationConflict(name, "exists" if old.lender is None else
                                      f"borrows bundles {list(old.lent_from)} of {old.lender}")
        if o.lender is not None:
            raise InvalidGang(owner, f"is a borrower of {o.lender}: only a group lends")
        state = self.reservation_state(owner)
        if state not in ("placed", "ready"):
            raise NotReady(owner, f"cannot lend: group is {state}")
        check_bundles(owner, f"lending to {name}", bs, o.width, self._busy(o))
        taken = sorted(set(bs) & set(o.lent))
        if taken:
            raise InvalidGang(owner, f"bundles {taken} are lent already")
        # Ended gangs not acknowledged: on Ray their results live in the rank workers that
        # lending stops, so the twin refuses them too.
        unacked = sorted(k for k, g in o.gangs.items() if not g.acked and set(g.spec.bundles) & set(bs))
        if unacked:
            raise InvalidGang(owner, f"bundles {list(bs)} hold results not acknowledged yet "
                              f"{unacked}: poll and ack them first")
        self._w.seq += 1
        self._resv[name] = _Reservation(
            name, len(bs), o.cpus_per_gpu, self._w.seq, placed_at=self.now,
            gpu_ids=tuple(o.gpu_ids[b] for b in bs), epoch=o.epoch, lender=owner, lent_from=bs)
        for b in bs:
            o.lent[b] = name

    def has_code(self, digest: str) -> bool:
        return digest in self.code

    def _take_code(self, gang: GangSpec) -> bool:
        """Whether the gang's code can be had: known already, or its bytes have its digest."""
        digest = gang.code_digest
        if digest in self.code:
            return True
        if gang.code_blob is None:
            return False
        try:
            _codepack.check(gang.code_blob, digest or "")
        except _codepack.PackError:
            return False
        self.code.add(digest or "")
        return True

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
        self._check_epoch(r)
        for k in keys:
            g = r.gangs.get((k[0], k[1]))
            if g is not None and g.ended_by(self.now):
                g.acked = True

    def terminate(self, name: str, job: str | None = None) -> None:
        self._signal(name, job, signal.SIGTERM)

    def kill(self, name: str, job: str | None = None) -> None:
        self._signal(name, job, signal.SIGKILL)

    def stop(self, name: str) -> list[GangResult]:
        if name not in self._resv:
            return []
        self.kill(name)
        return self.poll(name)

    def release(self, name: str) -> list[GangResult]:
        r = self._resv.get(name)
        if r is None:
            return []
        for borrower in sorted(set(r.lent.values())):
            self._drop(borrower)  # their results are lost to the caller
        out = self._drop(name)
        o = None if r.lender is None else self._resv.get(r.lender)
        if o is not None:  # the owner's rank workers on those bundles start again
            for b in r.lent_from:
                o.lent.pop(b, None)
            o.ranks_from = self.now
        self._place()
        return out

    def _drop(self, name: str) -> list[GangResult]:
        """Kill every gang of ``name``, forget it; its un-acknowledged results."""
        self.kill(name)
        out = self.poll(name)
        del self._resv[name]
        return out

    def fence(self, epoch: int) -> None:
        for name in self.reservations():
            r = self._resv[name]
            r.epoch = max(r.epoch, epoch)
        self.epoch = epoch

    def attempt_fate(self, name: str, job: str, attempt: int, width: int, log_dir: str) -> Fate:
        # The twin's ranks always answer and its supervisors never linger, so only an orphan
        # (nobody can see it, but its processes live) is "unknown".
        key = (job, attempt)
        t = self.now
        if any(n == name and g.spec.key == key and not g.ended_by(t) for n, g in self._w.orphans):
            return "unknown"
        r = self._resv.get(name)
        if r is not None:
            self._check_epoch(r, raise_only=True)
            g = r.gangs.get(key)
            if g is not None and not g.ended_by(t):
                return "alive"
        self._w.declared_dead.add((name, job, attempt))
        return "dead"

    # -- internals -----------------------------------------------------------------------

    def _check_epoch(self, r: _Reservation, raise_only: bool = False) -> None:
        """Refuse a command with an older epoch than the ranks have seen; a newer one
        becomes what they remember (a fencing token)."""
        if self.epoch < r.epoch:
            raise Fenced(r.name, f"epoch {self.epoch} is older than the ranks' {r.epoch}")
        if not raise_only:
            r.epoch = self.epoch

    def _windowed(self, b: Behaviour, rank: _Rank, term_at: float | None,
                  kill_at: float | None) -> _Rank:
        """``rank`` as its own window leaves it: SIGTERM at ``term_at``, SIGKILL at ``kill_at``."""
        if term_at is not None and not b.ignores_sigterm:
            t = max(term_at, self.now)
            if rank.running_at(t) and (rank.end is None or t + b.term_delay < rank.end):
                rank = _Rank(t + b.term_delay, b.term_exit_code, "executor")
        if kill_at is not None:
            t = max(kill_at, self.now)
            if rank.running_at(t):
                rank = _Rank(t, SIGKILL_CODE, "executor")
        return rank

    def _busy(self, r: _Reservation) -> set[int]:
        """Bundles of ``r`` with a rank running now."""
        return {
            b
            for g in r.gangs.values()
            for b, rank in zip(g.spec.bundles, g.ranks)
            if rank.running_at(self.now)
        }

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
        self._check_epoch(r)
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
        on_node: dict[str, int] = defaultdict(int)
        for r in self._resv.values():
            if r.placed_at is not None and r.placement is not None:
                for n in r.placement.nodes:
                    on_node[n] += 1
        for r in sorted(self._resv.values(), key=lambda r: r.seq):
            if r.placed_at is not None:
                continue
            if not self._fits_nodes(r, on_node):
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
            for n in r.placement.nodes if r.placement is not None else ():
                on_node[n] += 1

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
