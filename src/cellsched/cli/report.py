"""The report command: cluster utilisation over a period (terminal, --json, --html, --png)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellsched.cli.errors import handled
from cellsched.cli.render import emit_json
from cellsched.cli.state import JsonFlag, env

DEFAULT_DAYS = 30


@handled
def report(
    since: Annotated[Optional[str], typer.Option("--since", help="Start of the period (2026-11-01, ISO 8601 or epoch seconds; UTC unless a zone is given). Default: 30 days before --until.")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="End of the period, exclusive. Default: now.")] = None,
    team: Annotated[Optional[str], typer.Option("--team", help="Only this team's figures (capacity stays the cluster's).")] = None,
    json_out: JsonFlag = False,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report with charts to FILE.", metavar="FILE")] = None,
    png: Annotated[Optional[Path], typer.Option("--png", help="Also write the charts as PNG files into DIR.", metavar="DIR")] = None,
) -> None:
    """Cluster utilisation over a period: capacity, granted, held, used, idle while reserved;
    per team, pool and project; refusals by reason; wait from submit to start; breaches.

    **Examples**: `cellsched report` · `cellsched report --since 2026-11-01 --until 2026-12-01 --html report.html` ·
    `cellsched report --team interp --json` · `cellsched report --png charts/`
    """
    from cellsched.errors import BadInput
    from cellsched.report import compute, snapshot
    from cellsched.runtime.clock import now_s, parse_time

    now = now_s()
    t1 = parse_time(until, "--until") if until is not None else now
    t0 = parse_time(since, "--since") if since is not None else t1 - DEFAULT_DAYS * 86400
    if t1 <= t0:
        raise BadInput(f"--since must be before --until (got {compute.utc(t0)} → {compute.utc(t1)})")
    if png is not None and png.exists() and not png.is_dir():
        raise BadInput(f"--png: {png} exists and is not a directory")
    if html is not None and html.is_dir():
        raise BadInput(f"--html: {html} is a directory; give a file name like report.html")
    e = env()
    if team is not None and e.cluster.team(team) is None:
        names = ", ".join(t.name for t in e.cluster.teams) or "none"
        raise BadInput(f"--team: no team {team!r} in {e.cluster_path} (teams: {names})")
    snap = snapshot.load(e.ledger, e.cluster, t0, t1)
    data = compute.build(snap, e.cluster, t0, t1, now, team=team)

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

    from cellsched.cli.read_cmds import daemon_state, print_down

    daemon = daemon_state(e)
    if json_out:
        emit_json({**data, "daemon": daemon.to_json()})
        return
    from cellsched.report.terminal import print_report

    print_report(data)
    print_down(daemon)
    for path in written:
        print(f"wrote {path}")
