"""What history says about how long grants hold their windows: the input of the expected
start (``cellsched.core.expect``), read from the ledger.

A grant that ended (``completed`` or ``expired``; not ``cancelled`` or ``replaced``, which
say nothing about how long work runs) in the last ``window_s`` seconds counts with its ratio
of the window it held (``end - start``: its window as cut when it was released) to the
window granted (``promised_end - promised_start``), and with that window's length: a grant
is expected to hold the median ratio of its team's 20 grants with the windows nearest its
own (``core.expect.ratios_from``).

:func:`expected_of` is what ``submit``, ``submit --dry-run`` and ``status`` say beside a
waiting grant's promise: the replay of ``core.expect`` under the cluster's
``policy.pull_forward`` rule, or the promise itself when no grant has ended recently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sqlmodel import Session, col, select

from cellsched.core.admission import Grant, Schedule
from cellsched.core.expect import (
    ARRIVALS_S,
    WINDOW_S,
    PoolShape,
    Ratios,
    WaitingSet,
    expected_starts,
    ratios_from,
)
from cellsched.ledger.snapshot import grant_of
from cellsched.ledger.tables import GrantRow, NodeMapRow, ProjectRow

ENDED = ("completed", "expired")


def ratios(s: Session, now: int, window_s: int = WINDOW_S) -> Ratios:
    """Per team (and for the cluster) the per-grant ratios of held to granted window, recently."""
    rows = s.exec(select(GrantRow).where(col(GrantRow.state).in_(ENDED),
                                         col(GrantRow.ended_at) >= now - window_s,
                                         col(GrantRow.ended_at) <= now).order_by(col(GrantRow.id)))
    return ratios_from(((r.team, max(0, r.end - r.start), r.promised_end - r.promised_start) for r in rows),
                       window_s)


def live_grants(s: Session, now: int) -> list[tuple[int, Grant]]:
    """Every grant holding GPUs from ``now`` on (running or waiting), keyed by id."""
    rows = s.exec(select(GrantRow).where(col(GrantRow.state).in_(("granted", "reserving", "active")),
                                         col(GrantRow.end) > now).order_by(col(GrantRow.id)))
    return [(r.id or 0, grant_of(r)) for r in rows]


def arrivals(s: Session, now: int, period: int = ARRIVALS_S) -> list[tuple[int, str, str | None, int, int]]:
    """The replay's later work: every grant admitted in the last ``period`` seconds (any
    state: it says what was submitted), as (offset from now at which it is submitted again,
    team, pool, width, promised window length), in the order they were admitted."""
    rows = s.exec(select(GrantRow).where(col(GrantRow.created_at) > now - period,
                                         col(GrantRow.created_at) <= now)
                  .order_by(col(GrantRow.created_at), col(GrantRow.id)))
    return [(r.created_at - now + period, r.team, r.pool, r.width, r.promised_end - r.promised_start)
            for r in rows if r.promised_end > r.promised_start]


def lost_nodes(s: Session) -> dict[str, list[int]]:
    """Per pool, the calendar nodes with no Ray node now (``cs_node_map``): the replay places
    nothing new on them, as admission does not (``ledger.snapshot``)."""
    out: dict[str, list[int]] = {}
    for r in s.exec(select(NodeMapRow).where(col(NodeMapRow.node_id).is_(None))
                    .order_by(col(NodeMapRow.pool), col(NodeMapRow.index))):
        out.setdefault(r.pool, []).append(r.index)
    return out


def not_befores(s: Session, now: int) -> dict[int, int]:
    """By grant id, the ``not_before`` still ahead of each waiting grant whose spec has one."""
    rows = s.exec(select(GrantRow.id, ProjectRow.spec_json)
                  .where(GrantRow.state == "granted", col(GrantRow.start) > now,
                         col(GrantRow.project_id) == col(ProjectRow.id)))
    out: dict[int, int] = {}
    for gid, spec_json in rows:
        if '"not_before"' not in spec_json:
            continue
        nb = _not_before_of(spec_json)
        if nb is not None and nb > now and gid is not None:
            out[gid] = nb
    return out


def _not_before_of(spec_json: str) -> int | None:
    from cellsched.spec.seal import from_canonical

    try:
        return from_canonical(spec_json).budget.not_before_s
    except Exception:  # noqa: BLE001 - an unreadable spec: no not_before known
        return None


def expected_for(s: Session, pools: Mapping[str, PoolShape], now: int, ids: list[int],
                 extra: tuple[int, Grant] | None = None) -> tuple[dict[int, int], Ratios]:
    """Expected starts of the grants ``ids`` (and of ``extra``, a grant not in the ledger: a
    dry run's), with the ratios they rest on: the replay as ``status`` runs it (arrivals,
    lost nodes and ``not_before``s read from the ledger)."""
    live = live_grants(s, now)
    if extra is not None:
        live.append(extra)
    want = list(ids) + ([extra[0]] if extra is not None else [])
    r = ratios(s, now)
    got = expected_starts(pools, live, r, now, want=want, not_before=not_befores(s, now), lost=lost_nodes(s),
                          arrivals=arrivals(s, now), period=ARRIVALS_S)
    return got, r


def replay_waiting(rule: str) -> Callable[[Schedule], WaitingSet]:
    """The replay's waiting grants under the pull-forward rule ``rule`` (the cluster's
    ``policy.pull_forward``): the simulator's index (``sim.compress.Waiting``, pure, held
    equal to the plain pass by tests/core/test_expect.py). Not ``PlainWaiting``: it tries
    every waiting grant at every instant GPUs come free, and a submit cannot wait for that
    (0.3 s against 0.04 s with 400 live grants, 26 s against 1 s with 4,000)."""
    from cellsched.sim.compress import Waiting

    return lambda sched: Waiting(sched, rule)


def expected_of(pools: Mapping[str, PoolShape], live: Sequence[tuple[int, Grant]], ratios: Ratios, now: int,
                want: Mapping[int, Grant], rule: str = "start_now",
                not_before: Mapping[int, int] | None = None, lost: Mapping[str, Sequence[int]] | None = None,
                arrivals: Sequence[tuple[int, str, str | None, int, int]] = ()) -> dict[int, tuple[int, str]]:
    """``(expected start, basis)`` of each waiting grant in ``want`` (keyed as in ``live``,
    by submission order; a key not in ``live`` is added to it: a dry run's grant). The basis
    is :meth:`Ratios.sentence` for the grant's team and window. With no ended grant in the window at
    all every window runs to its end: the expected start is the promise, and no replay is
    run. ``not_before`` (by key), ``lost`` (per pool) and ``arrivals`` (:func:`arrivals`)
    as :func:`cellsched.core.expect.expected_starts` takes them. Never later than the
    promise, never before a grant's ``not_before``."""
    out = {k: (g.start, ratios.sentence(g.team, g.end - g.start)) for k, g in want.items()}
    if ratios.cluster is None or not want:
        return out
    keys = {k for k, _ in live}
    extra = [(k, g) for k, g in sorted(want.items()) if k not in keys]
    got = expected_starts(pools, [*live, *extra] if extra else live, ratios, now, want=list(want),
                          waiting_set=replay_waiting(rule), not_before=not_before, lost=lost,
                          arrivals=arrivals, period=ARRIVALS_S)
    nb = not_before or {}
    for k, g in want.items():
        out[k] = (min(max(got.get(k, g.start), nb.get(k, now)), g.start), out[k][1])
    return out
