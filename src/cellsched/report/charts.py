"""Charts as inline SVG (for HTML) and PNG (for files), drawn with matplotlib's Agg backend.

matplotlib is imported here only, and only when a chart is drawn, so nothing else in
cellsched pays for it. Every helper takes plain data and returns a :class:`Chart`; every chart
has a title, a legend (when it has more than one series) and units on both axes.

Reusable API (the simulator's ``--html`` uses it too)::

    from cellsched.report import charts, html

    c = charts.stacked_area("pool h100: reserved", times, {"interp": [...], "evals": [...]},
                            ylabel="GPUs", lines={"capacity": [16, 16, ...]}, name="h100-reserved")
    b = charts.bar("refusals by reason", ["over_allowance", "no_capacity_in_window"], [3, 1],
                   ylabel="refusals", name="refusals")
    page = html.page("Simulation", [html.Section("Utilisation", c.html() + b.html())])
    c.close(); b.close()

- ``times`` are epoch seconds (UTC) and are drawn as dates; pass ``xlabel`` to say so.
- ``Chart.svg()`` is an inline ``<svg>`` element (no XML prolog, scales to its container);
  ``Chart.png()`` is PNG bytes; ``Chart.html()`` wraps the SVG in a ``<figure>``.
- Series order is the order of the dict; colours are stable per series name within a call.
- ``None`` in a series is a gap (not drawn), so "not yet happened" stays visibly unknown.
- For a figure the helpers don't cover: ``fig, ax = charts.pyplot().subplots(...)``, draw,
  then ``charts.Chart(name, title, fig)``.
"""

from __future__ import annotations

import datetime as dt
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

# Tableau 10: distinguishable, colour-blind friendlier than matplotlib's default cycle.
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")
WIDTH_IN, HEIGHT_IN = 9.0, 3.6


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg backend with the report's style, for drawing a figure
    the helpers don't cover; wrap it as ``Chart(name, title, fig)`` to get SVG/PNG/HTML."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update({
        "svg.fonttype": "none",  # text stays text: small files, selectable, no font embedding
        "font.family": "sans-serif",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.frameon": False,
    })
    return plt


_plt = pyplot  # the name other modules used first; kept working


class Chart:
    """One drawn figure; render it as SVG or PNG, then :meth:`close` it."""

    def __init__(self, name: str, title: str, fig: Any) -> None:
        self.name, self.title, self.fig = name, title, fig

    def svg(self) -> str:
        import matplotlib

        buf = io.StringIO()
        # A salt per chart keeps the ids matplotlib generates unique when several SVGs share
        # one HTML document (clip paths are referenced by id).
        with matplotlib.rc_context({"svg.hashsalt": f"cs-{self.name}"}):
            self.fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
        text = buf.getvalue()
        text = text[text.index("<svg"):]
        text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, count=1, flags=re.S)
        text = re.sub(r'\s+xmlns:(dc|cc|rdf)="[^"]*"', "", text)
        text = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"',
                      lambda m: f'<svg{m.group(1)} class="chart" role="img" aria-label="{_attr(self.title)}"',
                      text, count=1)
        return text

    def png(self, dpi: int = 120) -> bytes:
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
        return buf.getvalue()

    def html(self, caption: str | None = None) -> str:
        cap = f"<figcaption>{_text(caption)}</figcaption>" if caption else ""
        return f'<figure class="chart" id="chart-{_attr(self.name)}">{self.svg()}{cap}</figure>'

    def close(self) -> None:
        _plt().close(self.fig)


def _text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _attr(s: str) -> str:
    return _text(s).replace('"', "&quot;")


def colours(names: Sequence[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _dates(times: Sequence[int]) -> list[dt.datetime]:
    return [dt.datetime.fromtimestamp(t, dt.timezone.utc).replace(tzinfo=None) for t in times]


def _time_axis(ax: Any, xlabel: str) -> None:
    import matplotlib.dates as mdates

    loc = mdates.AutoDateLocator(minticks=4, maxticks=9)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(loc))
    ax.set_xlabel(xlabel)


def _finish(fig: Any, ax: Any, n_series: int) -> None:
    if n_series > 1 or ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def _zero_none(v: Sequence[float | None]) -> list[float]:
    return [0.0 if x is None else float(x) for x in v]


def stacked_area(title: str, times: Sequence[int], series: Mapping[str, Sequence[float | None]], *,
                 ylabel: str, xlabel: str = "time (UTC)", lines: Mapping[str, Sequence[float | None]] | None = None,
                 name: str = "chart", step: int | None = None, vline: tuple[int, str] | None = None,
                 palette: Mapping[str, str] | None = None) -> Chart:
    """Series stacked over time (each bucket starts at ``times[i]`` and lasts ``step``
    seconds), with optional overlaid lines (e.g. capacity) and a labelled vertical marker."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN))
    pal = dict(palette or colours(list(series)))
    _stack(ax, times, series, step, pal)
    for i, (label, ys) in enumerate((lines or {}).items()):
        x, y = _steps(times, ys, step)
        ax.plot(x, y, drawstyle="steps-post", color=("black", "#555555", "#999999")[i % 3],
                linestyle=("-", "--", ":")[i % 3], linewidth=1.4, label=label)
    if vline is not None:
        ax.axvline(_dates([vline[0]])[0], color="#d62728", linestyle=":", linewidth=1.2, label=vline[1])
    ax.set_title(title, loc="left")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    _time_axis(ax, xlabel)
    _finish(fig, ax, len(series) + len(lines or {}))
    return Chart(name, title, fig)


def _steps(times: Sequence[int], ys: Sequence[float | None], step: int | None) -> tuple[list[Any], list[float]]:
    """Step-post coordinates with a final point so the last bucket has its width."""
    t = list(times)
    y = [float("nan") if v is None else float(v) for v in ys]
    if t and step:
        t = t + [t[-1] + step]
        y = y + [y[-1]]
    return _dates(t), y


def _stack(ax: Any, times: Sequence[int], series: Mapping[str, Sequence[float | None]], step: int | None,
           pal: Mapping[str, str]) -> None:
    if not series or not times:
        return
    x, _ = _steps(times, [0] * len(times), step)
    base = [0.0] * len(x)
    for label, ys in series.items():
        vals = _zero_none(ys)
        if step:
            vals = vals + [vals[-1]]
        top = [b + v for b, v in zip(base, vals)]
        ax.fill_between(x, base, top, step="post", color=pal.get(label), alpha=0.85, linewidth=0, label=label)
        base = top


def stacked_panels(title: str, times: Sequence[int], panels: Sequence[tuple[str, Mapping[str, Sequence[float | None]]]],
                   *, ylabel: str, xlabel: str = "time (UTC)", line: tuple[str, Sequence[float | None]] | None = None,
                   name: str = "chart", step: int | None = None, vline: tuple[int, str] | None = None) -> Chart:
    """Several stacked-area panels sharing the time axis and one legend (one colour per
    series name across panels), each with the same reference ``line`` (e.g. capacity)."""
    plt = _plt()
    fig, axes = plt.subplots(len(panels), 1, figsize=(WIDTH_IN, 2.4 * len(panels) + 0.6), sharex=True, squeeze=False)
    names: list[str] = []
    for _t, series in panels:
        names.extend(n for n in series if n not in names)
    pal = colours(names)
    for ax, (sub, series) in zip(axes[:, 0], panels):
        _stack(ax, times, series, step, {})
        for coll, label in zip(ax.collections, series):
            coll.set_color(pal[label])
        if line is not None:
            x, y = _steps(times, line[1], step)
            ax.plot(x, y, drawstyle="steps-post", color="black", linewidth=1.4, label=line[0])
        if vline is not None:
            ax.axvline(_dates([vline[0]])[0], color="#d62728", linestyle=":", linewidth=1.2, label=vline[1])
        ax.set_title(sub, loc="left", fontsize=9)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
    _time_axis(axes[-1, 0], xlabel)
    handles, labels = [], []
    for ax in axes[:, 0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.suptitle(title, x=0.01, ha="left", fontsize=10)
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.91, 0.93), fontsize=8, frameon=False)
    fig.subplots_adjust(hspace=0.35, top=0.9)
    return Chart(name, title, fig)


def lines(title: str, series: Mapping[str, tuple[Sequence[int], Sequence[float | None]]], *, ylabel: str,
          xlabel: str = "time (UTC)", name: str = "chart", dashed: Mapping[str, tuple[Sequence[int], Sequence[float]]] | None = None,
          hline: tuple[float, str] | None = None, steps: bool = True) -> Chart:
    """Time series as lines, each with its own x values; ``dashed`` series (e.g. forecasts)
    take the colour of the solid series of the same name."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, HEIGHT_IN))
    pal = colours(list(series))
    for label, (xs, ys) in series.items():
        ax.plot(_dates(xs), [float("nan") if v is None else v for v in ys], color=pal[label], linewidth=1.6,
                drawstyle="steps-post" if steps else "default", label=label)
    for label, (xs, ys) in (dashed or {}).items():
        ax.plot(_dates(xs), ys, color=pal.get(label, "#555555"), linewidth=1.2, linestyle="--",
                label=f"{label} (forecast)")
    if hline is not None:
        ax.axhline(hline[0], color="#888888", linewidth=1.0, linestyle=":", label=hline[1])
    ax.set_title(title, loc="left")
    ax.set_ylabel(ylabel)
    _time_axis(ax, xlabel)
    _finish(fig, ax, len(series))
    return Chart(name, title, fig)


def bar(title: str, labels: Sequence[str], values: Sequence[float], *, ylabel: str, xlabel: str = "",
        name: str = "chart", horizontal: bool = False, colour: str = PALETTE[0]) -> Chart:
    """A bar per label (``horizontal`` puts labels on the y axis for long names)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, max(2.2, 0.35 * len(labels) + 1.2) if horizontal else HEIGHT_IN))
    if horizontal:
        ax.barh(list(labels), list(values), color=colour)
        ax.invert_yaxis()
        ax.set_xlabel(ylabel)
        ax.set_ylabel(xlabel)
    else:
        ax.bar(list(labels), list(values), color=colour)
        ax.set_ylabel(ylabel)
        ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left")
    return Chart(name, title, fig)


def stacked_bar(title: str, parts: Mapping[str, float], *, unit: str, name: str = "chart",
                label: str = "") -> Chart:
    """One horizontal bar split into named parts (e.g. capacity = used + idle + unreserved)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(WIDTH_IN, 1.9))
    pal = colours(list(parts))
    left = 0.0
    for k, v in parts.items():
        ax.barh([label or " "], [v], left=left, color=pal[k], label=f"{k} ({v:,.1f} {unit})")
        left += v
    ax.set_xlabel(unit)
    ax.set_title(title, loc="left")
    ax.grid(axis="y", visible=False)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return Chart(name, title, fig)
