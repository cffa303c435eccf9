"""Self-contained HTML pages: one file, inline CSS, no scripts, no network fetches.

Reusable API (the utilisation report and ``cellsched simulate --html`` both build on it)::

    from cellsched.report import charts, html

    body = html.stats([html.Stat("utilisation", "71.2%", key="utilisation", value=0.712)])
    body += html.table(["team", "GPU-h"], [["interp", "1,200"]], numeric={"GPU-h"})
    text = html.page("Simulation", [html.Section("Summary", body),
                                    html.Section("Charts", chart.html())], subtitle="policy: fifo")
    Path("sim.html").write_text(text, encoding="utf-8")

- :func:`page` returns the whole document. Its Content-Security-Policy forbids every fetch
  (``default-src 'none'``), so a page that tried to load anything would show a console
  error rather than silently phone out; images may only be ``data:`` URIs.
- Section bodies are HTML strings you build with :func:`table`, :func:`stats`,
  :func:`escape` and ``Chart.html()`` from :mod:`cellsched.report.charts`.
- A :class:`Stat` with a ``key`` carries ``data-key``/``data-value`` attributes holding the
  exact machine value, so tests (and scrapers) can compare the page with the JSON.
- The layout is a single column up to 1320 px wide, so a laptop screen (1366 px) shows
  every table whole: headers, times and the first column's long names wrap, figures never
  do; a table wider still
  scrolls sideways inside its own box, never the page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
:root { color-scheme: light; --ink: #1d2330; --muted: #5b6475; --line: #dde1e8; --bg: #f6f7f9; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: var(--bg); }
main { max-width: 1320px; margin: 0 auto; padding: 20px 16px 60px; }
h1 { font-size: 22px; margin: 8px 0 2px; }
h2 { font-size: 17px; margin: 14px 0 10px; }
h3 { font-size: 14px; margin: 16px 0 6px; }
p.sub, p.note { color: var(--muted); margin: 2px 0 10px; }
section { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 4px 16px 14px; margin: 14px 0; }
.stats { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 10px; margin: 10px 0; }
.stat { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; background: #fbfcfd; }
.stat .label { color: var(--muted); font-size: 12px; }
.stat .v { font-size: 19px; font-weight: 600; font-variant-numeric: tabular-nums; }
.stat .unit { color: var(--muted); font-size: 12px; margin-left: 3px; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; margin: 6px 0 10px; font-size: 13px; }
th, td { padding: 4px 6px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td:first-child { overflow-wrap: anywhere; min-width: 10em; }
td.num { white-space: nowrap; }
th { font-weight: 600; background: #f1f3f6; position: sticky; top: 0; vertical-align: bottom; }
td.num, th.num { text-align: right; }
figure.chart { margin: 10px 0; }
figure.chart svg { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12px; }
.empty { font-size: 16px; padding: 14px; border: 1px dashed var(--muted); border-radius: 6px; background: #fff; }
.bad { color: #b3261e; font-weight: 600; }
"""


def escape(s: Any) -> str:
    """Text safe inside an element or a double-quoted attribute."""
    return (str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


@dataclass(frozen=True)
class Section:
    """A titled block of the page; ``body`` is HTML (escape your own text)."""

    title: str
    body: str
    id: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Stat:
    """A headline figure: label, the text shown, an optional unit, and (for tests) the
    machine ``key`` and exact ``value`` it was formatted from."""

    label: str
    text: str
    unit: str = ""
    key: str | None = None
    value: Any = None
    bad: bool = False


def stats(items: Iterable[Stat]) -> str:
    out = ['<div class="stats">']
    for s in items:
        data = ""
        if s.key is not None:
            data = f' data-key="{escape(s.key)}" data-value="{escape(json.dumps(s.value))}"'
        cls = "v bad" if s.bad else "v"
        unit = f'<span class="unit">{escape(s.unit)}</span>' if s.unit else ""
        out.append(f'<div class="stat"{data}><div class="label">{escape(s.label)}</div>'
                   f'<div><span class="{cls}">{escape(s.text)}</span>{unit}</div></div>')
    out.append("</div>")
    return "".join(out)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, numeric: Iterable[str] = (),
          row_keys: Sequence[str] | None = None, cell_keys: Sequence[str | None] | None = None,
          cell_values: Sequence[Sequence[Any]] | None = None) -> str:
    """A table; columns named in ``numeric`` are right-aligned. With ``row_keys`` and
    ``cell_keys``, each cell whose key is not None gets ``data-key="<row>.<cell>"`` (just
    ``<row>`` for an empty cell key) and, from
    ``cell_values``, ``data-value`` (JSON) so the page can be checked against the data."""
    num = set(numeric)
    head = "".join(f'<th class="num">{escape(c)}</th>' if c in num else f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for i, r in enumerate(rows):
        cells = []
        for j, (c, v) in enumerate(zip(columns, r)):
            cls = ' class="num"' if c in num else ""
            data = ""
            if row_keys is not None and cell_keys is not None and cell_keys[j] is not None:
                key = row_keys[i] + ("." + cell_keys[j] if cell_keys[j] else "")
                data = f' data-key="{escape(key)}"'
                if cell_values is not None:
                    data += f' data-value="{escape(json.dumps(cell_values[i][j]))}"'
            cells.append(f"<td{cls}{data}>{escape(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def page(title: str, sections: Iterable[Section], subtitle: str | None = None, generator: str = "cellsched") -> str:
    """A complete HTML document: inline CSS, no scripts, nothing fetched."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f'<meta name="generator" content="{escape(generator)}">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{escape(title)}</h1>",
    ]
    if subtitle:
        parts.append(f'<p class="sub">{escape(subtitle)}</p>')
    for s in sections:
        sid = f' id="{escape(s.id)}"' if s.id else ""
        note = f'<p class="note">{escape(s.note)}</p>' if s.note else ""
        parts.append(f"<section{sid}><h2>{escape(s.title)}</h2>{note}{s.body}</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts)
