"""One renderer: a rich table for people or JSON for programs; times in local time for
people and as UTC for programs."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

JsonOption = Any  # typer annotation lives in options.py


def console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    # Piped output is read by people later (logs, CI) or by grep: don't squeeze it to 80.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str, ensure_ascii=False) + "\n")


def local(t: int | None, seconds: bool = False) -> str:
    """A time for people: local time zone, minutes (or seconds)."""
    if t is None:
        return "-"
    fmt = "%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M"
    return dt.datetime.fromtimestamp(t).astimezone().strftime(fmt)


def tzname() -> str:
    return dt.datetime.now().astimezone().strftime("%Z")


def iso(t: int | None) -> str | None:
    """A time for programs: ISO 8601 UTC."""
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def hours(gpu_hours: float) -> str:
    return f"{gpu_hours:,.1f}".removesuffix(".0")


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]],
          justify: Callable[[str], str] | None = None) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False, header_style="bold")
    for c in columns:
        t.add_column(c, justify=(justify(c) if justify else "left"))  # type: ignore[arg-type]
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console().print(t)
