"""The live dashboard: the utilisation report of ``cellsched report --html``, served.

``GET /`` is the report for the current period (:func:`cellsched.server.metrics.current_period`)
over all teams; ``GET /team/{team}`` is one team's (``cellsched report --team``). Both take
``?since=&until=`` like the CLI's options, and link to each other and to the previous and
current period. The page is the report's own self-contained document (inline CSS and SVG,
a Content-Security-Policy that forbids every fetch): nothing is loaded from anywhere, not
even from this server. Links are relative, so the dashboard also works behind a proxy that
mounts it under a path.

Drawing the charts takes seconds on a busy ledger, so pages are cached like the metrics'
figures (:class:`cellsched.server.metrics.Reports`): recomputed when the ledger's event
sequence has moved (at most every ``MIN_AGE_S``) and at least every ``MAX_AGE_S`` (held and
used grow with the clock). Charts are drawn one page at a time (pyplot is process-global).

Anyone who reaches the listener may ask for a page of any period, each a new computation,
so page requests are served ``ServerState.pages_at_once`` (1) at a time in the server's
thread pool, up to ``pages_waiting`` (8) more wait their turn on the event loop, holding no
thread, and any more are answered 503 (one line) at once (:class:`PageGate`). Otherwise a
flood of page requests takes every thread of the pool the API's routes run in too (sixty
at once made an authenticated ``whoami`` wait 9 s).

No authentication: the page shows what every team lead may see (teams' and pools'
GPU-hours, project names and their windows), never specs, users, code or tokens; a
browser cannot easily present a bearer token. Operators who want it private put the TCP
listener behind their proxy's authentication (docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from cellsched.errors import BadInput
from cellsched.server.metrics import Cached, Reports, current_period

router = APIRouter()

LATEST = 7258118400  # 2200-01-01T00:00:00Z
_DRAW = threading.Lock()  # matplotlib's pyplot state is global to the process

NAV_CSS = """
nav.dash { display: flex; flex-wrap: wrap; gap: 4px 14px; align-items: baseline; margin: 4px 0 8px;
           padding: 8px 12px; background: #fff; border: 1px solid var(--line); border-radius: 8px; }
nav.dash a { color: #2a5db0; text-decoration: none; }
nav.dash a:hover { text-decoration: underline; }
nav.dash a[aria-current] { color: var(--ink); font-weight: 600; }
nav.dash .sep { color: var(--muted); }
nav.dash .fresh { color: var(--muted); font-size: 12px; margin-left: auto; }
"""


def _html(text: str, status: int = 200) -> HTMLResponse:
    # Every reload asks the server again; the server decides what is fresh enough.
    return HTMLResponse(text, status_code=status, headers={"Cache-Control": "no-cache"})


def _period(request: Request, reports: Reports) -> tuple[int, int, bool]:
    """[since, until) from ``?since=&until=`` (the CLI's syntax; until defaults to the end
    of the current period, since to its start when until is not given, else 30 days
    before until), and whether it is the current period."""
    from cellsched.runtime.clock import parse_time

    q = request.query_params
    now = reports.clock()
    p0, p1 = current_period(reports.env.cluster, now)
    raw_since, raw_until = q.get("since") or None, q.get("until") or None
    if raw_since is None and raw_until is None:
        return p0, p1, True
    until = parse_time(raw_until, "until") if raw_until is not None else p1
    since = parse_time(raw_since, "since") if raw_since is not None else until - 30 * 86400
    for what, t in (("since", since), ("until", until)):
        # Calendar arithmetic (allowance periods, dates on the page) fails outside years 1-9999:
        # a period the report can draw, not a 500.
        if not 0 <= t <= LATEST:
            raise BadInput(f"{what}: {t} is out of range (1970-01-01 to 2200-01-01)")
    if until <= since:
        from cellsched.report.compute import utc

        raise BadInput(f"since must be before until (got {utc(since)} → {utc(until)})")
    return since, until, (since, until) == (p0, p1)


def _page(reports: Reports, since: int, until: int, team: str | None) -> Cached:
    """The report page for [since, until), rendered at most once per ledger change."""

    def render(_now: int) -> str:
        from cellsched.report import render_html

        data = reports.report(since, until, team).value
        with _DRAW:
            charts = render_html.report_charts(data)
            try:
                return render_html.report_page(data, charts)
            finally:
                for c in charts:
                    c.close()

    return reports.get(("page", since, until, team), render)


def _nav(reports: Reports, here: str | None, since: int, until: int, is_current: bool, root: str,
         cached: Cached | None) -> str:
    """Links to every team's page, the whole cluster's, and the neighbouring periods.
    ``root`` is the relative path from this page to ``/`` ("" or "../")."""
    from cellsched.report import html
    from cellsched.report.compute import utc

    query = "" if is_current else "?" + urlencode({"since": since, "until": until})
    links = []

    def link(href: str, text: str, current: bool) -> str:
        cur = ' aria-current="page"' if current else ""
        return f'<a href="{html.escape(href)}"{cur}>{html.escape(text)}</a>'

    links.append(link(f"{root}{query}" if root else f"./{query}", "all teams", here is None))
    for t in reports.env.cluster.teams:
        links.append(link(f"{root}team/{quote(t.name, safe='')}{query}", t.name, here == t.name))
    base = f"{root}team/{quote(here, safe='')}" if here else (root or "./")
    # The period before this one: the previous allowance period, or as long a span before.
    cluster = reports.env.cluster
    if (since, until) == current_period(cluster, since):
        prev = current_period(cluster, since - 1)
    else:
        prev = (since - (until - since), since)
    period_links = [link(f"{base}?{urlencode({'since': prev[0], 'until': prev[1]})}", "‹ previous period", False)]
    if not is_current:
        period_links.append(link(base, "current period", False))
    fresh = ""
    if cached is not None:
        fresh = (f'<span class="fresh">computed {html.escape((utc(cached.at) or "")[11:19])} UTC from ledger event '
                 f"{cached.seq}; reload for the latest</span>")
    return (f"<style>{NAV_CSS}</style><nav class=\"dash\">{''.join(links)}<span class=\"sep\">·</span>"
            f"{''.join(period_links)}{fresh}</nav>")


def _with_nav(page: str, nav: str) -> str:
    # The report's document (report.html.page) opens its content with <main>; the links go
    # first inside it. Text in the page is escaped, so the first "<main>" is the element.
    marker = "<main>"
    assert marker in page, "the report page has no <main> element"
    return page.replace(marker, marker + nav, 1)


def _one_line(reports: Reports, status: int, line: str, root: str) -> HTMLResponse:
    from cellsched.report import html

    now = reports.clock()
    since, until = current_period(reports.env.cluster, now)
    body = f'<p class="empty" id="error">{html.escape(line)}</p>'
    title = {404: "not found", 503: "busy"}.get(status, "bad request")
    page = html.page("cellsched: " + title,
                     [html.Section("Dashboard", body, id="summary")])
    return _html(_with_nav(page, _nav(reports, None, since, until, True, root, None)), status)


def _serve(request: Request, team: str | None, root: str) -> HTMLResponse:
    from cellsched.server.app import state_of

    reports: Reports = state_of(request).metrics.reports
    if team is not None and reports.env.cluster.team(team) is None:
        names = ", ".join(t.name for t in reports.env.cluster.teams) or "none"
        return _one_line(reports, 404, f"no team {team!r} in the cluster config (teams: {names})", root)
    try:
        since, until, is_current = _period(request, reports)
    except BadInput as e:
        return _one_line(reports, 400, e.message, root)
    cached = _page(reports, since, until, team)
    return _html(_with_nav(cached.value, _nav(reports, team, since, until, is_current, root, cached)))


class PageGate:
    """Dashboard pages ``at_once`` at a time, and at most ``waiting`` more waiting their turn
    (on the event loop: a waiting request holds no thread of the pool)."""

    def __init__(self, at_once: int, waiting: int) -> None:
        self.turns = asyncio.Semaphore(at_once)
        self.limit = at_once + waiting
        self.inside = 0  # requests drawing or waiting (only the event loop's thread counts)


async def _gated(request: Request, team: str | None, root: str) -> HTMLResponse:
    from cellsched.server.app import state_of

    state = state_of(request)
    if state.pages is None:
        state.pages = PageGate(state.pages_at_once, state.pages_waiting)
    gate: PageGate = state.pages
    if gate.inside >= gate.limit:
        busy = _one_line(state.metrics.reports, 503, "the dashboard is busy drawing other pages: "
                         "reload in a few seconds", root)
        busy.headers["Retry-After"] = "5"
        return busy
    gate.inside += 1
    try:
        async with gate.turns:
            return await run_in_threadpool(_serve, request, team, root)
    finally:
        gate.inside -= 1


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(request: Request) -> Any:
    """The utilisation report for the current period (or ``?since=&until=``), all teams."""
    return await _gated(request, None, "")


@router.get("/team/{team}", response_class=HTMLResponse, include_in_schema=False)
async def team_page(team: str, request: Request) -> Any:
    """One team's utilisation report; 404 (one line) for a team not in the cluster config."""
    return await _gated(request, team, "../")
