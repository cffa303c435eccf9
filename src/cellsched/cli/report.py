"""The report command: cluster utilisation over a period (terminal, --json, --html, --png)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellsched.cli.errors import handled
from cellsched.cli.state import JsonFlag, backend
from cellsched.fmt import emit_json, iso


@handled
def report(
    since: Annotated[Optional[str], typer.Option("--since", help="Start of the period: a time (2026-11-01, ISO 8601 or epoch seconds; UTC unless a zone is given) or a span before --until (7d, 12h, 30m, 2w).")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="End of the period, exclusive. Default: now (with --since), else the end of the allowance period.")] = None,
    period: Annotated[Optional[str], typer.Option("--period", help="A whole month (2026-11), quarter (2026-Q4) or year (2026), UTC. Default (no --period, --since or --until): the current allowance period.")] = None,
    team: Annotated[Optional[str], typer.Option("--team", help="Only this team's figures (capacity stays the cluster's).")] = None,
    json_out: JsonFlag = False,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report with charts to FILE.", metavar="FILE")] = None,
    png_dir: Annotated[Optional[str], typer.Option("--png", help="Also write the charts as PNG files into DIR.", metavar="DIR")] = None,
) -> None:
    """Cluster utilisation over a period: capacity, granted, held, used, idle while reserved;
    per team, pool and project; refusals by reason; wait from submit to start; breaches.

    The period is the current allowance period unless you name one: windows granted for
    the rest of it count as committed.

    **Examples**: `cellsched report` · `cellsched report --since 7d` ·
    `cellsched report --period 2026-11 --html report.html` · `cellsched report --period 2026-Q4 --team interp --json` ·
    `cellsched report --since 2026-11-01 --until 2026-12-01 --png charts/`
    """
    from cellsched.errors import BadInput
    from cellsched.report.period import named_period, relative_seconds
    from cellsched.runtime.clock import parse_time

    last = None
    if period is not None:
        if since is not None or until is not None:
            raise BadInput("--period names the whole period: give it without --since and --until")
        t0, t1 = named_period(period)
    else:
        t1 = parse_time(until, "--until") if until is not None else None
        last = relative_seconds(since) if since is not None else None
        t0 = parse_time(since, "--since") if since is not None and last is None else None
    if t0 is not None and t1 is not None and t1 <= t0:
        raise BadInput(f"--since must be before --until (got {iso(t0)} → {iso(t1)})")
    if png_dir is not None and not png_dir.strip():  # ("$DIR" unset: not this directory, unasked)
        raise BadInput("--png: empty: give a directory (--png . for this one)")
    png = None if png_dir is None else Path(png_dir)
    if png is not None and png.exists() and not png.is_dir():
        raise BadInput(f"--png: {png} exists and is not a directory")
    if html is not None and html.is_dir():
        raise BadInput(f"--html: {html} is a directory; give a file name like report.html")
    # The period's defaults (the current allowance period; until now; a span before until)
    # and --team are the backend's: through a server, its clock decides.
    answer = backend().report(t0, t1, team, last)
    data = {k: v for k, v in answer.items() if k != "daemon"}

    written: list[Path] = []
    if html is not None or png is not None:
        from cellsched.report import render_html

        charts = render_html.report_charts(data)
        if html is not None:
            try:
                html.parent.mkdir(parents=True, exist_ok=True)
                html.write_text(render_html.report_page(data, charts), encoding="utf-8")
            except OSError as err:
                raise BadInput(f"--html: cannot write {html}: {err.strerror}") from None
            written.append(html)
        if png is not None:
            try:
                png.mkdir(parents=True, exist_ok=True)
                for c in charts:
                    path = png / f"{c.name}.png"
                    path.write_bytes(c.png())
                    written.append(path)
            except OSError as err:
                raise BadInput(f"--png: cannot write into {png}: {err.strerror}") from None
        for c in charts:
            c.close()

    from cellsched.cli.read_cmds import print_down

    if json_out:
        emit_json(answer)
        return
    from cellsched.report.terminal import print_report

    print_report(data)
    print_down(answer["daemon"])
    for path in written:
        print(f"wrote {path}")

