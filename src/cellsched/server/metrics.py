"""``/metrics``: the server and its ledger in Prometheus' text format.

Two kinds of figures, in one registry per :class:`Metrics` (several apps may live in one
process, so never the global registry):

- **This process**, counted as it happens: submits by outcome, refusals by reason and the
  admission latency histogram (:meth:`Metrics.observe_submit`, called by the submit
  endpoint). They start at zero when the server starts, as counters do; Prometheus' ``rate``
  and ``increase`` handle the reset.
- **The ledger**, computed at scrape time: grants by state, GPU-hours granted, held, used,
  refunded, committed and idle per team and pool, guarantee breaches, allowances left, and
  the period's decisions and refusals by reason (which survive a restart), all by the
  utilisation report's own computation (:mod:`cellsched.report.compute`) over the current
  period (:func:`current_period`). Plus the daemon's lease (holder, heartbeat age, last
  reconcile pass), read fresh at every scrape (one row).

The report computation is cached by the ledger's event sequence (:class:`Reports`): every
ledger write appends an event, so an unchanged sequence means unchanged rows, and a scrape
costs one ``SELECT`` of the sequence. Figures that grow with the clock alone (held, used,
idle) are recomputed at least every :data:`MAX_AGE_S` seconds; a busy ledger is recomputed
at most every :data:`MIN_AGE_S` seconds, or every :data:`COST_FACTOR` times as long as the
computation took if that is longer. The dashboard (``cellsched.server.dashboard``) shares
the same cache.

What is exposed: team, pool and reason names, counts and GPU-hours, and the daemon's host,
pid and epoch. No project names, users, specs or tokens. ``docs/metrics.md`` lists every
metric.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from cellsched.core.admission import REASONS
from cellsched.report.period import current_period
from cellsched.runtime.clock import now_s
from cellsched.service import Env

log = logging.getLogger("cellsched.server.metrics")

router = APIRouter()

#: A computation from the ledger is reused for this long whatever the ledger did, so a busy
#: ledger costs at most one computation per key every MIN_AGE_S seconds.
MIN_AGE_S = 5.0
#: ... and at most this long while the ledger's event sequence stands still: held, used and
#: idle GPU-hours grow with the clock alone.
MAX_AGE_S = 60.0
#: ... and for at least this many times as long as it took: a slow computation (a ledger of
#: 100,000 grants, the dashboard's charts) then costs at most about a tenth of a core, however
#: busy the ledger.
COST_FACTOR = 10.0
#: Different (period, team, kind) keys kept; the dashboard takes periods from the query.
CACHE_ENTRIES = 32

#: Admission latency buckets (seconds): a submit is one ledger transaction, milliseconds to
#: a few hundred of them; the tail up to 10 s shows a ledger in trouble.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# The report's figures exported per team and pool: (metric suffix, report key, help).
GPU_HOUR_FIGURES = (
    ("granted", "granted_gpu_hours",
     "GPU-hours of grant windows as they stand (after any early release or cancel) inside the period: held + committed"),
    ("booked", "booked_gpu_hours", "GPU-hours of grant windows as first granted inside the period: granted + refunded"),
    ("held", "held_gpu_hours", "GPU-hours reserved in the elapsed part of the period"),
    ("used", "used_gpu_hours", "GPU-hours jobs ran in the elapsed part of the period"),
    ("refunded", "refunded_gpu_hours",
     ("GPU-hours of the period's windows given back by cancel, replacement or early finish (breaches: see "
      "cellsched_guarantee_breach_gpu_hours)")),
    ("committed", "committed_gpu_hours", "GPU-hours reserved in the period after now"),
    ("idle_reserved", "idle_reserved_gpu_hours", "GPU-hours held but not used by jobs in the elapsed part of the period"),
)


@dataclass(frozen=True)
class Cached:
    """One computation: its value, the ledger event sequence it saw, when it was made
    (``at``: the clock's epoch second; ``made``: monotonic) and how long it took."""

    value: Any
    seq: int
    at: int
    made: float
    took_s: float


class Reports:
    """Report computations over one ledger, cached by (key, ledger event sequence).

    ``get(key, fn)`` returns ``fn(now)``'s value computed at most ``max(min_age_s,
    cost_factor x its computing time)`` ago, or at most :attr:`max_age_s` ago if the
    ledger's event sequence has not moved since. One computation per key at a time: a
    second caller for the same key waits for the first one's result instead of computing
    it again."""

    def __init__(self, env: Env, clock: Callable[[], int] = now_s, min_age_s: float = MIN_AGE_S,
                 max_age_s: float = MAX_AGE_S, cost_factor: float = COST_FACTOR,
                 entries: int = CACHE_ENTRIES) -> None:
        self.env, self.clock = env, clock
        self.min_age_s, self.max_age_s, self.cost_factor = min_age_s, max_age_s, cost_factor
        self.entries = entries
        self._cache: OrderedDict[tuple[Any, ...], Cached] = OrderedDict()
        self._lock = threading.Lock()  # guards _cache and _locks
        self._locks: dict[tuple[Any, ...], threading.Lock] = {}

    def seq(self) -> int:
        """The ledger's event sequence now (one small query)."""
        from cellsched.ledger.snapshot import ledger_seq

        with self.env.ledger.read() as s:
            return ledger_seq(s)

    def clear(self) -> None:
        """Forget every result (the cluster config changed: teams, pools, allowances)."""
        with self._lock:
            self._cache.clear()

    def _fresh(self, key: tuple[Any, ...]) -> Cached | None:
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            return None
        age = time.monotonic() - hit.made
        if age < max(self.min_age_s, self.cost_factor * hit.took_s):
            return hit
        if age < self.max_age_s and self.seq() == hit.seq:
            return hit
        return None

    def get(self, key: tuple[Any, ...], fn: Callable[[int], Any]) -> Cached:
        hit = self._fresh(key)
        if hit is not None:
            return hit
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            hit = self._fresh(key)  # computed by whoever held the lock before us
            if hit is not None:
                return hit
            # The sequence is read before the rows: a write landing in between makes the
            # next caller recompute rather than keep a result older than its sequence says.
            seq = self.seq()
            now = self.clock()
            t = time.monotonic()
            value = fn(now)
            made = time.monotonic()
            entry = Cached(value, seq, now, made, made - t)
            with self._lock:
                self._cache[key] = entry
                self._cache.move_to_end(key)
                while len(self._cache) > self.entries:
                    old, _ = self._cache.popitem(last=False)
                    self._locks.pop(old, None)
            return entry

    # -- what the server computes ---------------------------------------------------------

    def report(self, since: int, until: int, team: str | None = None) -> Cached:
        """``compute.build`` for [since, until) (one team's with ``team``), as
        ``cellsched report --json`` computes it (without the daemon line)."""

        def fn(now: int) -> dict[str, Any]:
            from cellsched.report import compute, snapshot

            snap = snapshot.load(self.env.ledger, self.env.cluster, since, until)
            return compute.build(snap, self.env.cluster, since, until, now, team=team)

        return self.get(("report", since, until, team), fn)

    def figures(self) -> Cached:
        """What ``/metrics`` exports from the ledger, for the current period (a dict: see
        :func:`ledger_figures`)."""
        now = self.clock()
        since, until = current_period(self.env.cluster, now)
        return self.get(("figures", since, until), lambda t: ledger_figures(self.env, since, until, t))


def ledger_figures(env: Env, since: int, until: int, now: int) -> dict[str, Any]:
    """The report for [since, until) cut per (team, pool): one snapshot, the whole report,
    then the report narrowed to each team (whose ``pools`` are that team's cells).

    Returns ``{"period": (since, until), "report": <whole report>, "cells": {(team, pool):
    {figure: GPU-hours}}, "breaches": {(team, pool): (grants, GPU-hours)}, "states":
    {(team, pool, state): grants}}``."""
    from cellsched.report import compute, snapshot

    snap = snapshot.load(env.ledger, env.cluster, since, until)
    whole = compute.build(snap, env.cluster, since, until, now)
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for t in whole["teams"]:
        one = compute.build(snap, env.cluster, since, until, now, team=t["team"])
        for pl in one["pools"]:
            cells[(t["team"], pl["pool"])] = {key: pl[key] for _n, key, _h in GPU_HOUR_FIGURES}
    breaches: dict[tuple[str, str], tuple[int, float]] = {}
    for b in whole["guarantee_breaches"]["grants"]:
        n, gh = breaches.get((b["team"], b["pool"]), (0, 0.0))
        breaches[(b["team"], b["pool"])] = (n + 1, gh + b["breach_gpu_hours"])
    # Grants whose window touches the period or lies ahead (every live grant is among them).
    states: dict[tuple[str, str, str], int] = {}
    for g in snap.grants:
        if g.gross_end > since or g.created_at >= since:
            k = (g.team, g.pool, g.state)
            states[k] = states.get(k, 0) + 1
    return {"period": (since, until), "report": whole, "cells": cells, "breaches": breaches,
            "states": dict(sorted(states.items()))}


class Metrics:
    """The server's Prometheus instruments and its ledger collector, in their own registry."""

    def __init__(self, state: Any) -> None:
        self.state = state
        self.registry = CollectorRegistry(auto_describe=False)
        self.reports = Reports(state.env)
        self.submits = Counter("cellsched_submits", "Submits answered by this server process, by outcome "
                               "(granted, refused, existing: an identical spec already granted or queued; "
                               "queued: best-effort work accepted)",
                               ["outcome"], registry=self.registry)
        self.refusals = Counter("cellsched_refusals", "Refusals by this server process, by reason",
                                ["reason"], registry=self.registry)
        self.admission = Histogram("cellsched_admission_seconds",
                                   "Time the server took to admit a submit and record the decision (seconds)",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)
        for outcome in ("granted", "refused", "existing"):
            self.submits.labels(outcome)  # zero series exist before the first submit
        for reason in REASONS:
            self.refusals.labels(reason)
        self.registry.register(_LedgerCollector(self))

    def observe_submit(self, seconds: float, outcome: dict[str, Any]) -> None:
        """Called by the submit endpoint after each admission: its latency, and the outcome
        (the submit JSON: ``decision`` or ``granted``, ``existing``, ``refusal.reason``)."""
        self.admission.observe(max(0.0, seconds))
        refusal = outcome.get("refusal")
        granted = outcome.get("granted")
        if granted is None:
            granted = outcome.get("decision") in ("granted", "queued") if "decision" in outcome else not refusal
        if outcome.get("decision") == "queued" and not outcome.get("existing"):
            self.submits.labels("queued").inc()  # best-effort work: accepted, no window
        elif not granted:
            reason = refusal.get("reason") if isinstance(refusal, dict) else None
            self.submits.labels("refused").inc()
            self.refusals.labels(str(reason or "unknown")).inc()
        elif outcome.get("existing"):
            self.submits.labels("existing").inc()
        else:
            self.submits.labels("granted").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _LedgerCollector:
    """Figures read at scrape time: the ledger's (cached by its event sequence) and the
    daemon's lease (fresh). A ledger that cannot be read is ``cellsched_ledger_up 0``, not
    a failed scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("cellsched_ledger_up", "1 if the server could read the ledger at this scrape")
        try:
            families = list(self._ledger()) + list(self._daemon())
        except Exception as e:  # the database is down or unreachable: say so, keep the rest
            log.warning("metrics: cannot read the ledger: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _ledger(self) -> Iterator[Metric]:
        reports = self.m.reports
        cached = reports.figures()
        fig: dict[str, Any] = cached.value
        r = fig["report"]
        since, until = fig["period"]
        cluster = reports.env.cluster

        seq = CounterMetricFamily("cellsched_ledger_events", "Events in the ledger's chain (every write appends one)")
        seq.add_metric([], reports.seq())
        yield seq
        age = GaugeMetricFamily("cellsched_report_age_seconds",
                                "Age of the ledger figures below (recomputed when the ledger moves, at most "
                                f"every {MIN_AGE_S:g} s, and at least every {MAX_AGE_S:g} s)")
        age.add_metric([], max(0.0, time.monotonic() - cached.made))
        yield age
        took = GaugeMetricFamily("cellsched_report_compute_seconds", "Time the last computation of the ledger figures took")
        took.add_metric([], cached.took_s)
        yield took
        for name, value, text in (("start", since, "Start"), ("end", until, "End (exclusive)")):
            g = GaugeMetricFamily(f"cellsched_period_{name}_timestamp_seconds",
                                  f"{text} of the period the GPU-hour figures cover (epoch seconds, UTC)")
            g.add_metric([], value)
            yield g

        grants = GaugeMetricFamily("cellsched_grants", "Grants whose window touches the period or lies ahead, by state",
                                   labels=["team", "pool", "state"])
        for (team, pool, state), n in fig["states"].items():
            grants.add_metric([team, pool, state], n)
        yield grants

        pools = [p.name for p in cluster.pools]
        teams = [t["team"] for t in r["teams"]]
        for suffix, key, text in GPU_HOUR_FIGURES:
            g = GaugeMetricFamily(f"cellsched_{suffix}_gpu_hours", f"{text} (current period)", labels=["team", "pool"])
            for team in teams:
                for pool in pools:
                    g.add_metric([team, pool], fig["cells"].get((team, pool), {}).get(key, 0.0))
            yield g
        bn = GaugeMetricFamily("cellsched_guarantee_breached_grants",
                               "Grants of the period the cluster did not provide in full (expected: zero)",
                               labels=["team", "pool"])
        bh = GaugeMetricFamily("cellsched_guarantee_breach_gpu_hours",
                               "GPU-hours of granted windows the cluster did not provide, refunded to the team "
                               "(current period; expected: zero)", labels=["team", "pool"])
        for team in teams:
            for pool in pools:
                n, gh = fig["breaches"].get((team, pool), (0, 0.0))
                bn.add_metric([team, pool], n)
                bh.add_metric([team, pool], gh)
        yield bn
        yield bh

        allowance = GaugeMetricFamily("cellsched_team_allowance_gpu_hours", "A team's allowance per allowance period",
                                      labels=["team", "period"])
        remaining = GaugeMetricFamily("cellsched_team_remaining_gpu_hours",
                                      "A team's allowance left in its allowance period now (what `cellsched budget` shows)",
                                      labels=["team"])
        for t in r["teams"]:
            if t["allowance_gpu_hours"] is None:
                continue  # in the ledger, no longer in the config
            allowance.add_metric([t["team"], t["period"]], t["allowance_gpu_hours"])
            remaining.add_metric([t["team"]], t["remaining_gpu_hours"])
        yield allowance
        yield remaining

        gpus = GaugeMetricFamily("cellsched_pool_gpus", "GPUs a pool declares in the cluster config", labels=["pool"])
        cap = GaugeMetricFamily("cellsched_elapsed_capacity_gpu_hours",
                                "A pool's GPUs times the elapsed part of the period", labels=["pool"])
        for pl in r["pools"]:
            gpus.add_metric([pl["pool"]], pl["gpus"])
            cap.add_metric([pl["pool"]], pl["elapsed_capacity_gpu_hours"])
        yield gpus
        yield cap

        dec = GaugeMetricFamily("cellsched_period_decisions",
                                "Decisions the ledger recorded in the period, by kind (survives server restarts)",
                                labels=["decision"])
        for kind, n in r["admissions"].items():
            dec.add_metric([kind], n)
        yield dec
        ref = GaugeMetricFamily("cellsched_period_refusals",
                                "Refusals the ledger recorded in the period, by reason (survives server restarts)",
                                labels=["reason"])
        by_reason = {reason: 0 for reason in REASONS}
        by_reason.update(r["refusals"]["by_reason"])
        for reason, n in by_reason.items():
            ref.add_metric([reason], n)
        yield ref

    def _daemon(self) -> Iterator[Metric]:
        from cellsched.ledger import lease

        d = lease.state(self.m.reports.env.ledger)
        up = GaugeMetricFamily("cellsched_daemon_up", "1 while a daemon holds an unexpired lease on the ledger")
        up.add_metric([], 1 if d.alive else 0)
        yield up
        if d.epoch is None:
            return  # no daemon has ever served this ledger
        info = InfoMetricFamily("cellsched_daemon_lease", "The lease on the ledger: its holder, host, pid and epoch")
        info.add_metric([], {"holder": d.holder or "", "host": d.host or "", "pid": str(d.pid),
                             "epoch": str(d.epoch)})
        yield info
        epoch = GaugeMetricFamily("cellsched_daemon_lease_epoch",
                                  "The lease's epoch (fencing token; +1 at every takeover)")
        epoch.add_metric([], d.epoch)
        yield epoch
        if d.renewed_at is not None:
            hb = GaugeMetricFamily("cellsched_daemon_heartbeat_age_seconds",
                                   "Seconds since the lease holder's last heartbeat (database clock)")
            hb.add_metric([], max(0.0, d.db_now - d.renewed_at))
            yield hb
            last = GaugeMetricFamily("cellsched_daemon_last_heartbeat_timestamp_seconds",
                                     "The lease holder's last heartbeat (epoch seconds, database clock)")
            last.add_metric([], d.renewed_at)
            yield last
        if d.pass_ms is not None:
            p = GaugeMetricFamily("cellsched_reconcile_pass_seconds",
                                  "Duration of the daemon's last reconcile pass (sent with its heartbeat)")
            p.add_metric([], d.pass_ms / 1000)
            yield p
        census = getattr(d, "pool_gpus", None)
        if census:
            pg = GaugeMetricFamily("cellsched_daemon_pool_ray_gpus",
                                   "GPUs Ray has on each pool's nodes, as the daemon last saw them", labels=["pool"])
            for pool, n in sorted(census.items()):
                pg.add_metric([pool], n)
            yield pg
        for name, value, text in (("ray_gpus", d.ray_gpus, "GPUs the daemon found in Ray at its start"),
                                  ("declared_gpus", d.declared_gpus, "GPUs the cluster config declares")):
            if value is not None:
                g = GaugeMetricFamily(f"cellsched_daemon_{name}", text)
                g.add_metric([], value)
                yield g


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text exposition. No authentication: aggregates only (docs/metrics.md)."""
    from cellsched.server.app import state_of

    m: Metrics = state_of(request).metrics
    # The classic text format (0.0.4), which every Prometheus version scrapes; it is what
    # generate_latest writes.
    return Response(m.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)
