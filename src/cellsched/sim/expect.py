"""The expected start, measured: how close ``core.expect`` comes to when jobs really start.

At the submission of every ``every``-th job that is not started at once, the ``cellsched``
policy asks :func:`cellsched.core.expect.expected_starts` for the new grant's expected start
(the replay runs with the simulator's indexed ``Waiting``, the same rule as the core's plain
pass) with team ratios from the jobs that ended in the last 30 simulated days
(:class:`History`). After the replay, :func:`accuracy` compares, for jobs that waited at least
an hour, the expected start and the promise with the real start.
"""

from __future__ import annotations

from collections import deque

from cellsched.core.expect import ARRIVALS_S, MIN_GRANTS, WINDOW_S, Ratios, ratios_from
from cellsched.core.stats import percentile

MIN_WAIT_S = 3600


class History:
    """Ended grants of the last ``window_s`` seconds: per team the GPU-seconds held and
    granted, kept as running sums (what the ledger's ``ratios`` reads, incrementally)."""

    def __init__(self, window_s: int = WINDOW_S) -> None:
        self.window_s = window_s
        self.ended: deque[tuple[int, str, int, int]] = deque()
        self.held: dict[str, int] = {}
        self.granted: dict[str, int] = {}
        self.count: dict[str, int] = {}

    def add(self, t: int, team: str, held: int, granted: int) -> None:
        self.ended.append((t, team, held, granted))
        self.held[team] = self.held.get(team, 0) + held
        self.granted[team] = self.granted.get(team, 0) + granted
        self.count[team] = self.count.get(team, 0) + 1

    def ratios(self, now: int) -> Ratios:
        ended = self.ended
        while ended and ended[0][0] < now - self.window_s:
            _, team, h, g = ended.popleft()
            self.held[team] -= h
            self.granted[team] -= g
            self.count[team] -= 1
        # One pseudo-row per team: ratios_from sums them the same way.
        rows = []
        for team in sorted(self.count):
            n = self.count[team]
            if n:
                rows.append((team, self.held[team], self.granted[team], n))
        r = ratios_from(((t, h, g) for t, h, g, _ in rows), self.window_s, min_grants=1)
        teams = {t: r.teams[t] for t, _, _, n in rows if n >= MIN_GRANTS}
        counts = {t: n for t, _, _, n in rows}
        return Ratios(teams, r.cluster, counts, sum(counts.values()), self.window_s)


def recent_arrivals(jobs, refused, last: int, now: int,
                    period: int = ARRIVALS_S) -> list[tuple[int, str, str | None, int, int]]:
    """The replay's later work (``core.expect``): the jobs admitted in the last ``period``
    seconds up to job ``last`` (``jobs`` in submission order; ``refused``: seqs refused), as
    (offset from now at which each is submitted again, team, pool (any), width, window)."""
    out = []
    i = last
    while i >= 0 and jobs[i].submit > now - period:
        j = jobs[i]
        if j.seq not in refused:
            out.append((j.submit - now + period, j.team, None, j.gpus, j.requested))
        i -= 1
    out.reverse()
    return out


def accuracy(samples: dict[int, tuple[int, int, int]], start: list[int]) -> dict[str, object]:
    """``samples``: job seq -> (submit, promise, expected). For jobs that waited at least an
    hour: median and p90 of |estimate - actual| / actual wait, for the expected start and
    for the promise."""
    exp_err: list[float] = []
    prom_err: list[float] = []
    for seq, (submit, promise, expected) in samples.items():
        s = start[seq]
        wait = s - submit
        if s < 0 or wait < MIN_WAIT_S:
            continue
        exp_err.append(abs(expected - s) / wait)
        prom_err.append(abs(promise - s) / wait)
    exp_err.sort()
    prom_err.sort()

    def q(xs: list[float], p: int) -> float | None:
        v = percentile(xs, p, presorted=True)
        return None if v is None else round(v, 3)

    return {
        "sampled": len(samples),
        "waited_1h": len(exp_err),
        "expected_err_p50": q(exp_err, 50),
        "expected_err_p90": q(exp_err, 90),
        "promise_err_p50": q(prom_err, 50),
        "promise_err_p90": q(prom_err, 90),
    }
