"""What ``cellsched simulate`` accepts: each option's range and each trace column's, in one
place, so the command (which checks every option before it reads anything), the library
functions and docs/simulate.md agree.

The bounds lie far beyond any real study. What they stop is a value that would overflow a
float, exhaust memory or run for days: a 1e20 estimate factor, a log-normal sigma of 1000, a
job of 1e300 seconds, a pool of 1e12 GPUs. The replay's cost grows with the longest window
(the node calendar keeps a mask per hour, docs/admission.md), so every run time, read or
computed, is at most :data:`MAX_SECONDS`: a 100-year request costs about 300 MB and 2 s.
"""

from __future__ import annotations

import math

from cellsched.errors import BadInput

YEAR_S = 31_557_600  # a Julian year, seconds
MAX_SECONDS = 100 * YEAR_S  # submit_s, duration_s, requested_s, a computed request, --checkpoint-interval
MAX_GPUS = 1_000_000  # the gpus column and --gpus: as many as a cluster file's pool may hold
MAX_ESTIMATE_FACTOR = 100.0
MAX_ESTIMATE_NOISE = 5.0  # sigma of the log-normal: e^5 = 148 times at one standard deviation
MAX_ALLOWANCE_SCALE = 1e6
MAX_EXPECT_EVERY = 1_000_000_000
MAX_SEED = 2**63 - 1  # a seed fits a signed 64-bit integer (JSON readers); negative seeds alias
MAX_TRACE_BYTES = 2 * 1024**3  # 2 GiB of CSV: tens of millions of jobs


def shown(value: object) -> str:
    """A value the user gave, short enough for one line (a 30-digit number stays whole)."""
    s = f"{value:g}" if isinstance(value, float) else str(value)
    return s if len(s) <= 40 else f"{s[:20]}... ({len(s):,} characters)"


def _num(x: float) -> str:
    return f"{int(x):,}" if x == int(x) else f"{x:g}"


def number_from(option: str, value: float, lo: float, hi: float, *, above_lo: bool = False) -> None:
    """``value`` is a finite number from ``lo`` to ``hi`` (above ``lo`` with ``above_lo``),
    else :class:`BadInput` naming ``option`` and the range."""
    low_ok = value > lo if above_lo else value >= lo
    if not (low_ok and value <= hi and math.isfinite(value)):
        span = f"above {_num(lo)} and at most {_num(hi)}" if above_lo else f"from {_num(lo)} to {_num(hi)}"
        raise BadInput(f"{option} must be a number {span}, got {shown(value)}")


def whole_from(option: str, value: int, lo: int, hi: int, unit: str = "", hi_note: str = "") -> None:
    """``value`` is a whole number from ``lo`` to ``hi``, else :class:`BadInput` naming
    ``option`` and the range (``unit`` after both bounds, ``hi_note`` after the upper one)."""
    if not lo <= value <= hi:
        raise BadInput(f"{option} must be at least {lo:,}{unit} and at most {hi:,}{unit}{hi_note}, "
                       f"got {shown(value)}")


def check_options(
    *,
    gpus: int | None = None,
    estimate_factor: float = 1.5,
    allowance_scale: float = 1.0,
    estimate_noise: float = 0.0,
    noise_seed: int = 1,
    expect_every: int = 0,
    best_effort_share: float = 0.0,
    best_effort_seed: int = 1,
    checkpoint_interval: int = 0,
) -> None:
    """Every numeric option of ``simulate`` within its range, or :class:`BadInput` naming the
    first that is not: the command calls this before it reads the cluster file or the trace."""
    if gpus is not None:
        whole_from("--gpus", gpus, 1, MAX_GPUS)
    number_from("--estimate-factor", estimate_factor, 1.0, MAX_ESTIMATE_FACTOR)
    number_from("--allowance-scale", allowance_scale, 0.0, MAX_ALLOWANCE_SCALE, above_lo=True)
    number_from("--estimate-noise", estimate_noise, 0.0, MAX_ESTIMATE_NOISE)
    whole_from("--noise-seed", noise_seed, 0, MAX_SEED, hi_note=" (2^63 - 1)")
    whole_from("--expect-every", expect_every, 0, MAX_EXPECT_EVERY)
    number_from("--best-effort-share", best_effort_share, 0.0, 1.0)
    whole_from("--best-effort-seed", best_effort_seed, 0, MAX_SEED, hi_note=" (2^63 - 1)")
    whole_from("--checkpoint-interval", checkpoint_interval, 0, MAX_SECONDS, " seconds", " (100 years)")
