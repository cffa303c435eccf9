"""Trace input: CSV ``job_id,submit_s,duration_s,gpus,team[,requested_s][,class]``.

Each row becomes one :class:`TraceJob`, a one-job project. Its *requested* run time is what a
user would have asked for (``requested_s`` when the trace has it, else the true duration times
the estimate factor, rounded up to a whole second); its *true* duration is known to the
simulator only when the job ends. Bad rows are skipped and reported with their line numbers;
too many of them, or a missing column, is :class:`~cellsched.errors.BadInput`.

The optional ``class`` column says whether a job is ``guaranteed`` (the default, also when
the cell is empty) or ``best-effort`` (no window: it runs on idle GPUs and may be preempted,
``sim/lending.py``); any other value is :class:`~cellsched.errors.BadInput` naming the line
(a misspelt class must not quietly turn lent work into guaranteed work, or the reverse).
:func:`mark_best_effort` makes a seeded random share of a trace's jobs best-effort instead.
"""

from __future__ import annotations

import csv
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cellsched.errors import BadInput, NotFound, one_line
from cellsched.sim.limits import (
    MAX_ESTIMATE_FACTOR,
    MAX_ESTIMATE_NOISE,
    MAX_GPUS,
    MAX_SECONDS,
    MAX_TRACE_BYTES,
    number_from,
    shown,
)

REQUIRED = ("job_id", "submit_s", "duration_s", "gpus", "team")
CLASSES = {"guaranteed": False, "best-effort": True}  # the ``class`` column: value -> best-effort
MAX_BAD_FRACTION = 0.01  # more bad rows than this (and more than MAX_BAD_ALWAYS) is an error
MAX_BAD_ALWAYS = 10


@dataclass(slots=True)
class TraceJob:
    """One trace row. ``seq`` is its position in submission order (the tie-breaker)."""

    seq: int
    job_id: str
    submit: int
    duration: int  # true run time, seconds
    gpus: int
    team: str
    requested: int  # what the user asked for, seconds
    best_effort: bool = False  # no window, runs on idle GPUs (sim/lending.py)

    @property
    def run(self) -> int:
        """Seconds the job actually holds GPUs: it is stopped at the end of what it asked for."""
        return self.duration if self.duration <= self.requested else self.requested


@dataclass
class Trace:
    """The jobs in submission order (ties by file order), and what was skipped."""

    source: str
    jobs: list[TraceJob]
    bad_rows: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)
    estimate_factor: float = 1.5
    requested_column: bool = False
    estimate_noise: float = 0.0  # sigma of the log-normal on the factor (add_estimate_noise)
    best_effort_from: str = ""  # "column class", "share S, seed N", or "" (every job guaranteed)

    def teams(self) -> list[str]:
        """Team names in order of first appearance."""
        seen: dict[str, None] = {}
        for j in self.jobs:
            seen.setdefault(j.team, None)
        return list(seen)

    def requested_gpu_seconds(self) -> dict[str, int]:
        """GPU-seconds each team's *guaranteed* jobs ask for (best-effort work is charged to
        an allowance of its own, never to the guaranteed one)."""
        out: dict[str, int] = {}
        for j in self.jobs:
            if not j.best_effort:
                out[j.team] = out.get(j.team, 0) + j.gpus * j.requested
        return out

    def best_effort_jobs(self) -> list[TraceJob]:
        """The best-effort jobs, in submission order (their ``seq`` is the trace's)."""
        return [j for j in self.jobs if j.best_effort]

    def guaranteed(self) -> Trace:
        """The trace with the best-effort jobs removed, renumbered: exactly what a trace file
        without those rows reads as (the guaranteed schedule a lending replay must keep)."""
        kept = [j for j in self.jobs if not j.best_effort]
        jobs = [TraceJob(k, j.job_id, j.submit, j.duration, j.gpus, j.team, j.requested) for k, j in enumerate(kept)]
        return Trace(self.source, jobs, self.bad_rows, self.estimate_factor, self.requested_column,
                     self.estimate_noise)

    def summary(self) -> dict[str, object]:
        """What was read, for people (one line) and for ``--json``."""
        jobs = self.jobs
        if jobs:
            span = max(j.submit for j in jobs) - min(j.submit for j in jobs)
            gs = sum(j.gpus * j.duration for j in jobs)
            widest = max(j.gpus for j in jobs)
        else:
            span = gs = widest = 0
        return {
            "source": self.source,
            "jobs": len(jobs),
            "bad_rows": len(self.bad_rows),
            "bad_lines": [n for n, _ in self.bad_rows[:10]],
            "teams": len(self.teams()),
            "span_s": span,
            "gpu_hours": round(gs / 3600, 1),
            "widest_job_gpus": widest,
            "best_effort_jobs": sum(1 for j in jobs if j.best_effort),
            "best_effort": self.best_effort_from or None,
            "requested": "column requested_s" if self.requested_column else (
                f"duration x {self.estimate_factor:g}" if not self.estimate_noise
                else f"duration x {self.estimate_factor:g} x lognormal(sigma {self.estimate_noise:g}), at least 1"),
        }

    def summary_line(self) -> str:
        s = self.summary()
        line = (
            f"{s['source']}: {s['jobs']:,} jobs, {s['teams']} teams, span {s['span_s'] / 86400:,.1f} days, "
            f"{s['gpu_hours']:,.0f} GPU-hours, widest {s['widest_job_gpus']} GPUs, requested = {s['requested']}"
        )
        if self.best_effort_from:
            line += f", {s['best_effort_jobs']:,} of them best-effort ({self.best_effort_from})"
        if self.bad_rows:
            first = ", ".join(f"line {n} ({why})" for n, why in self.bad_rows[:3])
            more = "" if len(self.bad_rows) <= 3 else f" and {len(self.bad_rows) - 3} more"
            line += f"; skipped {len(self.bad_rows)} bad rows: {first}{more}"
        return line


# Each number column's upper bound, and how the bound reads in a message.
MAXIMA = {
    "submit_s": (MAX_SECONDS, "3,155,760,000 (100 years)"),
    "duration_s": (MAX_SECONDS, "3,155,760,000 (100 years)"),
    "requested_s": (MAX_SECONDS, "3,155,760,000 (100 years)"),
    "gpus": (MAX_GPUS, f"{MAX_GPUS:,}"),
}


def _int(text: str, name: str, minimum: int) -> int:
    text = text.strip()
    maximum, most = MAXIMA[name]
    try:
        v = int(text)
    except ValueError:
        try:
            x = float(text)
        except ValueError:
            raise ValueError(f"{name} {shown(text)!r} is not a number") from None
        if math.isnan(x) or (math.isinf(x) and "inf" in text.lower()):
            raise ValueError(f"{name} {shown(text)!r} is not finite") from None
        # Before rounding: 1e300 would become a 301-digit int, and a number too long for
        # int() (over 4,300 digits) reads as an infinite float.
        if x > maximum:
            raise ValueError(f"{name} {shown(text)} is above {most}") from None
        if x < -maximum:
            raise ValueError(f"{name} {shown(text)} is below {minimum}") from None
        v = math.ceil(x) if name != "submit_s" else math.floor(x)
    if v < minimum:
        raise ValueError(f"{name} {shown(v)} is below {minimum}")
    if v > maximum:
        raise ValueError(f"{name} {shown(text)} is above {most}")
    return v


def requested_of(duration: int, factor: float) -> int:
    """``ceil(duration x factor)``, at most :data:`MAX_SECONDS` (a request of more than a
    century is one the replay could not afford and no study needs)."""
    x = duration * factor
    return MAX_SECONDS if x > MAX_SECONDS else math.ceil(x - 1e-9)


def parse_trace(
    lines,  # an iterable of text lines (a file object)
    source: str,
    estimate_factor: float = 1.5,
    max_bad_fraction: float = MAX_BAD_FRACTION,
) -> Trace:
    """Read a trace from text lines; see the module docstring for the rules."""
    number_from("--estimate-factor", estimate_factor, 1.0, MAX_ESTIMATE_FACTOR)
    reader = csv.reader(lines)
    try:
        header = next(reader)
    except StopIteration:
        raise BadInput(f"{source}: file is empty") from None
    except csv.Error as e:
        raise BadInput(f"{source}:1: not CSV: {e}") from None
    cols = [h.strip() for h in header]
    missing = [c for c in REQUIRED if c not in cols]
    if missing:
        raise BadInput(f"{source}:1: header lacks column(s) {', '.join(missing)} (need {','.join(REQUIRED)})")
    ix = [cols.index(c) for c in REQUIRED]
    ireq = cols.index("requested_s") if "requested_s" in cols else None
    icls = cols.index("class") if "class" in cols else None
    width = max(ix + [i for i in (ireq, icls) if i is not None]) + 1
    rows: list[tuple[int, int, str, int, int, str, int, bool]] = []
    bad: list[tuple[int, str]] = []
    seen_ids: set[str] = set()
    line = 1
    try:
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < width:
                bad.append((line, f"{len(row)} fields, need {width}"))
                continue
            try:
                jid = row[ix[0]].strip()
                if not jid:
                    raise ValueError("empty job_id")
                if jid in seen_ids:
                    raise ValueError(f"duplicate job_id {jid!r}")
                submit = _int(row[ix[1]], "submit_s", 0)
                duration = _int(row[ix[2]], "duration_s", 1)
                gpus = _int(row[ix[3]], "gpus", 1)
                team = row[ix[4]].strip()
                if not team:
                    raise ValueError("empty team")
                if ireq is not None and row[ireq].strip():
                    requested = _int(row[ireq], "requested_s", 1)
                else:
                    requested = requested_of(duration, estimate_factor)
            except ValueError as e:
                bad.append((line, str(e)))
                continue
            be = False
            if icls is not None and (cls := row[icls].strip()):
                if cls not in CLASSES:
                    raise BadInput(f"{source}:{line}: column class: {shown(cls)!r} is not guaranteed or best-effort")
                be = CLASSES[cls]
            seen_ids.add(jid)
            rows.append((submit, len(rows), jid, duration, gpus, team, requested, be))
    except csv.Error as e:
        raise BadInput(f"{source}:{reader.line_num}: not CSV: {e}") from None
    total = len(rows) + len(bad)
    if bad and len(bad) > max(MAX_BAD_ALWAYS, max_bad_fraction * total):
        n, why = bad[0]
        raise BadInput(f"{source}:{n}: {why} ({len(bad):,} bad rows of {total:,}; first shown)")
    if not rows:
        raise BadInput(f"{source}: no usable rows")
    rows.sort()  # by submit time, then file order: the trace's own order breaks ties
    jobs = [TraceJob(i, r[2], r[0], r[3], r[4], r[5], r[6], r[7]) for i, r in enumerate(rows)]
    return Trace(source, jobs, bad, estimate_factor, ireq is not None,
                 best_effort_from="column class" if icls is not None else "")


def add_estimate_noise(trace: Trace, sigma: float, seed: int = 0) -> Trace:
    """Per job, the estimate factor times a log-normal draw (median 1, ``sigma`` the standard
    deviation of its log), from one seeded generator in trace order; the factor is at least
    1.0 (nobody asks for less than the trace ran: the work stays the trace's). Rows whose
    request came from a ``requested_s`` column keep it. Same seed, same trace."""
    number_from("--estimate-noise", sigma, 0.0, MAX_ESTIMATE_NOISE)
    if sigma == 0 or trace.requested_column:
        return trace
    import random

    rnd = random.Random(seed)
    f = trace.estimate_factor
    jobs = []
    for j in trace.jobs:
        factor = max(1.0, f * rnd.lognormvariate(0.0, sigma))
        jobs.append(TraceJob(j.seq, j.job_id, j.submit, j.duration, j.gpus, j.team,
                             requested_of(j.duration, factor), j.best_effort))
    return Trace(trace.source, jobs, trace.bad_rows, f, trace.requested_column, sigma, trace.best_effort_from)


def mark_best_effort(trace: Trace, share: float, seed: int = 1, widest: int | None = None) -> Trace:
    """``round(share x jobs)`` jobs made best-effort, drawn by one seeded generator (same
    seed, same jobs); the rest guaranteed. With ``widest``, drawn among the jobs of at most
    that many GPUs (still a share of all jobs; at most all of those). A trace whose ``class``
    column already says which jobs are best-effort is :class:`BadInput`: the two ways would
    silently disagree."""
    number_from("--best-effort-share", share, 0.0, 1.0)
    if share == 0:
        return trace
    if trace.best_effort_from == "column class":
        raise BadInput(f"{trace.source}: the class column already says which jobs are best-effort; "
                       "drop --best-effort-share or the column")
    import random

    pool = [j.seq for j in trace.jobs if widest is None or j.gpus <= widest]
    picked = set(random.Random(seed).sample(pool, min(len(pool), round(share * len(trace.jobs)))))
    jobs = [TraceJob(j.seq, j.job_id, j.submit, j.duration, j.gpus, j.team, j.requested, j.seq in picked)
            for j in trace.jobs]
    return Trace(trace.source, jobs, trace.bad_rows, trace.estimate_factor, trace.requested_column,
                 trace.estimate_noise, f"share {share:g}, seed {seed}" + (f", at most {widest} GPUs" if widest else ""))


def load_trace(path: str | Path, estimate_factor: float = 1.5, max_bad_fraction: float = MAX_BAD_FRACTION) -> Trace:
    """Load a trace file: a regular file (a symbolic link to one is fine) of at most
    :data:`~cellsched.sim.limits.MAX_TRACE_BYTES` (2 GiB). Anything else (missing, a
    directory, a FIFO, a device, too large, unreadable) is :class:`BadInput` before a row is
    parsed; nothing but a regular file is opened, and that without blocking, so a FIFO is
    refused instead of waited on and /dev/zero is never read."""
    p = Path(path)
    where = one_line(str(p))
    number_from("--estimate-factor", estimate_factor, 1.0, MAX_ESTIMATE_FACTOR)
    fd = -1
    try:
        st = os.stat(p)
        if stat.S_ISREG(st.st_mode):
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            st = os.fstat(fd)  # what was opened, should the path have changed since the stat
    except FileNotFoundError:
        raise NotFound(f"{where}: no such file") from None
    except OSError as e:
        raise BadInput(f"{where}: cannot read: {e.strerror}") from None
    try:
        if stat.S_ISDIR(st.st_mode):
            raise BadInput(f"{where}: is a directory, not a trace file")
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{where}: is a {_kind(st.st_mode)}, not a regular file; give a CSV file")
        if st.st_size > MAX_TRACE_BYTES:
            raise BadInput(f"{where}: {st.st_size:,} bytes is too large (a trace is at most 2 GiB)")
        with os.fdopen(fd, newline="", encoding="utf-8") as fh:
            fd = -1  # the file object closes it now
            return parse_trace(fh, where, estimate_factor, max_bad_fraction)
    except UnicodeDecodeError as e:
        raise BadInput(f"{where}: not UTF-8 text (bad byte at offset {e.start})") from None
    except OSError as e:
        raise BadInput(f"{where}: cannot read: {e.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _kind(mode: int) -> str:
    """What a file that is not a regular one is, in words."""
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"
