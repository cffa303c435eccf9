"""The expected start, measured: how close ``core.expect`` comes to when jobs really start.

At the submission of every ``every``-th job that is not started at once, the ``cellsched``
policy asks :func:`cellsched.core.expect.expected_starts` for the new grant's expected start
(the replay runs with the simulator's indexed ``Waiting``, the same rule as the core's plain
pass) with team ratios from the jobs that ended in the last 30 simulated days
(:class:`History`). After the replay, :func:`accuracy` compares, for jobs that waited at least
an hour, the expected start and the promise with the real start.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque

from cellsched.core.expect import ARRIVALS_S, WINDOW_S, Ratios, grant_ratio, ratios_of
from cellsched.core.stats import percentile

MIN_WAIT_S = 3600


class History:
    """Ended grants of the last ``window_s`` seconds: per team their (window length, ratio of
    held to granted window), sorted (what the ledger's ``ratios`` reads, kept incrementally)."""

    def __init__(self, window_s: int = WINDOW_S) -> None:
        self.window_s = window_s
        self.ended: deque[tuple[int, str, tuple[int, float]]] = deque()
        self.per: dict[str, list[tuple[int, float]]] = {}
        self.every: list[tuple[int, float]] = []
        self._held: Ratios | None = None

    def add(self, t: int, team: str, held: int, length: int) -> None:
        """A grant of ``team`` with a window of ``length`` seconds, released at ``t`` having
        held it ``held`` seconds."""
        if length <= 0:
            return
        x = (length, grant_ratio(held, length))
        self.ended.append((t, team, x))
        insort(self.per.setdefault(team, []), x)
        insort(self.every, x)
        self._held = None

    def ratios(self, now: int) -> Ratios:
        ended = self.ended
        while ended and ended[0][0] < now - self.window_s:
            _, team, x = ended.popleft()
            xs = self.per[team]
            del xs[bisect_left(xs, x)]
            del self.every[bisect_left(self.every, x)]
            self._held = None
        if self._held is None:
            self._held = ratios_of(self.per, self.every, self.window_s)
        return self._held


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
