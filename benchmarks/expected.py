"""The expected start's estimators, side by side, on one simulator replay.

    python benchmarks/expected.py --trace ../shared/traces/itp.csv --cluster examples/sim-cluster.toml
    python benchmarks/expected.py ... --estimate-noise 0.5 --jobs 20000 --every 20

One ``cellsched`` replay (the policy exactly as ``cellsched simulate`` runs it); at the
submission of every ``--every``-th job that waits, every estimator below replays the same
live calendar with its own ratios, and each answer is scored against the job's real start
(jobs that waited at least 1 h: median and p90 of |estimate - actual| / actual wait, and the
signed median, positive when the estimate is late). Prints one JSON object. The estimator
``cellsched`` is the one ``submit``, ``status`` and ``simulate`` use (core/expect.py: the
median of the per-grant ratios of held to granted window of the team's 20 grants with the
windows nearest in length, a running grant the median of those above the share it has run,
later work as in the last 24 h); the
others are the alternatives it was chosen among: ``flat_*`` replays on one node per pool,
names without ``arr`` let no later work arrive, ``arrN`` lets the last N hours' work arrive
again. Ratio statistics: ``gs_mean`` (GPU-seconds held over granted, summed: the one before),
``median`` / ``mean`` of per-grant ratios, ``shrunk_*`` per team and width class (1, 2-8,
more GPUs) shrunk towards the team's and the cluster's with weight 10 grants; ``median_*`` /
``qNN_*`` the median / NNth percentile of per-grant ratios, ``cond`` for a running grant of
the ratios above the share it has run (``nocond``: the old rule, past it the ratio of what
is left), ``cluster_*`` the cluster's for every team, ``min20`` a team's own only with 20
grants; ``nearK_qNN`` the core's rule with the K grants of the nearest window lengths and
the NNth percentile (``near20_q50`` is ``cellsched``); ``*_cal`` scales the expected wait
by the median actual / expected wait of the last 100 sampled grants (of that estimator) that have started.
``mcK`` (``mcK_qNN``) replays K times with each grant's ratio drawn from its nearest grants'
and takes the median (NNth percentile) start; ``nheldB`` carries a neighbour's held seconds
to the window asked about as ``held x (W / W_i) ** (B / 100)`` (100: the core's). The error
taken apart: ``odur`` replays with every live grant holding what its job really held,
``oarr`` with the jobs really submitted next, ``oboth`` with both (the real start, exactly),
``odur_noarr`` true durations and no later work (docs/simulate.md, "Where the error comes
from").
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from cellsched.core.expect import (ARRIVALS_S, MAX_ARRIVALS, WINDOW_S, Ratios, expected_starts, grant_ratio, held_share,
                                   nearest_span, quantile_of, ratios_from)
from cellsched.core.stats import percentile
from cellsched.sim.compress import Waiting
from cellsched.sim.engine import Engine
from cellsched.sim.expect import History
from cellsched.sim.policies.cellsched import Cellsched
from cellsched.sim.setup import build_setup
from cellsched.sim.trace import Trace, TraceJob, add_estimate_noise, load_trace
from cellsched.spec.load import load_cluster


@dataclass(frozen=True)
class Fixed:
    """A ratio per (team, width) from a function: an estimator under test."""

    fn: Callable[[str, int], float]

    def of(self, team: str, width: int | None = None) -> float:
        return self.fn(team, width or 1)

    def held(self, team: str, length: int, elapsed: int = 0) -> int:
        # the core's rule for a ratio given by hand (no per-grant ratios)
        return Ratios(cluster=self.of(team)).held(team, length, elapsed)


def _q(xs: list[float], q: float, lo: int = 0) -> float:
    """The ``q`` quantile of the sorted ``xs[lo:]``: the median (the mean of the middle two
    when they are even), else the element of rank ``floor(q x n)`` (core's ``quantile_of``)."""
    n = len(xs) - lo
    if q == 0.5:
        m = lo + n // 2
        return xs[m] if n % 2 else (xs[m - 1] + xs[m]) / 2
    return xs[lo + min(n - 1, int(q * n))]


@dataclass
class Quantile:
    """Per-grant ratios per team (``min_grants`` or more, else the cluster's; ``scope``
    "cluster": the cluster's for everyone): a grant not started holds the ``q`` quantile of
    its window; a running one (``cond``) the ``q`` quantile of the ratios above the share
    it has run, else the old rule."""

    per: dict[str, list[float]]
    every: list[float]
    q: float = 0.5
    cond: bool = True
    min_grants: int = 3

    def held(self, team: str, length: int, elapsed: int = 0) -> int:
        xs = self.per.get(team)
        if xs is None or len(xs) < self.min_grants:
            xs = self.every
        if not xs or length <= 0:
            return length
        r = _q(xs, self.q)
        if self.cond and elapsed > 0:
            i = bisect_right(xs, elapsed / length)
            if i < len(xs):
                return held_share(length, _q(xs, self.q, i))
            return elapsed + held_share(length - elapsed, r)
        h = held_share(length, r)
        return elapsed + held_share(length - elapsed, r) if h <= elapsed else h


def est_quantile(q: float = 0.5, cond: bool = True, scope: str = "team", min_grants: int = 3):
    def make(rows) -> Quantile:
        per: dict[str, list[float]] = {}
        every = []
        for _, team, w, hs, gs in rows:
            if gs <= 0:
                continue
            r = grant_ratio(hs, gs)
            every.append(r)
            if scope == "team":
                per.setdefault(team, []).append(r)
        every.sort()
        for v in per.values():
            v.sort()
        return Quantile(per, every, q, cond, min_grants)
    return make


def est_near(nearest: int, q: float):
    """The core's estimator with ``nearest`` grants of the most similar window (0: all of
    the team's) and quantile ``q``."""
    def make(rows) -> Ratios:
        return ratios_from(((team, hs, gs) for _, team, _, hs, gs in rows), nearest=nearest, q=q)
    return make


@dataclass
class NearHeld:
    """A grant of window W holds the median over the ``nearest`` grants of its team (with
    ``min_grants``, else the cluster's) whose windows are nearest its own in length of
    ``held_i x (W / W_i) ** beta``: ``beta`` 1 is the core's (ratio x W), 0 the seconds its
    neighbours held. A team reruns the same work; a window carries the noise of its own
    estimate, the seconds its neighbours held do not. A running grant: the median of those
    above what it has held, past every one the ratio of what is left (as the core)."""

    per: dict[str, tuple[list[int], list[int]]]  # team ("" the cluster) -> (lengths sorted, helds)
    beta: float
    nearest: int = 20

    def held(self, team: str, length: int, elapsed: int = 0) -> int:
        if length <= 0:
            return 0
        lengths, helds = self.per.get(team) or self.per.get("", ([], []))
        if not lengths:
            return length
        lo, hi = nearest_span(lengths, length, self.nearest)
        xs = sorted(helds[i] * (length / lengths[i]) ** self.beta for i in range(lo, hi))
        if elapsed > 0:
            ys = [x for x in xs if x > elapsed]
            if not ys:
                rs = sorted(helds[i] / lengths[i] for i in range(lo, hi))
                return elapsed + held_share(length - elapsed, quantile_of(rs))
            xs = ys
        return max(elapsed + 1, min(length, math.ceil(quantile_of(xs) - 1e-9)))


def est_near_held(beta: float):
    def make(rows) -> NearHeld:
        per: dict[str, list[tuple[int, int]]] = {}
        every: list[tuple[int, int]] = []
        for _, team, _, hs, gs in rows:
            if gs > 0:
                x = (gs, min(max(hs, 1), gs))
                per.setdefault(team, []).append(x)
                every.append(x)
        out = {t: sorted(v) for t, v in per.items() if len(v) >= 3}
        out[""] = sorted(every)
        return NearHeld({t: ([x for x, _ in v], [h for _, h in v]) for t, v in out.items()}, beta)
    return make


class Ended:
    """Grants ended in the last 30 days: (t, team, width, held s, granted s)."""

    def __init__(self) -> None:
        self.rows: deque[tuple[int, str, int, int, int]] = deque()

    def add(self, t: int, team: str, width: int, held: int, granted: int) -> None:
        self.rows.append((t, team, width, held, granted))

    def window(self, now: int) -> deque[tuple[int, str, int, int, int]]:
        while self.rows and self.rows[0][0] < now - WINDOW_S:
            self.rows.popleft()
        return self.rows


def width_class(w: int) -> int:
    return 0 if w == 1 else 1 if w <= 8 else 2


def est_gs_mean(rows) -> Fixed:  # the estimator before this benchmark: GPU-seconds weighted, per team
    h: dict[str, int] = {}
    g: dict[str, int] = {}
    n: dict[str, int] = {}
    for _, team, w, hs, gs in rows:
        h[team] = h.get(team, 0) + w * hs
        g[team] = g.get(team, 0) + w * gs
        n[team] = n.get(team, 0) + 1
    cl = sum(h.values()) / max(1, sum(g.values())) if g else 1.0
    teams = {t: h[t] / g[t] for t in g if n[t] >= 3}
    return Fixed(lambda team, w: teams.get(team, cl))


def _per_grant(rows, stat) -> Fixed:  # type: ignore[no-untyped-def]
    """Each team's ``stat`` of its grants' held/granted ratios (3 or more), else the cluster's."""
    per: dict[str, list[float]] = {}
    allr = []
    for _, team, w, hs, gs in rows:
        r = hs / gs
        per.setdefault(team, []).append(r)
        allr.append(r)
    cl = stat(allr) if allr else 1.0
    teams = {t: stat(v) for t, v in per.items() if len(v) >= 3}
    return Fixed(lambda team, w: teams.get(team, cl))


def est_median(rows) -> Fixed:
    return _per_grant(rows, statistics.median)


def est_mean(rows) -> Fixed:  # unweighted mean of per-grant ratios
    return _per_grant(rows, statistics.fmean)


def est_shrunk(rows, k: float = 10.0, stat: str = "gs") -> Fixed:
    """Per (team, width class) with shrinkage towards the team's, the team's towards the
    cluster's: (n x own + k x parent) / (n + k)."""
    def acc(key, d, hs, gs, w):
        x = d.setdefault(key, [0.0, 0.0, 0])
        if stat == "gs":
            x[0] += w * hs
            x[1] += w * gs
        elif stat == "s":
            x[0] += hs
            x[1] += gs
        else:  # per-grant mean
            x[0] += hs / gs
            x[1] += 1
        x[2] += 1
    cl_d: dict = {}
    tm: dict = {}
    tw: dict = {}
    for _, team, w, hs, gs in rows:
        acc(0, cl_d, hs, gs, w)
        acc(team, tm, hs, gs, w)
        acc((team, width_class(w)), tw, hs, gs, w)
    cl = cl_d[0][0] / cl_d[0][1] if cl_d else 1.0
    team_r = {t: (x[2] * (x[0] / x[1]) + k * cl) / (x[2] + k) for t, x in tm.items()}
    tw_r = {key: (x[2] * (x[0] / x[1]) + k * team_r[key[0]]) / (x[2] + k) for key, x in tw.items()}
    return Fixed(lambda team, w: tw_r.get((team, width_class(w)), team_r.get(team, cl)))


class Sampled:
    """A Monte Carlo draw of the core's estimator: each grant holds a ratio drawn at random
    from the ratios :meth:`Ratios.like` gives it (a running one from those above the share
    it has run), instead of their median; ``mcK_*`` replays K such draws and takes the
    median start."""

    def __init__(self, r: Ratios, rng: random.Random) -> None:
        self.r, self.rng = r, rng

    def held(self, team: str, length: int, elapsed: int = 0) -> int:
        if length <= 0:
            return 0
        xs = self.r.like(team, length)
        if not xs:
            return self.r.held(team, length, elapsed)
        i = bisect_right(xs, elapsed / length) if elapsed > 0 else 0
        if i >= len(xs):
            return elapsed + held_share(length - elapsed, self.rng.choice(xs))
        return max(elapsed + 1, held_share(length, xs[self.rng.randrange(i, len(xs))]))


class Oracle:
    """For the error's decomposition (``o*`` estimators): a grant whose team is spelled
    ``team#seq`` holds what job ``seq`` really held (``jobs[seq].run``); any other (later
    work from the arrivals model) the core's estimate ``r``. With true durations and true
    arrivals the replay must give the real start: what is left is the replay's own."""

    def __init__(self, r: Ratios, jobs) -> None:
        self.r, self.jobs = r, jobs

    def held(self, team: str, length: int, elapsed: int = 0) -> int:
        if "#" in team:
            return max(elapsed + 1, min(length, self.jobs[int(team.split("#")[1])].run))
        return self.r.held(team, length, elapsed)


CAL_K = 100


class Probe(Cellsched):
    """The ``cellsched`` policy, asking every estimator at each sampled submission."""

    def __init__(self, setup, every: int, estimators: dict[str, tuple[str, Callable]]) -> None:
        super().__init__(setup, expect_every=0)
        self.every = every
        self.estimators = estimators
        self.ended = Ended()
        self.samples: dict[str, dict[int, tuple[int, int, int]]] = {n: {} for n in estimators}
        self.seconds = {n: 0.0 for n in estimators}
        self.shapes = {name: (p.gpus, p.gpus_per_node) for name, (p, _) in self.schedule.pools.items()}
        self.hist = History()
        self.raw: dict[str, list[tuple[int, int, int]]] = {}
        self.costs: dict[str, list[tuple[int, float]]] = {}  # per estimator: (live grants, CPU s) per estimate

    def on_submit(self, job: TraceJob, now: int) -> None:
        self._last_seq = job.seq
        super().on_submit(job, now)
        g = self.grants.get(job.seq)
        if g is not None and g.start > now and job.seq % self.every == 0:
            rows = self.ended.window(now)
            live = list(self.grants.items())
            for name, (shape, make) in self.estimators.items():
                t0 = time.process_time()
                r = make(rows) if make is not None else self.hist.ratios(now)
                pools = {n: x[0] for n, x in self.shapes.items()} if shape == "flat" else self.shapes
                arr, period = (), 0
                if name == "cellsched" or name.startswith(("mc", "o")):  # as the simulator asks it (sim/expect.py)
                    period = ARRIVALS_S
                    arr = self.arrivals(now, period)
                elif "arr" in name:
                    period = int(name.split("arr")[1].split("_")[0]) * 3600
                    arr = self.arrivals(now, period)
                def replay(lv, ratios, arr=arr, period=period, pools=pools) -> int:
                    return expected_starts(pools, lv, ratios, now, want=(job.seq,),
                                           waiting_set=lambda s: Waiting(s, self.rule_name), arrivals=arr,
                                           period=period).get(job.seq, g.start)

                if name.startswith("o"):  # the decomposition: odur / oarr / oboth, _noarr
                    true_dur = name.startswith(("odur", "oboth"))
                    if name.startswith(("oarr", "oboth")):  # the jobs really submitted next, once each
                        arr, period = self.true_arrivals(now, true_dur), 1 << 40
                    elif name.endswith("_noarr"):
                        arr, period = (), 0
                    lv = [(k, replace(x, team=f"{x.team}#{k}")) for k, x in live] if true_dur else live
                    e = replay(lv, Oracle(r, self.engine.jobs), arr, period)
                elif name.startswith("mc"):  # K draws, the median start (or the qNN of them)
                    k = int(name[2:].split("_")[0])
                    qq = int(name.split("_q")[1].split("_")[0]) / 100 if "_q" in name else 0.5
                    rng = random.Random(job.seq)
                    es = sorted(replay(live, Sampled(r, rng)) for _ in range(k))
                    e = es[min(k - 1, int(qq * k))]
                else:
                    e = replay(live, r)
                if name.endswith("_cal"):  # calibrated: the recent median of actual / expected wait
                    raw = self.raw.setdefault(name, [])
                    raw.append((job.seq, job.submit, e))
                    c = self.calibration(raw)
                    e = min(g.start, now + round(c * (e - now)))
                self.samples[name][job.seq] = (job.submit, g.start, e)
                dt = time.process_time() - t0
                self.seconds[name] += dt
                self.costs.setdefault(name, []).append((len(live), dt))

    def calibration(self, raw: list[tuple[int, int, int]], k: int = CAL_K) -> float:
        """The median of actual / expected wait over the last ``k`` sampled grants (of
        this estimator, uncalibrated) that have started, expected to wait 1 min or more
        (1.0 with fewer than 10)."""
        xs = []
        start = self.engine.start
        for seq, submit, e in reversed(raw):
            if start[seq] >= 0 and e - submit >= 60:
                xs.append((start[seq] - submit) / (e - submit))
                if len(xs) >= k:
                    break
        return statistics.median(xs) if len(xs) >= 10 else 1.0

    def arrivals(self, now: int, period: int) -> list[tuple[int, str, str, int, int]]:
        """Jobs submitted in [now - period, now], as they would be submitted again from now."""
        jobs = self.engine.jobs
        out = []
        i = self._last_seq
        while i >= 0 and jobs[i].submit >= now - period:
            j = jobs[i]
            out.append((j.submit - now + period, j.team, "main", j.gpus, j.requested))
            i -= 1
        out.reverse()
        return out

    def true_arrivals(self, now: int, true_dur: bool) -> list[tuple[int, str, str, int, int]]:
        """The next MAX_ARRIVALS jobs really submitted after this one (not refused), at their
        real offsets; ``true_dur``: each spelled ``team#seq`` (it holds its real run)."""
        jobs = self.engine.jobs
        out = []
        for j in jobs[self._last_seq + 1: self._last_seq + 1 + MAX_ARRIVALS]:
            if j.seq not in self.engine.refused and not j.best_effort:
                out.append((j.submit - now, f"{j.team}#{j.seq}" if true_dur else j.team, "main", j.gpus,
                            j.requested))
        return out

    def on_end(self, job: TraceJob, now: int) -> None:
        g = self.grants[job.seq]
        self.ended.add(now, job.team, job.gpus, now - g.start, g.end - g.start)
        self.hist.add(now, job.team, now - g.start, g.end - g.start)
        super().on_end(job, now)


def score(samples: dict[int, tuple[int, int, int]], start: list[int]) -> dict[str, object]:
    err, signed, prom = [], [], []
    for seq, (submit, promise, expected) in samples.items():
        s = start[seq]
        wait = s - submit
        if s < 0 or wait < 3600:
            continue
        err.append(abs(expected - s) / wait)
        signed.append((expected - s) / wait)
        prom.append(abs(promise - s) / wait)
    err.sort(), signed.sort(), prom.sort()
    q = lambda xs, p: None if not xs else round(percentile(xs, p, presorted=True), 3)
    return {"n": len(err), "p50": q(err, 50), "p90": q(err, 90), "signed_p50": q(signed, 50),
            "promise_p50": q(prom, 50), "promise_p90": q(prom, 90)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--estimate-noise", type=float, default=0.0)
    ap.add_argument("--noise-seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=0, help="only the first N jobs (0: all)")
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--only", nargs="*", default=None, help="estimators to run (default: all)")
    ap.add_argument("--dump", default=None, help="write every sample (submit, promise, expected, start) here")
    a = ap.parse_args()
    tr = add_estimate_noise(load_trace(a.trace), a.estimate_noise, a.noise_seed)
    if a.jobs:
        tr = Trace(tr.source, tr.jobs[: a.jobs], tr.bad_rows, tr.estimate_factor, tr.requested_column,
                   tr.estimate_noise, tr.best_effort_from)
    setup = build_setup(tr, load_cluster(a.cluster))
    estimators = {
        "cellsched": ("nodes", None),
        "flat_gs_mean": ("flat", est_gs_mean),
        "gs_mean": ("nodes", est_gs_mean),
        "median": ("nodes", est_median),
        "mean": ("nodes", est_mean),
        "shrunk_gs": ("nodes", lambda rows: est_shrunk(rows, 10, "gs")),
        "shrunk_s": ("nodes", lambda rows: est_shrunk(rows, 10, "s")),
        "shrunk_mean": ("nodes", lambda rows: est_shrunk(rows, 10, "mean")),
        "arr6": ("nodes", est_gs_mean),
        "arr24": ("nodes", est_gs_mean),
        "arr72": ("nodes", est_gs_mean),
        "median_arr24": ("nodes", est_median),
        "shrunk_arr24": ("nodes", lambda rows: est_shrunk(rows, 10, "gs")),
        "median_nocond_arr24": ("nodes", est_quantile(0.5, cond=False)),
        "median_cond_arr24": ("nodes", est_quantile(0.5)),
        "q40_cond_arr24": ("nodes", est_quantile(0.4)),
        "q60_cond_arr24": ("nodes", est_quantile(0.6)),
        "q70_cond_arr24": ("nodes", est_quantile(0.7)),
        "cluster_median_cond_arr24": ("nodes", est_quantile(0.5, scope="cluster")),
        "median_cond_min20_arr24": ("nodes", est_quantile(0.5, min_grants=20)),
        "near10_q40_arr24": ("nodes", est_near(10, 0.4)),
        "near20_q40_arr24": ("nodes", est_near(20, 0.4)),
        "near20_q50_arr24": ("nodes", est_near(20, 0.5)),
        "near40_q40_arr24": ("nodes", est_near(40, 0.4)),
        "near10_q50_arr24": ("nodes", est_near(10, 0.5)),
        "near40_q50_arr24": ("nodes", est_near(40, 0.5)),
        "near20_q30_arr24": ("nodes", est_near(20, 0.3)),
        "mc5": ("nodes", None),
        "mc11": ("nodes", None),
        "mc21": ("nodes", None),
        "mc11_q40": ("nodes", None),
        "nheld0_arr24": ("nodes", est_near_held(0.0)),
        "nheld25_arr24": ("nodes", est_near_held(0.25)),
        "nheld50_arr24": ("nodes", est_near_held(0.5)),
        "nheld75_arr24": ("nodes", est_near_held(0.75)),
        "nheld100_arr24": ("nodes", est_near_held(1.0)),
        "near20_q55_arr24": ("nodes", est_near(20, 0.55)),
        "near20_q60_arr24": ("nodes", est_near(20, 0.6)),
        "near20_q50_arr12": ("nodes", est_near(20, 0.5)),
        "near20_q50_arr48": ("nodes", est_near(20, 0.5)),
        "near20_q50_arr168": ("nodes", est_near(20, 0.5)),
        "odur": ("nodes", None),
        "odur_noarr": ("nodes", None),
        "oarr": ("nodes", None),
        "oboth": ("nodes", None),
        "gs_mean_arr24_cal": ("nodes", est_gs_mean),
        "median_cond_arr24_cal": ("nodes", est_quantile(0.5)),
        "median_nocond_arr24_cal": ("nodes", est_quantile(0.5, cond=False)),
    }
    if a.only:
        estimators = {k: v for k, v in estimators.items() if k in a.only}
    pol = Probe(setup, a.every, estimators)
    engine = Engine(setup.trace.jobs, setup.gpus, pol, setup.nodes)
    t0 = time.perf_counter()
    engine.run()
    def cost(rows: list[tuple[int, float]]) -> dict[str, object]:
        """CPU ms per estimate (median, p90, max) by live grants: up to 500, 1,000, 2,000, more."""
        out: dict[str, object] = {}
        for lo, hi in ((0, 500), (501, 1000), (1001, 2000), (2001, 1 << 30)):
            xs = sorted(dt for n, dt in rows if lo <= n <= hi)
            if xs:
                out[f"live_{lo}_{hi if hi < 1 << 30 else 'more'}"] = {
                    "n": len(xs), "ms_p50": round(1000 * xs[len(xs) // 2], 1),
                    "ms_p90": round(1000 * xs[int(len(xs) * 0.9)], 1), "ms_max": round(1000 * xs[-1], 1)}
        return out

    out = {"jobs": len(tr.jobs), "estimate_noise": a.estimate_noise, "every": a.every,
           "seconds": round(time.perf_counter() - t0, 1),
           "estimators": {n: {**score(pol.samples[n], engine.start), "seconds": round(pol.seconds[n], 1),
                              "cost": cost(pol.costs.get(n, []))}
                          for n in estimators}}
    if a.dump:
        with open(a.dump, "w") as f:
            json.dump({n: {seq: [*v, engine.start[seq]] for seq, v in pol.samples[n].items()} for n in estimators}, f)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
