"""``cellsched calendar``: free capacity per pool over time as a compact chart, and the
earliest window of a given shape (``--fit 16x24h``)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from cellsched import fmt
from cellsched.cli.errors import handled
from cellsched.cli.state import JsonFlag, backend
from cellsched.fmt import emit_json

BARS = "▁▂▃▄▅▆▇█"
EMPTY = "·"  # a column where no grant could start
SHOWN_CHANGES = 8


@handled
def calendar(
    pool: Annotated[Optional[str], typer.Option("--pool", help="One pool (all if omitted).")] = None,
    days: Annotated[int, typer.Option("--days", help="How far ahead to look (1 to 366 days).")] = 14,
    fit: Annotated[Optional[str], typer.Option(
        "--fit", metavar="GPUSxHOURS",
        help="The earliest window of this shape in each pool: 16x24h (16 GPUs for 24 h), 8x2d.")] = None,
    team: Annotated[Optional[str], typer.Option(
        "--team", help="With --fit: as admission would grant this team (its max_gpus and allowance).")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Free capacity per pool: in each column of time, the widest grant that could start and
    hold its GPUs for the whole column (node rule: one node, or whole nodes), drawn as a
    bar chart (full bar: the whole pool); with --fit, the earliest window of that shape.

    **Example**: cellsched calendar --days 7 --fit 16x24h
    """
    data = backend().calendar(pool, days, fit, team)
    if json_out:
        emit_json(data)
        return
    print(f"widest grant that could start, per {fmt.duration(data['step_s'])} "
          f"({fmt.span(data['from'], data['until'])})")
    for p in data["pools"]:
        print_pool(p, data["from"], data["step_s"])
    if data["fit"] is not None:
        print_fit(data["fit"])


def bar(widest: list[int], gpus: int) -> str:
    """One character per column: eighths of the pool, ``·`` where nothing fits."""
    return "".join(EMPTY if w <= 0 else BARS[min(7, max(0, -(-w * 8 // gpus) - 1))] for w in widest)


def print_pool(p: dict[str, Any], t0: int, step: int) -> None:
    nodes = "" if p["gpus_per_node"] >= p["gpus"] else f" on nodes of {p['gpus_per_node']}"
    print(f"{p['pool']}  {fmt.plural(p['gpus'], 'GPU')} {p['gpu_type']}{nodes}")
    label = f"{p['gpus']:>5} "
    print(f"{label}▕{bar(p['widest'], p['gpus'])}▏")
    axis = [" "] * (len(p["widest"]) + 12)
    every = 14  # columns between labels: a label is 11 characters
    for i in range(0, len(p["widest"]), every):
        text = fmt.stamp(t0 + i * step)[5:]  # "12-01 04:00"
        if i + len(text) <= len(axis):
            axis[i:i + len(text)] = list(text)
    print(" " * (len(label) + 1) + "".join(axis).rstrip())
    changes = p["changes"]
    shown = "; ".join(f"{fmt.stamp(c['start'])}: {c['widest']}" for c in changes[:SHOWN_CHANGES])
    more = "" if len(changes) <= SHOWN_CHANGES else f"; … {len(changes) - SHOWN_CHANGES} more (--json)"
    print(f"  widest from {shown}{more}")


def print_fit(fit: dict[str, Any]) -> None:
    who = f" for team {fit['team']}" if fit["team"] else " (free GPUs; --team for a team's limits)"
    print(f"fit {fmt.plural(fit['gpus'], 'GPU')} × {fmt.duration(fit['hours'] * 3600)} "
          f"({fmt.gpu_hours(fit['gpu_hours'])} GPU-hours){who}:")
    for a in fit["pools"]:
        mark = "*" if fit["earliest"] and a["pool"] == fit["earliest"]["pool"] else " "
        if a["start"] is None:
            print(f" {mark} {a['pool']}: {a['note']}")
        else:
            nodes = ", ".join(map(str, a["nodes"] or []))
            print(f" {mark} {a['pool']}: {fmt.span(a['start'], a['end'])}  (nodes {nodes})")
