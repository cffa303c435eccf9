"""The utilisation report as one pure computation: (snapshot, cluster, period, now) -> dict.

Nothing here reads a clock or a database; ``now`` is an argument. Every figure is summed in
integer GPU-seconds and turned into GPU-hours once, in :func:`build`; the terminal, JSON and
HTML renderers all print the dict this returns, so their numbers agree by construction.

Definitions (P is the report period [since, until); E is its elapsed part [since, min(until, now));
F is the rest, [max(since, now), until)). Each grant counts its window *as it stands*, [start,
end) (cut at an early release), and the part a release cut off, [end, gross_end):

- capacity: pool GPUs x seconds of P (``elapsed_capacity``: of E).
- granted: the windows as they stand, inside P (``reserved`` is the same figure). What a
  release cut off is not granted any more: another grant may hold those GPUs now.
- refunded: the cut-off parts inside P (cancel, replacement, early finish); booked = granted +
  refunded is the windows as booked (what "granted" counted before: it may exceed capacity).
- held: granted inside E; committed: granted inside F; so granted = held + committed.
- used: GPU-seconds jobs ran inside their grant's held window (each attempt prorated by its
  overlap; one still running counts its GPUs from its start to ``now``), at most held per
  grant; idle while reserved = held - used, per grant and so in every sum.
- unreserved: per pool, elapsed capacity - held of every team (cluster-wide, even with ``team``).
- breach: the GPU-seconds of held windows the cluster did not provide (``cs_breach`` spans
  inside the held window), at most held; guarantee breaches: the grants with some in P.
- utilisation: used / elapsed capacity, used / held, held / elapsed capacity.
- wait: submit (grant creation) to start, for grants submitted in P that were not cancelled
  before starting; the start is the measured ``started_at`` when the daemon recorded one,
  otherwise the granted window start.
- team remaining: allowance minus what was booked (net of refunds, breaches included) by the report's reference
  time ``ref = min(until - 1, now)`` in the allowance period containing ``ref``; with ``ref =
  now`` this is exactly what ``cellsched budget`` shows. Never below zero: the excess of an
  allowance lowered after its bookings is ``overdrawn``.

Every figure is a sum of non-negative overlaps, so none is negative; the identities are
checked over random ledgers and periods in ``tests/report/test_identities.py``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from cellsched import fmt
from cellsched.core.allowance import period_bounds
from cellsched.core.calendar import FAR_FUTURE, FAR_PAST
from cellsched.report.snapshot import GrantFact, RunFact, Snapshot
from cellsched.spec.cluster import ClusterConfig

H = 3600.0
DAY = 86400
# Timeline bucket lengths a person can read on an axis, smallest first.
_BUCKETS = (900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 28 * DAY)
MAX_BUCKETS = 180
CALENDAR_MAX_DAYS = 90


def utc(t: int | None) -> str | None:
    """ISO 8601 UTC for an epoch second (pure: no local zone, no clock)."""
    return fmt.iso(t)


def _ov(a0: int, a1: int, b0: int, b1: int) -> int:
    return max(0, min(a1, b1) - max(a0, b0))


def _h(gs: int | float) -> float:
    return gs / H


def _ratio(a: int, b: int) -> float | None:
    return None if b <= 0 else a / b


def percentile(values: list[int], q: float) -> int | None:
    """The nearest-rank percentile, ``q`` in percent (:func:`cellsched.core.stats.percentile`,
    the one ``cellsched simulate`` uses too)."""
    from cellsched.core.stats import percentile as nearest_rank

    return nearest_rank(values, q)


def run_span(run: RunFact, now: int) -> tuple[int, int, float] | None:
    """[start, end) of an attempt and its GPU-seconds per second (None if it never started)."""
    if run.started_at is None:
        return None
    s = run.started_at
    if run.ended_at is None:
        e = max(s, now)
        return (s, e, float(run.gpus)) if e > s else None
    e = run.ended_at
    if e <= s:
        return None
    return s, e, run.gpu_seconds / (e - s)


def run_used(run: RunFact, a: int, b: int, now: int) -> int:
    """Integer GPU-seconds of an attempt inside [a, b)."""
    if run.started_at is None:
        return 0
    s = run.started_at
    if run.ended_at is None:
        return run.gpus * _ov(s, max(s, now), a, b)
    e = run.ended_at
    if e <= s:
        return run.gpu_seconds if a <= s < b else 0
    ov = _ov(s, e, a, b)
    return run.gpu_seconds if ov == e - s else run.gpu_seconds * ov // (e - s)


@dataclass
class _Acc:
    """GPU-seconds summed for one team, one pool or the whole cluster."""

    granted: int = 0
    refunded: int = 0
    reserved: int = 0
    held: int = 0
    committed: int = 0
    used: int = 0
    idle: int = 0
    breach_count: int = 0
    breach: int = 0
    grants: int = 0

    def add(self, o: _Acc) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(o, k))

    def json(self) -> dict[str, float | int]:
        return {
            "granted_gpu_hours": _h(self.granted),
            "refunded_gpu_hours": _h(self.refunded),
            "booked_gpu_hours": _h(self.granted + self.refunded),
            "reserved_gpu_hours": _h(self.reserved),
            "held_gpu_hours": _h(self.held),
            "committed_gpu_hours": _h(self.committed),
            "used_gpu_hours": _h(self.used),
            "idle_reserved_gpu_hours": _h(self.idle),
            "breach_gpu_hours": _h(self.breach),
        }


def _bucket_len(span: int) -> int:
    for b in _BUCKETS:
        if span / b <= MAX_BUCKETS:
            return b
    return max(_BUCKETS[-1], -(-span // MAX_BUCKETS))


class _Series:
    """Average GPUs per time bucket, filled by intervals in O(buckets + intervals)."""

    def __init__(self, t0: int, t1: int, step: int) -> None:
        self.t0, self.t1, self.step = t0, t1, step
        self.n = max(1, -(-(t1 - t0) // step))
        self.gs = [0.0] * self.n  # GPU-seconds per bucket
        self._diff = [0.0] * (self.n + 1)  # rate added to whole buckets (prefix-summed later)

    def add(self, a: int, b: int, rate: float) -> None:
        a, b = max(a, self.t0), min(b, self.t1)
        if b <= a or rate == 0:
            return
        i, j = (a - self.t0) // self.step, (b - 1 - self.t0) // self.step
        if i == j:
            self.gs[i] += rate * (b - a)
            return
        self.gs[i] += rate * (self.t0 + (i + 1) * self.step - a)
        self.gs[j] += rate * (b - (self.t0 + j * self.step))
        if j > i + 1:
            self._diff[i + 1] += rate
            self._diff[j] -= rate

    def length(self, i: int) -> int:
        return min(self.t1, self.t0 + (i + 1) * self.step) - (self.t0 + i * self.step)

    def mean_gpus(self) -> list[float]:
        out, run = [], 0.0
        for i in range(self.n):
            run += self._diff[i]
            ln = self.length(i)
            out.append(round((self.gs[i] + run * ln) / ln, 4))
        return out


def build(snap: Snapshot, cluster: ClusterConfig, since: int, until: int, now: int,
          team: str | None = None) -> dict:
    """The whole report as JSON-ready data. ``team`` narrows every figure to one team
    (capacity and unreserved stay the cluster's)."""
    if until <= since:
        raise ValueError("until must be after since")
    p0, p1 = since, until
    e1 = max(p0, min(p1, now))  # end of the elapsed part
    ref = max(p0, min(p1 - 1, now))

    pools = {p.name: p for p in cluster.pools}
    cap = sum(p.gpus for p in cluster.pools) * (p1 - p0)
    cap_elapsed = sum(p.gpus for p in cluster.pools) * (e1 - p0)

    runs_by_grant: dict[int, list[RunFact]] = defaultdict(list)
    for r in snap.runs:
        runs_by_grant[r.grant_id].append(r)

    team_names = [t.name for t in cluster.teams]
    for g in snap.grants:
        if g.team not in team_names:
            team_names.append(g.team)
    wanted = (lambda name: name == team) if team is not None else (lambda name: True)

    # Held GPU-seconds of every team per pool (the cluster's, even with ``team``): unreserved.
    held_by_pool: dict[str, int] = defaultdict(int)
    # GPU-seconds per (team, pool) cell, in _Acc field order; teams, pools and the total are
    # summed from the few cells afterwards, so the per-grant work is one list update.
    cells: dict[tuple[str, str], list[int]] = {}
    projects: list[dict] = []
    breaches: list[dict] = []
    waits: list[int] = []
    wait_sources = {"measured": 0, "granted_start": 0}
    starts_late = 0

    step = _bucket_len(p1 - p0)
    reserved_tl: dict[str, dict[str, _Series]] = {n: {} for n in pools}
    used_tl: dict[str, dict[str, _Series]] = {n: {} for n in pools}
    horizon = now + DAY
    future: list[GrantFact] = []
    c0 = max(p0, now)  # committed: reserved time in P from now on; [p0, e1) + [c0, p1) = P

    for g in snap.grants:
        # Every figure is the overlap of an interval with the window *as it stands*
        # [start, end) (or, for refunds, with the cut-off part [end, gross_end)), clipped to P
        # or E first: an overlap is never negative, and the window as it stands is what
        # admission keeps within capacity (the cut-off part may be granted again).
        w, gs0, ge = g.width, g.start, g.end
        lo = gs0 if gs0 > p0 else p0
        hi_e = ge if ge < e1 else e1
        held = w * (hi_e - lo) if hi_e > lo else 0
        held_by_pool[g.pool] += held
        if team is not None and g.team != team:
            continue
        if ge > now and ge > gs0:
            future.append(g)
            if ge > horizon:
                horizon = ge
        gross_end = g.gross_end
        hi = ge if ge < p1 else p1
        granted_p = w * (hi - lo) if hi > lo else 0
        r_lo = ge if ge > p0 else p0
        r_hi = gross_end if gross_end < p1 else p1
        refunded_p = w * (r_hi - r_lo) if r_hi > r_lo else 0
        if granted_p == 0 and refunded_p == 0 and not (p0 <= g.created_at < p1):
            continue
        key = (g.team, g.pool)
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = [0] * 10
        cell[0] += granted_p
        cell[1] += refunded_p
        cell[2] += granted_p
        cell[3] += held
        c_lo = gs0 if gs0 > c0 else c0
        if hi > c_lo:
            cell[4] += w * (hi - c_lo)
        cell[9] += 1
        used_whole = used_held = 0
        runs = runs_by_grant.get(g.id)
        if runs:
            for r in runs:
                used_whole += run_used(r, FAR_PAST, FAR_FUTURE, now)
                if held:
                    used_held += run_used(r, lo, hi_e, now)
                span = run_span(r, now)
                if span is not None and g.pool in used_tl and held:
                    ser = used_tl[g.pool].get(g.team)
                    if ser is None:
                        ser = used_tl[g.pool][g.team] = _Series(p0, p1, step)
                    ser.add(max(span[0], lo), min(span[1], hi_e), span[2])
        # Used is what jobs ran inside the window they held (a job killed a few seconds after
        # its window's end does not count beyond it), so used <= held and idle = held - used.
        if used_held > held:
            used_held = held
        cell[5] += used_held
        cell[6] += held - used_held
        breach_p = 0
        for b0, b1, bw in snap.breaches.get(g.id, ()) if g.breach_gs > 0 else ():
            b_lo, b_hi = max(b0, lo), min(b1, hi_e)
            if b_hi > b_lo:
                breach_p += bw * (b_hi - b_lo)
        if breach_p > held:
            breach_p = held
        if breach_p > 0:
            cell[7] += 1
            cell[8] += breach_p
            breaches.append({"grant": g.id, "project": g.project_id, "team": g.team, "pool": g.pool,
                             "breach_gpu_hours": _h(breach_p), "grant_breach_gpu_hours": _h(g.breach_gs)})
        if g.pool in reserved_tl:
            ser = reserved_tl[g.pool].get(g.team)
            if ser is None:
                ser = reserved_tl[g.pool][g.team] = _Series(p0, p1, step)
            ser.add(gs0, ge, float(w))

        wait: int | None = None
        if p0 <= g.created_at < p1 and ge > gs0:
            actual = g.started_at if g.started_at is not None else gs0
            wait = max(0, actual - g.created_at)
            waits.append(wait)
            wait_sources["measured" if g.started_at is not None else "granted_start"] += 1
        offset = None if g.started_at is None else g.started_at - g.promised_start
        if offset is not None and offset > 0:
            starts_late += 1
        granted_whole = w * (ge - gs0) if ge > gs0 else 0
        projects.append({
            "grant": g.id, "project": g.project_id, "team": g.team, "pool": g.pool, "gpus": w,
            "state": g.state, "submitted_at": g.created_at,
            "promised_start": g.promised_start, "promised_end": g.promised_end,
            "start": gs0, "end": ge, "started_at": g.started_at,
            "start_delay_s": None if offset is None else max(0, offset),
            "started_early_s": None if offset is None else max(0, -offset),
            "wait_s": wait,
            "granted_gpu_hours": granted_whole / H,
            "reserved_gpu_hours": granted_whole / H,
            "used_gpu_hours": used_whole / H,
            "refunded_gpu_hours": w * (gross_end - ge) / H if gross_end > ge else 0.0,
            "breach_gpu_hours": g.breach_gs / H,
            "used_over_granted": _ratio(used_whole, granted_whole),
        })

    total = _Acc()
    by_team: dict[str, _Acc] = {n: _Acc() for n in team_names}
    by_pool: dict[str, _Acc] = {n: _Acc() for n in pools}
    for (t_name, p_name), cell in sorted(cells.items()):
        acc = _Acc(*cell)
        total.add(acc)
        by_team.setdefault(t_name, _Acc()).add(acc)
        by_pool.setdefault(p_name, _Acc()).add(acc)  # a pool gone from the config shows too

    # -- decisions ------------------------------------------------------------------------
    team_of = {g.project_id: g.team for g in snap.grants}
    decisions: dict[str, int] = {"granted": 0, "refused": 0, "cancelled": 0, "replaced": 0}
    reasons: dict[str, int] = {}
    for ev in snap.events:
        ev_team = ev.team if ev.team is not None else team_of.get(ev.subject)
        if not (p0 <= ev.at < p1) or (team is not None and ev_team != team):
            continue
        if ev.kind in decisions:
            decisions[ev.kind] += 1
        if ev.kind == "refused":
            key = ev.reason or "unknown"
            reasons[key] = reasons.get(key, 0) + 1

    # -- teams ----------------------------------------------------------------------------
    teams_out = _teams(snap, cluster, team_names, by_team, total, p0, p1, e1, now, ref, team, wanted)

    # -- pools ----------------------------------------------------------------------------
    pools_out = []
    unreserved = 0
    for name, acc in by_pool.items():
        pool = pools.get(name)
        gpus = pool.gpus if pool is not None else 0
        pcap = gpus * (p1 - p0)
        pcap_e = gpus * (e1 - p0)
        # Never below zero: only a pool shrunk in the config after its grants were made
        # holds more than its capacity (the identities in docs/report.md assume it did not).
        pool_unreserved = max(0, pcap_e - held_by_pool.get(name, 0))
        unreserved += pool_unreserved
        res_tl, use_tl = reserved_tl.get(name, {}), used_tl.get(name, {})
        tl_teams = [t for t in team_names if t in res_tl or t in use_tl]
        base = _Series(p0, p1, step)
        used_series = {t: use_tl[t].mean_gpus() if t in use_tl else [0.0] * base.n for t in tl_teams}
        for t in used_series:  # no use is known for what has not happened yet
            used_series[t] = [v if p0 + i * step < e1 else None for i, v in enumerate(used_series[t])]  # type: ignore[misc]
        pools_out.append({
            "pool": name, "gpu_type": None if pool is None else pool.gpu_type, "gpus": gpus,
            "in_config": pool is not None,
            "capacity_gpu_hours": _h(pcap), "elapsed_capacity_gpu_hours": _h(pcap_e),
            **acc.json(),
            "unreserved_gpu_hours": _h(pool_unreserved),
            "utilisation": _ratio(acc.used, pcap_e),
            "timeline": {
                "bucket_s": step,
                "starts": [p0 + i * step for i in range(base.n)],
                "capacity_gpus": [gpus] * base.n,
                "reserved_gpus": {t: res_tl[t].mean_gpus() if t in res_tl else [0.0] * base.n for t in tl_teams},
                "used_gpus": used_series,
            },
            "calendar": _calendar(name, gpus, [g for g in future if g.pool == name], team_names, now,
                                  min(horizon, now + CALENDAR_MAX_DAYS * DAY)),
        })

    projects.sort(key=lambda p: (p["start"], p["grant"]))
    empty = total.grants == 0 and sum(decisions.values()) == 0 and total.used == 0
    return {
        "period": {"since": p0, "until": p1, "now": now, "elapsed_until": e1, "reference": ref,
                   "seconds": p1 - p0, "since_utc": utc(p0), "until_utc": utc(p1), "now_utc": utc(now)},
        "team": team,
        "empty": empty,
        "message": "nothing in this period: no grants, job runs or decisions" if empty else None,
        "capacity_gpu_hours": _h(cap),
        "elapsed_capacity_gpu_hours": _h(cap_elapsed),
        **total.json(),
        "unreserved_gpu_hours": _h(unreserved),
        "utilisation": {
            "used_over_capacity": _ratio(total.used, cap_elapsed),
            "used_over_held": _ratio(total.used, total.held),
            "held_over_capacity": _ratio(total.held, cap_elapsed),
        },
        "guarantee_breaches": {"count": total.breach_count, "gpu_hours": _h(total.breach), "grants": breaches},
        "admissions": decisions,
        "refusals": {"count": decisions["refused"], "by_reason": dict(sorted(reasons.items()))},
        "wait": {
            "count": len(waits),
            "p50_s": percentile(waits, 50), "p95_s": percentile(waits, 95),
            "p50_hours": None if not waits else percentile(waits, 50) / H,  # type: ignore[operator]
            "p95_hours": None if not waits else percentile(waits, 95) / H,  # type: ignore[operator]
            "sources": wait_sources,
            "started_late": starts_late,
        },
        "teams": teams_out,
        "pools": pools_out,
        "projects": projects,
        "lending": _lending(snap, p0, e1, team),
    }


FREE = "(no window)"
"""The lender of GPUs no grant's window held."""


def _lending(snap: Snapshot, p0: int, e1: int, team: str | None) -> dict[str, Any]:
    """GPU-hours lent to best-effort work in [p0, e1), by lender and borrower
    (docs/lending.md). ``team`` keeps the lending it lent or borrowed."""
    by: dict[tuple[str, str], int] = {}
    preemptions = 0
    for f in snap.lent:
        lender = f.lender or FREE
        if team is not None and team not in (f.borrower, f.lender):
            continue
        gs = f.gpus * _ov(f.start, e1 if f.end is None else f.end, p0, e1)
        if gs:
            by[(lender, f.borrower)] = by.get((lender, f.borrower), 0) + gs
        if f.preempted and f.end is not None and p0 <= f.end < e1:
            preemptions += 1
    return {
        "lent_gpu_hours": _h(sum(by.values())),
        "preemptions": preemptions,
        "by": [{"lender": lender, "borrower": borrower, "gpu_hours": _h(gs)}
               for (lender, borrower), gs in sorted(by.items())],
    }


def _teams(snap: Snapshot, cluster: ClusterConfig, names: list[str], by_team: dict[str, _Acc], total: _Acc,
           p0: int, p1: int, e1: int, now: int, ref: int, only: str | None, wanted) -> list[dict]:  # type: ignore[no-untyped-def]
    cfgs = {t.name: t for t in cluster.teams}
    # The allowance each team is entitled to over P, prorated by the part of each allowance
    # period P covers ("none" periods: the whole allowance).
    entitled: dict[str, float] = {}
    for n in names:
        cfg = cfgs.get(n)
        if cfg is None:
            continue
        if cfg.period == "none":
            entitled[n] = float(cfg.allowance_gpu_seconds)
            continue
        amt, t = 0.0, p0
        while t < p1:
            a0, a1 = period_bounds(t, cfg.period)
            amt += cfg.allowance_gpu_seconds * _ov(a0, a1, p0, p1) / (a1 - a0)
            t = a1
        entitled[n] = amt
    entitled_total = sum(entitled.values())
    grants_by_team: dict[str, list[GrantFact]] = defaultdict(list)
    for g in snap.grants:
        grants_by_team[g.team].append(g)

    out = []
    for n in names:
        if not wanted(n):
            continue
        acc = by_team.get(n, _Acc())
        cfg = cfgs.get(n)
        item: dict = {"team": n, "in_config": cfg is not None, **acc.json(), "grants": acc.grants}
        item["share_of_cluster"] = _ratio(acc.reserved, total.reserved) if only is None else None
        item["share_of_allowance"] = (entitled[n] / entitled_total) if n in entitled and entitled_total > 0 else None
        item["entitled_gpu_hours"] = _h(entitled[n]) if n in entitled else None
        if cfg is None:
            item.update({"period": None, "allowance_gpu_hours": None, "remaining_gpu_hours": None,
                         "overdrawn_gpu_hours": None,
                         "allowance_period_start": None, "allowance_period_end": None,
                         "burndown": None, "forecast": None})
            out.append(item)
            continue
        a0, a1 = period_bounds(ref, cfg.period)
        booked_events = _bookings(grants_by_team[n], cfg.period, snap.breaches)
        remaining = cfg.allowance_gpu_seconds - _booked_by(booked_events, a0, ref)
        item.update({
            "period": cfg.period,
            "allowance_gpu_hours": _h(cfg.allowance_gpu_seconds),
            # Admission never books past the allowance; only an allowance lowered in the config
            # after the bookings leaves less than nothing, and that shows as overdrawn.
            "remaining_gpu_hours": _h(max(0, remaining)),
            "overdrawn_gpu_hours": _h(max(0, -remaining)),
            "allowance_period_start": None if cfg.period == "none" else a0,
            "allowance_period_end": None if cfg.period == "none" else a1,
        })
        item["burndown"] = _burndown(booked_events, cfg.allowance_gpu_seconds, cfg.period, p0, p1, ref,
                                     _bucket_len(p1 - p0))
        # Forecast: the team's net booking rate over the elapsed report period, carried on.
        net_booked = sum(gs for at, _p, gs in booked_events if p0 <= at < e1)
        elapsed = e1 - p0
        # More given back than booked (refunds of earlier bookings) consumes nothing.
        rate = max(0, net_booked) / elapsed if elapsed > 0 else 0.0
        runs_out = None
        if remaining <= 0:
            runs_out = e1
        elif rate > 0:
            runs_out = e1 + math.ceil(remaining / rate)
        before_reset = runs_out is not None and (cfg.period == "none" or runs_out < a1)
        item["forecast"] = {
            "rate_gpu_hours_per_day": rate * DAY / H,
            "runs_out_at": runs_out if before_reset else None,
            "note": ("already used up" if remaining <= 0 else
                     "runs out before the allowance resets" if before_reset else
                     "no net bookings in the period" if rate == 0 else
                     "does not run out before the allowance resets"),
        }
        out.append(item)
    return out


class _Periods:
    """``period_bounds`` with the last answer kept: sweeps ask about the same period again
    and again, and each fresh answer costs a datetime conversion."""

    def __init__(self, period: str) -> None:
        self.period = period
        self.lo, self.hi = 0, 0

    def start(self, t: int) -> int:
        if not (self.lo <= t < self.hi):
            self.lo, self.hi = period_bounds(t, self.period)
        return self.lo

    def split(self, start: int, end: int, width: int) -> list[tuple[int, int]]:
        """Like ``split_by_period``."""
        out = []
        t = start
        while t < end:
            p0 = self.start(t)
            stop = min(end, self.hi)
            out.append((p0, width * (stop - t)))
            t = stop
        return out


def _bookings(grants: Iterable[GrantFact], period: str,
              breaches: dict[int, list[tuple[int, int, int]]]) -> list[tuple[int, int, int]]:
    """(when, allowance period start, +/- GPU-seconds): charges at grant time, refunds when
    the grant was cut (``ended_at``) and for breaches (when the span not provided ended),
    each split by allowance period like the core does."""
    ev: list[tuple[int, int, int]] = []
    periods = _Periods(period)
    for g in grants:
        gross_end = g.gross_end
        for ps, gs in periods.split(g.start, gross_end, g.width):
            ev.append((g.created_at, ps, gs))
        if g.end < gross_end:
            when = g.ended_at if g.ended_at is not None else g.end
            for ps, gs in periods.split(g.end, gross_end, g.width):
                ev.append((when, ps, -gs))
        for b0, b1, w in breaches.get(g.id, ()):
            for ps, gs in periods.split(b0, b1, w):
                ev.append((b1, ps, -gs))
    ev.sort()
    return ev


def _booked_by(events: list[tuple[int, int, int]], period_start: int, t: int) -> int:
    return sum(gs for at, ps, gs in events if at <= t and ps == period_start)


BURNDOWN_EXACT = 2000  # up to this many bookings in the period, every step is kept


def _burndown(events: list[tuple[int, int, int]], allowance: int, period: str, p0: int, p1: int,
              ref: int, step: int) -> dict:
    """Remaining allowance (GPU-hours) over [p0, ref] as parallel lists ``times`` and
    ``remaining_gpu_hours``: at every booking, cancellation and allowance reset when there
    are few, else at every reset and every timeline bucket boundary (``step`` seconds)."""
    points: list[int] = [p0, ref]
    periods = _Periods(period)
    t = p0
    while period != "none":
        periods.start(t)
        if periods.hi > ref:
            break
        points.append(periods.hi)
        t = periods.hi
    inside = [at for at, _ps, _gs in events if p0 < at <= ref]
    if len(inside) <= BURNDOWN_EXACT:
        points.extend(inside)
    else:
        points.extend(range(p0 + step, ref, step))
    points = sorted(set(points))
    booked: dict[int, int] = defaultdict(int)
    i, n = 0, len(events)
    times, remaining = [], []
    for t in points:
        while i < n and events[i][0] <= t:
            booked[events[i][1]] += events[i][2]
            i += 1
        times.append(t)
        remaining.append(_h(max(0, allowance - booked.get(periods.start(t), 0))))
    return {"times": times, "remaining_gpu_hours": remaining, "allowance_gpu_hours": _h(allowance)}


def _calendar(pool: str, gpus: int, grants: list[GrantFact], team_names: list[str], now: int,
              horizon: int) -> dict:
    """Who holds what from ``now`` on: every live window, and GPUs reserved per team over time."""
    grants = sorted(grants, key=lambda g: (g.start, g.id))
    span = max(1, horizon - now)
    step = _bucket_len(span)
    series: dict[str, _Series] = {}
    for g in grants:
        s = series.get(g.team)
        if s is None:
            s = series[g.team] = _Series(now, horizon, step)
        s.add(g.start, g.end, float(g.width))
    n = max(1, -(-span // step))
    return {
        "from": now, "to": horizon, "bucket_s": step,
        "starts": [now + i * step for i in range(n)],
        "reserved_gpus": {t: series[t].mean_gpus() for t in team_names if t in series},
        "capacity_gpus": gpus,
        "grants": [{"grant": g.id, "project": g.project_id, "team": g.team, "gpus": g.width,
                    "start": g.start, "end": g.end, "state": g.state} for g in grants],
    }
