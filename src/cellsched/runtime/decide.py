"""The reconciler's brain: a pure function from what was observed to what to do.

``decide(view, group, now, rules)`` looks at one grant as the ledger has it (:class:`GrantView`)
and at its placement group as the executor reports it (:class:`GroupView`), and returns the
actions that bring the two together, in the order they must be applied. No I/O, no clock, no
database, no Ray: table-tested in ``tests/runtime/test_decide.py``, applied by
:mod:`cellsched.runtime.reconciler` through the ledger's write side.

Rules kept here (docs/daemon.md, "One tick"):

- **Intent first**: an action that asks the executor for something is applied by writing the
  intent to the ledger first (the reconciler's ``apply`` does both, in that order).
- **At most one live attempt per job**: an attempt the ledger says runs and the executor does
  not show is ended only with a proof of death (``fate == "dead"``); while its fate is
  unknown, the job counts as running, so no next attempt starts.
- **Never later**: nothing here moves a window; pull-forward is the core's (``Schedule``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

from cellsched.executor.base import GangResult, ReservationState, RunningGang
from cellsched.runtime.plan import AttemptView, all_ended, job_states, next_launches
from cellsched.spec.models import ProjectSpec

Fate = Literal["alive", "dead", "unknown"]

LIVE = ("granted", "reserving", "active")


@dataclass(frozen=True)
class RuntimeView:
    """The daemon's memory of a grant it handles (``GrantRuntimeRow``), plus whether its group
    ever held its GPUs."""

    reservation: str
    log_dir: str
    outage_since: int | None = None
    breach_noted_at: int | None = None
    term_sent_at: int | None = None
    finalized: bool = False
    notified: bool = False
    ever_placed: bool = False


@dataclass(frozen=True)
class AttemptRow:
    job: str
    attempt: int
    state: str  # running | succeeded | failed | killed | lost | interrupted
    gpus: int
    started_at: int | None = None


@dataclass(frozen=True)
class GrantView:
    id: int
    project_id: str
    state: str
    start: int
    end: int
    width: int
    started_at: int | None
    spec: ProjectSpec
    rt: RuntimeView | None = None
    attempts: tuple[AttemptRow, ...] = ()


@dataclass(frozen=True)
class GroupView:
    """One observation of a grant's group: its state, what runs, what ended (not yet
    acknowledged), and the fate of each attempt the ledger says runs that the executor
    neither runs nor reports."""

    state: ReservationState
    running: tuple[RunningGang, ...] = ()
    results: tuple[GangResult, ...] = ()
    fates: Mapping[tuple[str, int], Fate] = field(default_factory=dict)
    # Missing already at this daemon's first look: it went away with the previous daemon
    # (a local Ray dies with the process that started it).
    gone_with_daemon: bool = False
    # Attempts that were running when it did: proven dead later, they are ``interrupted``.
    orphaned: frozenset[tuple[str, int]] = frozenset()


@dataclass(frozen=True)
class Rules:
    """The knobs ``decide`` needs (seconds)."""

    grace_s: int
    placement_timeout_s: int = 10
    breach_update_s: int = 60
    # The previous daemon's last heartbeat (None: unknown): where an outage found on start
    # began, for a window that ran while no daemon served it.
    down_since: int | None = None


# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Begin:
    """``granted`` → ``reserving`` (intent), then reserve the group. ``unserved_since``: the
    window started this long ago with no daemon to serve it (an outage from then)."""

    unserved_since: int | None = None


@dataclass(frozen=True)
class Missed:
    """The whole window passed with no daemon: expired, all of it a breach."""


@dataclass(frozen=True)
class Reserve:
    """Ask the executor for the group (again): idempotent."""


@dataclass(frozen=True)
class Placed:
    """The group holds its GPUs: first time, a ``placed`` event; an open outage closes."""

    first: bool


@dataclass(frozen=True)
class Activate:
    """``reserving`` → ``active``: every rank worker answers."""


@dataclass(frozen=True)
class OpenOutage:
    kind: str  # unplaceable | rescheduling | unserved
    since: int
    message: str


@dataclass(frozen=True)
class CloseOutage:
    message: str


@dataclass(frozen=True)
class UpdateBreach:
    """An outage goes on: bring ``breach_gs`` up to now (every ``breach_update_s``)."""


@dataclass(frozen=True)
class Regroup:
    """The group is gone while the grant is live: back to ``reserving``, outage open from
    ``since`` (None: now) if none is open, then reserve again."""

    since: int | None


@dataclass(frozen=True)
class RecordResults:
    """Write the results, commit, then acknowledge them to the executor."""

    results: tuple[GangResult, ...]


@dataclass(frozen=True)
class EndAttempt:
    """An attempt proven dead that reported nothing: ``lost`` or ``interrupted``."""

    job: str
    attempt: int
    state: str
    detail: str


@dataclass(frozen=True)
class Terminate:
    """``end − grace`` has come: ``terminating`` (intent), then SIGTERM to every job."""

    jobs: tuple[str, ...]


@dataclass(frozen=True)
class Launch:
    job: str
    attempt: int
    bundles: tuple[int, ...]


@dataclass(frozen=True)
class FinishEarly:
    """Every job ended: cut the window now, refund the rest, pull waiting grants forward;
    then release and report."""

    state: str  # completed | expired


@dataclass(frozen=True)
class Expire:
    """The window is over: ``expired`` (intent), then release (SIGKILL) and report."""


@dataclass(frozen=True)
class Finalize:
    """The grant ended (``reason``): release the group, close attempts, write the report."""

    reason: str


@dataclass(frozen=True)
class Notify:
    """Write the report files; tell the spec's ``notify`` target once."""


Action = (Begin | Missed | Reserve | Placed | Activate | OpenOutage | CloseOutage | UpdateBreach
          | Regroup | RecordResults | EndAttempt | Terminate | Launch | FinishEarly | Expire
          | Finalize | Notify)

# Actions after which the grant must be observed again before anything else is decided.
TERMINAL = (Begin, Missed, FinishEarly, Expire, Finalize, Notify, Regroup, Terminate)


# -- the rule --------------------------------------------------------------------------------


def decide(g: GrantView, group: GroupView | None, now: int, rules: Rules) -> list[Action]:
    """What to do about grant ``g`` now; ``group`` is None when the daemon does not handle it
    yet (no runtime row) or has finalized it."""
    rt = g.rt
    if rt is None:
        if g.state != "granted":
            return []
        if now >= g.end:
            return [Missed()]
        late = now - g.start > rules.placement_timeout_s
        return [Begin(unserved_since=g.start if late else None)]
    if rt.finalized:
        return [] if rt.notified else [Notify()]
    if g.state not in LIVE:
        return [Finalize(g.state)]
    if now >= g.end:
        return [Expire()]
    assert group is not None, "a live grant with a runtime row is always observed"
    if group.state == "missing":
        return _missing(g, group, rules)
    out: list[Action] = []
    held = group.state in ("placed", "ready")
    outage = rt.outage_since is not None
    if g.state == "reserving":
        if held:
            out.append(Placed(first=not rt.ever_placed))
            outage = False
        if group.state != "ready":
            if not held:
                out += _pending(g, rules, now)
            return out
        out.append(Activate())
    elif not held and not outage:
        why = ("a node of the group was lost; Ray is re-placing its bundles"
               if group.state == "rescheduling" else f"the group is {group.state} again")
        out.append(OpenOutage("rescheduling", now, why))
    elif held and outage:
        out.append(CloseOutage("group ready again" if group.state == "ready"
                               else "group placed again; rank workers starting"))
    elif outage and now - (rt.breach_noted_at or 0) >= rules.breach_update_s:
        out.append(UpdateBreach())
    if group.results:
        out.append(RecordResults(group.results))
    views, ended = _attempts_after(g, group, rules)
    out += ended
    still = [a for a in views if a.state == "running"]
    if rt.term_sent_at is None and now >= g.end - rules.grace_s:
        out.append(Terminate(tuple(sorted({a.job for a in still}))))
        return out
    states = job_states(g.spec, views)
    if rt.term_sent_at is not None:
        if not still:
            done = all(s in ("succeeded", "failed", "blocked") for s in states.values())
            out.append(FinishEarly("completed" if done else "expired"))
        return out
    if not still and all_ended(states):
        out.append(FinishEarly("completed"))
        return out
    if group.state != "ready":
        return out
    busy = {b for rg in group.running for b in rg.bundles}
    out += [Launch(x.job, x.attempt, x.bundles) for x in next_launches(g.spec, views, g.width, busy)]
    return out


def _attempts_after(g: GrantView, group: GroupView, rules: Rules) -> tuple[list[AttemptView], list[Action]]:
    """The attempts as they will be once this observation is recorded: results applied
    (unless already recorded), attempts proven dead ended."""
    got = {(r.job, r.attempt): r for r in group.results}
    alive = {(rg.job, rg.attempt) for rg in group.running}
    views, ended = [], []
    for a in g.attempts:
        key = (a.job, a.attempt)
        state = a.state
        if state == "running" and key in got:
            state = got[key].outcome
        elif state == "running" and key not in alive and group.fates.get(key) == "dead":
            state, detail = _dead(gone=False, with_daemon=key in group.orphaned)
            ended.append(EndAttempt(a.job, a.attempt, state, detail))
        views.append(AttemptView(a.job, a.attempt, state))
    return views, ended


def _dead(gone: bool, with_daemon: bool) -> tuple[str, str]:
    if with_daemon:
        return "interrupted", "stopped with the previous daemon's local Ray; proven dead"
    if gone:
        return "lost", "its placement group vanished; proven dead"
    return "lost", ("fate unknown to the executor and proven dead "
                    "(rank workers lost, or the launch never happened)")


def _missing(g: GrantView, group: GroupView, rules: Rules) -> list[Action]:
    """The group is gone (never created after a crash, removed from outside, or Ray died):
    attempts proven dead end; the others stay ``running`` (so nothing starts again) until
    proven; the group is asked for again."""
    out: list[Action] = []
    running = [a for a in g.attempts if a.state == "running"]
    for a in running:
        key = (a.job, a.attempt)
        if group.fates.get(key) == "dead":
            state, detail = _dead(gone=True, with_daemon=group.gone_with_daemon or key in group.orphaned)
            out.append(EndAttempt(a.job, a.attempt, state, detail))
    if g.state == "active" or running:
        since = rules.down_since if group.gone_with_daemon else None
        out.append(Regroup(since=None if since is None else max(g.start, since)))
    else:
        out.append(Reserve())
    return out


def _pending(g: GrantView, rules: Rules, now: int) -> list[Action]:
    """Reserving and not placed: a group never placed is a breach after the timeout, counted
    from the promised start; one placed before, from now. Keep asking either way."""
    rt = g.rt
    assert rt is not None
    if rt.outage_since is not None:
        if now - (rt.breach_noted_at or 0) >= rules.breach_update_s:
            return [UpdateBreach()]
        return []
    if g.started_at is None and not rt.ever_placed:
        if now - g.start >= rules.placement_timeout_s:
            return [OpenOutage(
                "unplaceable", g.start,
                f"a group of {g.width} one-GPU bundles could not be placed within "
                f"{rules.placement_timeout_s} s: the cluster has fewer free GPUs than declared; "
                "still trying")]
        return []
    return [OpenOutage("rescheduling", now, "the group held its GPUs before and no longer does; still trying")]


def needs_fate(g: GrantView, running: Sequence[RunningGang], results: Sequence[GangResult]) -> list[AttemptRow]:
    """Attempts whose fate the observer must ask the executor about: the ledger says they run,
    the executor neither runs nor reports them."""
    seen = {(r.job, r.attempt) for r in running} | {(r.job, r.attempt) for r in results}
    return [a for a in g.attempts if a.state == "running" and (a.job, a.attempt) not in seen]
