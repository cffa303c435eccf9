"""The live dashboard: served by a real uvicorn and loaded in headless Chromium (no console
errors, no request but the page itself, the numbers equal the report's JSON for the same
period, the team pages and links work), plus its edges over TestClient on SQLite and
PostgreSQL (unknown team, bad period, the cache following the ledger's event sequence).

Chromium is skipped when not installed, except under CI (``CI`` set), like
tests/report/test_browser.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parents[1] / "report"))

from cdp import Chromium, find_chromium  # noqa: E402
from report_builders import DAY, T0, fill_known  # noqa: E402

from cellsched import service  # noqa: E402
from cellsched.report import compute, render_html, snapshot  # noqa: E402
from cellsched.server.app import create_app  # noqa: E402
from cellsched.server.state import ServerState  # noqa: E402
from cellsched.service import Env, open_env  # noqa: E402
from cellsched.spec.models import ProjectSpec  # noqa: E402

CHROMIUM = find_chromium()
NOW = T0 + 10 * DAY  # the server's clock: November 2026 is the current period
NOV = (T0, T0 + 30 * DAY)
WEEK = (T0, T0 + 7 * DAY)  # a period wholly past: its figures do not move with the clock

# tests/conftest.py's EXAMPLE_CLUSTER (the `env` fixture's), for the module-wide ledger.
CLUSTER = """
admins = ["root-admin"]
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 16
gpus_per_node = 8
[[teams]]
name = "interp"
members = ["alice", "bob"]
allowance_gpu_hours = 1500
[[teams]]
name = "evals"
members = ["carol"]
allowance_gpu_hours = 100
max_gpus = 8
[[teams]]
name = "pretraining"
members = ["dave"]
allowance_gpu_hours = 20000
"""

READ_DOM = """JSON.stringify({
  keyed: [...document.querySelectorAll('[data-key]')].map(e => ({key: e.dataset.key, value: e.dataset.value})),
  nav: [...document.querySelectorAll('nav.dash a')].map(a => ({text: a.textContent, href: a.href,
                                                             current: a.hasAttribute('aria-current')})),
  svgs: document.querySelectorAll('svg').length,
  error: (document.getElementById('error') || {}).textContent || null,
  sub: (document.querySelector('p.sub') || {}).textContent || null,
  scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth})"""


def app_for(env: Env, now: int = NOW) -> FastAPI:
    state = ServerState(env)
    app = create_app(state)
    state.metrics.reports.clock = lambda: now
    return app


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """The app on a real uvicorn on 127.0.0.1 (a free port), in a thread; its base URL."""
    import uvicorn

    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert th.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(20)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required under CI")
        pytest.skip("no chromium installed (apt-get install -y chromium)")
    with Chromium(CHROMIUM, tmp_path_factory.mktemp("chromium") / "profile", width=1280, height=800) as c:
        yield c


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Env]]:
    """The hand-built ledger of report_builders.fill_known behind a real uvicorn (SQLite:
    what the browser sees does not depend on the database)."""
    from cellsched.receipt import create_keys, key_paths

    root = tmp_path_factory.mktemp("site")
    (root / "cluster.toml").write_text(CLUSTER)
    create_keys(*key_paths(root / "cluster.toml"))
    env = open_env(root / "cluster.toml", f"sqlite:///{root / 'ledger.db'}")
    fill_known(env.ledger)
    with serving(app_for(env)) as base:
        yield base, env
    env.ledger.dispose()


def expected(env: Env, since: int, until: int, team: str | None = None, now: int = NOW) -> dict[str, Any]:
    """The report's JSON as `cellsched report --json` computes it."""
    data = compute.build(snapshot.load(env.ledger, env.cluster, since, until), env.cluster, since, until, now, team=team)
    return json.loads(json.dumps(data))


def lookup(data: dict[str, Any], key: str) -> Any:
    """A value by the page's data-key: ``teams.<name>.<field>`` picks the team by name."""
    parts = key.split(".")
    if parts[0] == "teams":
        return next(t for t in data["teams"] if t["team"] == parts[1])[parts[2]]
    return render_html.lookup(data, key)


def assert_page_equals(dom: dict[str, Any], data: dict[str, Any], teams: int) -> None:
    keyed = {k["key"]: json.loads(k["value"]) for k in dom["keyed"]}
    for key in ("capacity_gpu_hours", "granted_gpu_hours", "refunded_gpu_hours", "held_gpu_hours", "used_gpu_hours",
                "idle_reserved_gpu_hours", "unreserved_gpu_hours", "committed_gpu_hours",
                "utilisation.used_over_capacity", "utilisation.used_over_held", "guarantee_breaches.count",
                "guarantee_breaches.gpu_hours", "admissions.granted", "refusals.count", "wait.p50_s", "wait.p95_s"):
        assert key in keyed, key
    assert len([k for k in keyed if k.startswith("teams.")]) == 7 * teams
    for key, value in keyed.items():
        assert value == lookup(data, key), key


def load(browser: Chromium, url: str, tmp_path: Path, name: str) -> tuple[Any, dict[str, Any]]:
    res = browser.open(url, READ_DOM, screenshot=tmp_path / f"{name}.png")
    assert res.errors() == [], res.errors()
    assert res.requests == [url], res.requests  # nothing but the page, not even from the server
    assert len(res.screenshot) > 20_000
    dom = json.loads(res.value)
    assert dom["scrollWidth"] <= dom["innerWidth"], "the page scrolls sideways at 1280 px"
    return res, dom


def test_dashboard_in_chromium_equals_the_report_json(browser: Chromium, site: tuple[str, Env], tmp_path: Path) -> None:
    base, env = site
    url = f"{base}/?since={WEEK[0]}&until={WEEK[1]}"
    _res, dom = load(browser, url, tmp_path, "week")
    data = expected(env, *WEEK)
    assert_page_equals(dom, data, teams=3)
    assert dom["svgs"] == 5  # the same charts as the report's HTML file
    # the same figures a person reads in the terminal report (tests/report: KNOWN)
    assert data["used_gpu_hours"] == 34 and data["capacity_gpu_hours"] == 2688

    nav = {a["text"]: a for a in dom["nav"]}
    assert nav["all teams"]["current"] and not nav["interp"]["current"]
    assert nav["interp"]["href"] == f"{base}/team/interp?since={WEEK[0]}&until={WEEK[1]}"
    assert nav["current period"]["href"] == f"{base}/"
    assert all(a["href"].startswith(base + "/") for a in dom["nav"]), dom["nav"]  # links stay on this server
    for text in ("interp", "current period"):  # and answer (each page costs a render: two will do)
        assert httpx.get(nav[text]["href"]).status_code == 200, nav[text]


def test_current_period_and_team_pages_in_chromium(browser: Chromium, site: tuple[str, Env], tmp_path: Path) -> None:
    base, env = site
    _res, dom = load(browser, f"{base}/", tmp_path, "current")
    assert_page_equals(dom, expected(env, *NOV), teams=3)
    assert "2026-11-01 00:00 → 2026-12-01 00:00 UTC" in dom["sub"]
    nav = {a["text"]: a for a in dom["nav"]}
    assert nav["‹ previous period"]["href"] == f"{base}/?since={T0 - 31 * DAY}&until={T0}"  # October
    assert "current period" not in nav

    _res, dom = load(browser, f"{base}/team/evals", tmp_path, "evals")
    data = expected(env, *NOV, team="evals")
    assert_page_equals(dom, data, teams=1)
    assert data["used_gpu_hours"] == 10 and data["refunded_gpu_hours"] == 36
    nav = {a["text"]: a for a in dom["nav"]}
    assert nav["evals"]["current"] and nav["all teams"]["href"] == f"{base}/"
    assert nav["pretraining"]["href"] == f"{base}/team/pretraining"
    assert nav["‹ previous period"]["href"] == f"{base}/team/evals?since={T0 - 31 * DAY}&until={T0}"


def test_dashboard_in_chromium_equals_api_report(browser: Chromium, site: tuple[str, Env], tmp_path: Path) -> None:
    """The issue's check: the page's numbers are `/api/report`'s JSON for the same period."""
    from cellsched.runtime.clock import now_s
    from cellsched.server import tokens

    base, env = site
    if "/api/report" not in httpx.get(f"{base}/openapi.json").json()["paths"]:
        pytest.skip("/api/report is not served yet (server/api.py)")
    _tid, secret = tokens.issue(env, "alice", "root-admin", now_s(), note="dashboard test")
    auth = {"Authorization": f"Bearer {secret}"}
    for path, team, teams in (("/", None, 3), ("/team/interp", "interp", 1)):
        params: dict[str, Any] = {"since": WEEK[0], "until": WEEK[1], **({"team": team} if team else {})}
        r = httpx.get(f"{base}/api/report", params=params, headers=auth)
        assert r.status_code == 200, r.text
        api = r.json()
        assert (api["period"]["since"], api["period"]["until"], api["team"]) == (*WEEK, team)
        _res, dom = load(browser, f"{base}{path}?since={WEEK[0]}&until={WEEK[1]}", tmp_path, f"api-{team}")
        assert_page_equals(dom, api, teams=teams)


def test_unknown_team_in_chromium_is_a_404_with_one_line(browser: Chromium, site: tuple[str, Env],
                                                         tmp_path: Path) -> None:
    base, _env = site
    url = f"{base}/team/nobody"
    assert httpx.get(url).status_code == 404
    res = browser.open(url, READ_DOM)
    (err,) = res.errors()  # Chromium logs the status itself; nothing else
    assert "status of 404" in err and url in err, err
    assert res.requests == [url]
    dom = json.loads(res.value)
    assert dom["error"] == "no team 'nobody' in the cluster config (teams: interp, evals, pretraining)"
    assert [a["text"] for a in dom["nav"]][:4] == ["all teams", "interp", "evals", "pretraining"]


# -- over TestClient, SQLite and PostgreSQL ---------------------------------------------


def spec(name: str, gpus: int, hours: float) -> ProjectSpec:
    return ProjectSpec.model_validate({
        "name": name, "team": "interp", "owner": "alice", "problem": "q",
        "budget": {"gpu_hours": gpus * hours, "gpus": gpus},
        "jobs": [{"name": "train", "gpus": gpus, "run": "true"}],
    })


def keyed(page: str) -> dict[str, Any]:
    return {k: json.loads(v.replace("&quot;", '"'))
            for k, v in re.findall(r'data-key="([^"]+)" data-value="([^"]*)"', page)}


def test_edges_and_the_cache_follow_the_ledger(env: Env) -> None:
    app = app_for(env)
    reports = app.state.cs.metrics.reports
    reports.min_age_s = reports.cost_factor = 0  # recompute as soon as the ledger's sequence moves
    client = TestClient(app)

    r = client.get("/team/nobody")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert re.findall(r'id="error">([^<]*)<', r.text) == [
        "no team &#39;nobody&#39; in the cluster config (teams: interp, evals, pretraining)"]
    for query, line in (("since=yesterday", "since: &#39;yesterday&#39; is not a time"),
                        (f"since={T0}&until={T0}", "since must be before until"),
                        ("since=0&until=99999999999999", "until: 99999999999999 is out of range"),
                        ("since=-99999999999&until=0", "since: -99999999999 is out of range"),
                        ("since=" + "9" * 40, "is out of range")):
        r = client.get(f"/?{query}")
        assert r.status_code == 400 and line in r.text, r.text

    r = client.get("/")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-cache"
    assert 'id="empty"' in r.text  # nothing in the ledger yet
    page = reports.get(("page", *NOV, None), lambda _t: pytest.fail("recomputed with no write"))
    assert client.get("/").text == r.text

    out = service.submit(env, spec("fresh", 4, 6), "alice", NOW)
    assert out.granted and out.grant is not None
    r = client.get("/")
    assert 'id="empty"' not in r.text
    assert keyed(r.text)["granted_gpu_hours"] == 24 == expected(env, *NOV)["granted_gpu_hours"]
    assert f"ledger event {page.seq + 1}" in r.text
    team = client.get("/team/interp")
    assert keyed(team.text)["teams.interp.granted_gpu_hours"] == 24


def test_any_query_or_team_is_a_page_or_one_line_never_a_5xx(tmp_path: Path) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from cellsched.receipt import create_keys, key_paths

    (tmp_path / "cluster.toml").write_text(CLUSTER)
    create_keys(*key_paths(tmp_path / "cluster.toml"))
    env = open_env(tmp_path / "cluster.toml", f"sqlite:///{tmp_path / 'ledger.db'}")
    client = TestClient(app_for(env), raise_server_exceptions=False)
    times = st.one_of(st.integers(-10**20, 10**20).map(str), st.text(max_size=30),
                      st.dates().map(str), st.datetimes().map(lambda d: d.isoformat()))

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(team=st.one_of(st.none(), st.text(min_size=1, max_size=20)), since=st.one_of(st.none(), times),
           until=st.one_of(st.none(), times))
    def check(team: str | None, since: str | None, until: str | None) -> None:
        params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
        path = "/" if team is None else "/team/" + quote(team, safe="")
        r = client.get(path, params=params)
        assert r.status_code in (200, 400, 404), (path, params, r.status_code, r.text[-300:])
        if r.status_code != 200 and r.headers["content-type"].startswith("text/html"):
            assert len(re.findall(r'id="error">([^<]*)<', r.text)) == 1

    check()
    env.ledger.dispose()
