"""The expected start beside a grant's promise: what ``submit``, ``submit --dry-run`` (``plan``)
and ``status`` say about when a grant will probably start (docs/admission.md, "Expected start").

The estimator is :mod:`cellsched.core.expect` (its docstring has the rules: a replay of the
live calendar in which every grant holds the median of the recent per-grant ratios of held
to granted window of its team's 20 grants with the windows nearest its own in length, a
running grant that of those ratios above the share it has run, and later work arrives as in
the last day); the ratios come from the ledger
(:mod:`cellsched.ledger.history`). This module decides when the replay
runs and keeps its cost off the submit path:

- a grant whose window has begun is expected at its start (basis :data:`STARTS_NOW` in a
  submit's answer, :data:`STARTED` in ``status``);
- a waiting grant, when no grant at all ended in the last 30 days: its promise, no replay
  (every window is taken to run to its end);
- else one replay for every waiting grant asked about together: those of one ``status``, or
  of every batch of submits committed while the previous replay ran (:class:`ExpectQueue`);
- but a submit (or its dry run) whose calendar holds more than :data:`SUBMIT_MAX_LIVE` live
  grants is answered without one: its promise, and the basis says so; ``status`` replays it.

On the server, the ratios are read at most once a minute (:class:`RatiosCache`), and a
submit's replay runs on the live grants kept with the admission snapshot
(``service.Admission.live``), after its batch is committed and the next batch has the
ledger's write lock: it adds nothing to the time the lock is held and reads no grant. One
replay runs at a time: under load its cost is shared by every submit answered from it,
instead of each batch starting its own on the same cores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from cellsched.core.admission import Grant
from cellsched.core.expect import Ratios

if TYPE_CHECKING:
    from sqlmodel import Session

    from cellsched.ledger.db import Ledger
    from cellsched.service import Env, SubmitOutcome, _Submit

T = TypeVar("T")
STARTS_NOW = "starts now"
"""The basis of a submit's answer whose window begins at once: the expected start is its start."""
STARTED = "started"
"""The basis in ``status`` of a live grant whose window has begun."""
SUBMIT_MAX_LIVE = 1000
"""The most live grants a submit's replay takes. The replay's cost grows with them (the grant
at the end of a long queue is only reached by replaying every start before it; on itp.csv
on nodes with later work arriving, 0.23 s of CPU at the median with 500 to 1,000 live
grants, 0.41 s with 1,000 to 2,000), and a submit on the server must not wait for that, nor
take it from the other submits' cores. Measured through the server (docs/api.md): at 1,000
the submit figures are those of no replay at all, at 2,000 they collapse. Above it a submit
and its dry run answer with the promise and say so; ``status`` still replays."""


@dataclass(frozen=True)
class Context:
    """What the replay takes beside the ratios, read with them: the grants admitted in the
    last 24 hours (later work arrives as they did: ``history.arrivals``), the calendar nodes
    with no machine (``history.lost_nodes``) and the waiting grants' ``not_before``s still
    ahead (``history.not_befores``)."""

    arrivals: tuple[tuple[int, str, str | None, int, int], ...] = ()
    lost: Mapping[str, Sequence[int]] = field(default_factory=dict)
    not_before: Mapping[int, int] = field(default_factory=dict)


class RatiosCache:
    """The estimator's :class:`~cellsched.core.expect.Ratios` (how much of their windows
    each team's recent grants held, grant by grant), kept for :attr:`TTL_S` seconds: reading them scans the
    grants that ended in the last 30 days, which a submit on the server must not do each
    time. They move only when grants end, and over 30 days of history a minute-old ratio
    is as good an estimate as a fresh one."""

    TTL_S = 60

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: tuple[int, Ratios, Context] | None = None
        self.reads = 0  # times the ledger was read for them

    def get(self, ledger: Ledger, now: int, s: Session | None = None) -> Ratios:
        """The ratios as of ``now`` (read within ``s`` if given, else in a read of their own)."""
        return self.get_all(ledger, now, s)[0]

    def get_all(self, ledger: Ledger, now: int, s: Session | None = None) -> tuple[Ratios, Context]:
        """The ratios and the rest of the replay's input read with them (:class:`Context`)."""
        with self._lock:
            held = self._held
        if held is not None and 0 <= now - held[0] < self.TTL_S:
            return held[1], held[2]
        from cellsched.ledger import history

        def read(x: Session) -> tuple[Ratios, Context]:
            r = history.ratios(x, now)
            if r.cluster is None:
                return r, Context()
            return r, Context(tuple(history.arrivals(x, now)), history.lost_nodes(x), history.not_befores(x, now))

        got = _within(ledger, s, read)
        with self._lock:
            self._held = (now, *got)
            self.reads += 1
        return got

    def clear(self) -> None:
        with self._lock:
            self._held = None


def _within(ledger: Ledger, s: Session | None, fn: Callable[[Session], T]) -> T:
    """``fn`` of ``s`` if given, else of a read of its own."""
    if s is not None:
        return fn(s)
    with ledger.read() as own:
        return fn(own)


def expect(env: Env, now: int, want: Mapping[int, Grant], live: Sequence[tuple[int, Grant]] | None,
           s: Session | None = None, max_live: int | None = None,
           not_before: Mapping[int, int] | None = None, fresh: bool = False) -> dict[int, tuple[int, str]]:
    """``(expected start, basis)`` of each waiting grant in ``want`` (keyed by grant id, or
    by a key above every id for a grant not in the ledger), replayed on ``live`` (every
    grant holding GPUs from ``now`` on, by id; None: read from the ledger, only if a replay
    is needed). ``s``: a session to read in (else reads of their own). With more than
    ``max_live`` live grants, no replay: the promises, with a basis that says why.
    ``not_before``: the earliest start of grants of ``want`` (a submit's: where its window
    would begin but for the calendar). ``fresh``: read the lost nodes and the ``not_before``s
    now (``status``) rather than take the cached ones."""
    from cellsched.ledger import history

    if not want:
        return {}
    ratios, ctx = env.ratios.get_all(env.ledger, now, s)
    lost, nbs = ctx.lost, dict(ctx.not_before)
    if ratios.cluster is not None and (fresh or live is None):
        def read(x: Session) -> tuple[Mapping[str, Sequence[int]], dict[int, int], Sequence[tuple[int, Grant]]]:
            fl = (history.lost_nodes(x), history.not_befores(x, now)) if fresh else (lost, nbs)
            return (*fl, history.live_grants(x, now) if live is None else live)

        lost, nbs, live = _within(env.ledger, s, read)  # one read: the same snapshot
    nbs.update(not_before or {})
    if max_live is not None and live is not None and len(live) > max_live:
        why = (f"not estimated at submit: {len(live):,} grants are live, more than a submit replays "
               f"({max_live:,}); `cellsched status` estimates it")
        return {k: (g.start, why) for k, g in want.items()}
    pools = {p.name: (p.gpus, p.gpus_per_node) for p in env.cluster.pools}
    return history.expected_of(pools, live or (), ratios, now, want, env.cluster.policy.pull_forward,
                               nbs, lost, ctx.arrivals)


def _core_grant(g: Any) -> Grant:
    """A ``GrantRow`` (or a status item: its JSON) as the core's :class:`Grant`."""
    if isinstance(g, dict):
        nodes = g.get("nodes")
        return Grant(g["project"], g["team"], g["pool"], g["width"], g["start"], g["end"],
                     None if nodes is None else tuple(nodes))
    from cellsched.ledger.snapshot import grant_of

    return grant_of(g)


def _not_estimated(e: Exception) -> str:
    return f"not estimated ({type(e).__name__}: {e}): take the guaranteed start"


def fill_outcomes(env: Env, outcomes: Sequence[tuple[SubmitOutcome, int]],
                  live: Sequence[tuple[int, Grant]] | None, s: Session | None = None,
                  max_live: int | None = None) -> None:
    """Set ``expected_start`` and ``expected_basis`` on each granted outcome (with the
    ``now`` of its submit), by one replay for those that wait (none with more than
    ``max_live`` live grants: :data:`SUBMIT_MAX_LIVE` unless given). Never raises: a
    failure leaves the promise, and the basis says why."""
    want: dict[int, Grant] = {}
    nb: dict[int, int] = {}
    waiting: list[tuple[SubmitOutcome, int]] = []
    now = 0
    for o, t in outcomes:
        row = o.grant
        if row is None:
            continue
        if row.start <= t:
            o.expected_start, o.expected_basis = row.start, STARTS_NOW if row.start == t else STARTED
            continue
        key = row.id if row.id is not None else _dry_key(live)
        want[key] = _core_grant(row)
        # The earliest start its spec allows (not_before, notice): where the window begins
        # unless something delayed it (then the delay says where it would have begun).
        nb[key] = o.delay.wanted if o.delay is not None else row.start
        waiting.append((o, key))
        now = max(now, t)
    if not waiting:
        return
    try:
        got = expect(env, now, want, live, s, SUBMIT_MAX_LIVE if max_live is None else max_live, nb)
    except Exception as e:  # noqa: BLE001 - the grant stands; only the estimate is missing
        got = {k: (g.start, _not_estimated(e)) for k, g in want.items()}
    for o, key in waiting:
        o.expected_start, o.expected_basis = got[key]


def _dry_key(live: Sequence[tuple[int, Grant]] | None) -> int:
    """A dry run's grant has no id: a key after every grant's (it is the newest)."""
    return 1 + max((k for k, _ in live or ()), default=1 << 40)


def fill_batch(env: Env, batch: Sequence[_Submit]) -> None:
    """The expected starts of a committed batch of submits: at once for windows that begin
    now; for those that wait, from the next replay (:class:`ExpectQueue`), which the
    calling thread may run. Returns when every answer of the batch has its expected start."""
    now: list[tuple[SubmitOutcome, int]] = []
    wait: list[tuple[SubmitOutcome, int]] = []
    snapshot: tuple[int, tuple[tuple[int, Grant], ...]] | None = None
    for job in batch:
        o = job.outcome
        if o is None or o.grant is None:
            continue
        (wait if o.grant.start > job.now else now).append((o, job.now))
        if job.live is not None and (snapshot is None or job.live[0] > snapshot[0]):
            snapshot = job.live
    fill_outcomes(env, now, None)
    if not wait:
        return
    if env.ratios.get(env.ledger, max(t for _, t in wait)).cluster is None:
        fill_outcomes(env, wait, None)  # no history: the promises, no replay, no queue
        return
    env.expects.fill(env, wait, snapshot)


class _Pending:
    """Waiting grants of one batch of submits, answered by a replay of :class:`ExpectQueue`."""

    __slots__ = ("done", "outcomes", "snapshot", "wake")

    def __init__(self, outcomes: list[tuple[SubmitOutcome, int]],
                 snapshot: tuple[int, tuple[tuple[int, Grant], ...]] | None) -> None:
        self.outcomes = outcomes
        self.snapshot = snapshot
        self.done = False
        self.wake = threading.Event()  # answered, or to run the next replay


class ExpectQueue:
    """One replay at a time for the waiting grants of committed batches (one per ``Env``).

    A batch joins the queue; if no replay runs, its thread runs one for every batch queued
    (itself included), on the newest live calendar among them (each batch's is the admission
    snapshot's as it committed, with the ledger's sequence then: a later one holds the
    earlier batches' grants too; a batch that kept none reads the ledger), then wakes them
    and hands the next replay to the thread of the first batch that queued meanwhile. So a
    batch waits for at most the replay running when it arrives and its own, and the replays
    never run side by side on the same cores (as :class:`cellsched.service.SubmitQueue`
    hands on its write lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._running = False
        self.replays = 0  # replays run (each for every batch queued when it began)
        self.largest = 0  # the most batches one replay answered

    def fill(self, env: Env, outcomes: list[tuple[SubmitOutcome, int]],
             snapshot: tuple[int, tuple[tuple[int, Grant], ...]] | None) -> None:
        me = _Pending(outcomes, snapshot)
        with self._lock:
            self._queue.append(me)
            lead = not self._running
            self._running = True
        if not lead:
            me.wake.wait()  # answered, or handed the next replay
        if me.done:
            return
        todo: list[_Pending] = []
        try:
            with self._lock:
                todo, self._queue = self._queue, []  # ``me`` among them
            newest = None
            for p in todo:  # a batch that kept no calendar: read the ledger (newest of all)
                key = (1 << 62) if p.snapshot is None else p.snapshot[0]
                if newest is None or key > newest[0]:
                    newest = (key, p.snapshot)
            assert newest is not None
            fill_outcomes(env, [o for p in todo for o in p.outcomes], None if newest[1] is None else newest[1][1])
            with self._lock:
                self.replays += 1
                self.largest = max(self.largest, len(todo))
        finally:
            for p in todo:
                p.done = True
                p.wake.set()
            with self._lock:
                if self._queue:
                    self._queue[0].wake.set()  # its thread runs the next replay
                else:
                    self._running = False


def add_to_status(env: Env, items: list[dict[str, Any]], now: int) -> None:
    """``expected_start`` and ``expected_start_basis`` on each ``status`` item of a grant: a
    live grant whose window has begun, its start (:data:`STARTED`); a waiting one, the
    replay's answer (one replay for them all); a grant no longer live, None."""
    want: dict[int, Grant] = {}
    for it in items:
        if "start" not in it or "id" not in it:
            continue  # not a grant
        it["expected_start"], it["expected_start_basis"] = None, None
        if it["state"] not in ("granted", "reserving", "active") or it["end"] <= now:
            continue
        if it["state"] == "granted" and it["start"] > now:
            want[it["id"]] = _core_grant(it)
        else:
            it["expected_start"], it["expected_start_basis"] = it["start"], STARTED
    if not want:
        return
    try:
        got = expect(env, now, want, None, fresh=True)
    except Exception as e:  # noqa: BLE001 - status still answers
        got = {k: (g.start, _not_estimated(e)) for k, g in want.items()}
    for it in items:
        if it.get("id") in got and "start" in it:
            it["expected_start"], it["expected_start_basis"] = got[it["id"]]
