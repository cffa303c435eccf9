"""How cellsched writes figures for people: the one place for times, durations, GPU-hours,
counts with their nouns and percentages, and the one table and JSON printer.

The CLI, the utilisation report (terminal and HTML) and the completion report all print
through these, so a figure reads the same wherever it appears:

- **Times** are UTC and always say so: ``2026-12-02 14:00 UTC``. UTC, not the reader's zone,
  because the lines people compare come from several places (a refusal message written by
  the admission core, a receipt, a report file sent to a colleague, a server in another
  zone), and one zone everywhere is the only way they agree. In a table the column header
  carries the zone (``start (UTC)``) and the cells the bare :func:`stamp`.
- **Durations**: ``45 s``, ``12 min``, ``3.5 h``, ``2 d 4 h``.
- **GPU-hours**: one decimal, thousands separated; a figure that is not zero never reads as
  zero (:func:`gpu_hours`). GPU-seconds are for programs (``--json``), never for people.
- **Counts**: ``1 GPU``, ``2 GPUs``, ``1,100 GPUs`` (:func:`plural`).

Light on purpose (the standard library only at import; rich inside :func:`console` and
:func:`table`), so ``cellsched budget`` through a server stays quick.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

ZONE = "UTC"
NONE = "-"  # what a missing figure or time reads as


# -- times ----------------------------------------------------------------------------------


def _utc(t: int | float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(t), dt.timezone.utc)


def _ymd_hm(t: int | float, sep: str) -> tuple[str, dt.datetime]:
    # Not strftime("%Y"): the C library does not pad years before 1000 (a spec may say 0001).
    d = _utc(t)
    return f"{d.year:04d}-{d.month:02d}-{d.day:02d}{sep}{d.hour:02d}:{d.minute:02d}", d


def stamp(t: int | float | None, seconds: bool = False) -> str:
    """A time without its zone, for a table cell under a header that names it
    (:func:`header`): ``2026-12-02 14:00`` (``:05`` more with ``seconds``)."""
    if t is None:
        return NONE
    s, d = _ymd_hm(t, " ")
    return f"{s}:{d.second:02d}" if seconds else s


def when(t: int | float | None, seconds: bool = False) -> str:
    """A time for people, with its zone: ``2026-12-02 14:00 UTC``."""
    return NONE if t is None else f"{stamp(t, seconds)} {ZONE}"


def span(t0: int | float | None, t1: int | float | None) -> str:
    """A window: ``2026-12-01 00:00 → 2026-12-01 12:00 UTC`` (the zone once, at the end)."""
    return f"{stamp(t0)} → {when(t1)}"


def header(name: str) -> str:
    """A time column's header: ``start (UTC)``."""
    return f"{name} ({ZONE})"


def iso(t: int | float | None) -> str | None:
    """A time for programs: ISO 8601 UTC (``2026-12-02T14:00:00Z``), None for None."""
    if t is None:
        return None
    s, d = _ymd_hm(t, "T")
    return f"{s}:{d.second:02d}Z"


# -- durations ------------------------------------------------------------------------------


def duration(seconds: int | float | None) -> str:
    """A duration for people: ``45 s``, ``12 min``, ``3.5 h``, ``2 d 4 h`` (negative with a
    leading ``-``; None is ``-``). Each unit until the next reads better: minutes from one,
    hours from one (one decimal below a day), days and whole hours from one day."""
    if seconds is None:
        return NONE
    sign = "-" if seconds < 0 else ""
    s = round(abs(float(seconds)))
    if s < 60:
        return f"{sign}{s} s"
    minutes = round(s / 60)
    if minutes < 60:
        return f"{sign}{minutes} min"
    if s < 86400 - 180:  # 23.95 h and up reads as a day
        return f"{sign}{_one_decimal(s / 3600)} h"
    hours = round(s / 3600)
    d, h = divmod(hours, 24)
    return f"{sign}{d:,} d" + (f" {h} h" if h else "")


def _one_decimal(x: float) -> str:
    return f"{x:,.1f}".removesuffix(".0")


# -- GPU-hours ------------------------------------------------------------------------------


def gpu_hours(x: float | None, *, fixed: bool = False) -> str:
    """GPU-hours for people, the one rule of every figure cellsched prints.

    One decimal with thousands separated (``1,234.5``; ``fixed`` keeps a trailing ``.0``
    for columns of figures, else it goes: ``12``). A figure that is not zero never reads as
    zero: below 0.1 GPU-h it keeps two significant digits (``0.05``, ``0.0028``; the smallest,
    one GPU-second, is ``0.00028``). Zero is ``0`` (``0.0`` fixed); None is ``-``."""
    if x is None:
        return NONE
    if x == 0:
        return "0.0" if fixed else "0"
    mag = abs(x)
    if mag < 0.095:  # would print as 0.0 or 0.1 with one decimal
        places = 1 - math.floor(math.log10(mag))
        return f"{x:.{places}f}".rstrip("0")
    text = f"{x:,.1f}"
    return text if fixed else text.removesuffix(".0")


def gpu_seconds_as_hours(gs: int | None, *, fixed: bool = False) -> str:
    """Integer GPU-seconds (the ledger's unit) as people's GPU-hours."""
    return gpu_hours(None if gs is None else gs / 3600, fixed=fixed)


def gpu_h(x: float | None) -> str:
    """GPU-hours with their unit: ``12.5 GPU-h``."""
    return f"{gpu_hours(x)} GPU-h"


# -- counts and ratios ----------------------------------------------------------------------


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``1 GPU``, ``2 GPUs``, ``1,100 GPUs``, ``0 files``; ``nouns`` for an irregular plural."""
    word = noun if n == 1 else (nouns or noun + "s")
    return f"{n:,} {word}"


def pct(x: float | None) -> str:
    """A ratio as a percentage with one decimal: ``71.2%``; None is ``-``."""
    return NONE if x is None else f"{x:.1%}"


def size(n: int) -> str:
    """Bytes for people: ``812 B``, ``4.2 KiB``, ``1.5 MiB``."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# -- printing -------------------------------------------------------------------------------


def console():  # type: ignore[no-untyped-def]
    """A rich console on stdout. Piped output is read by people later (logs, CI) or by grep:
    don't squeeze it to 80 columns."""
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def emit_json(data: Any) -> None:
    """``--json``: indented, keys in the order built, non-ASCII kept."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str, ensure_ascii=False) + "\n")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]],
          justify: Callable[[str], str] | None = None) -> None:
    """Print a table for people (rich, no outer edge); ``justify(column)`` aligns a column."""
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, justify=(justify(c) if justify else "left"))  # type: ignore[arg-type]
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console().print(t)


def numeric_right(*left: str) -> Callable[[str], str]:
    """A ``justify`` for :func:`table`: the named columns left, every other one right."""
    return lambda c: "left" if c in left else "right"
