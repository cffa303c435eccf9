"""The HTML report in a real headless Chromium: it loads with no console errors and no
requests beyond itself, fits a laptop-wide window, a screenshot is taken, and the headline
numbers in the DOM equal the JSON report's.

Skipped when no Chromium is installed, except under CI (``CI`` set), where ``.ci/run``
installs Debian's ``chromium`` and a missing browser must fail rather than pass silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from report_builders import DAY, T0
from cdp import Chromium, find_chromium
from report_builders import fill_known

from cellsched.ledger.db import Ledger
from cellsched.report import compute, render_html, snapshot
from cellsched.report.terminal import duration, pct
from cellsched.service import open_env

CHROMIUM = find_chromium()
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("no chromium installed (apt-get install -y chromium); required under CI", allow_module_level=True)

ARTIFACTS = os.environ.get("CELLSCHED_TEST_ARTIFACTS")  # keep screenshots here if set

READ_DOM = """JSON.stringify({
  keyed: [...document.querySelectorAll('[data-key]')].map(e => ({
    key: e.dataset.key, value: e.dataset.value,
    text: (e.querySelector('.v') || e).textContent.trim()})),
  svgs: document.querySelectorAll('svg').length,
  empty: (document.getElementById('empty') || {}).textContent || null,
  scrollWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
  title: document.title})"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    assert CHROMIUM is not None, "chromium is required under CI"
    root = tmp_path_factory.mktemp("chromium")
    with Chromium(CHROMIUM, root / "profile", width=1280, height=800) as c:
        yield c


def _report(cluster_file: Path, fill: bool, since: int, until: int, now: int) -> dict:
    e = open_env(cluster_file, f"sqlite:///{cluster_file.parent / 'b.db'}")
    if fill:
        fill_known(e.ledger)
    data = compute.build(snapshot.load(e.ledger, e.cluster, since, until), e.cluster, since, until, now)
    e.ledger.dispose()
    return data


def _shot(tmp_path: Path, name: str) -> Path:
    if ARTIFACTS:
        Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
        return Path(ARTIFACTS) / name
    return tmp_path / name


def lookup(data: dict, key: str):  # type: ignore[no-untyped-def]
    """A value by the page's data-key: ``teams.<name>.<field>`` picks the team by name."""
    parts = key.split(".")
    if parts[0] == "teams":
        team = next(t for t in data["teams"] if t["team"] == parts[1])
        return team[parts[2]]
    return render_html.lookup(data, key)


def test_report_page_in_chromium(browser: Chromium, cluster_file: Path, tmp_path: Path) -> None:
    data = _report(cluster_file, True, T0, T0 + 7 * DAY, T0 + 10 * DAY)
    page = tmp_path / "report.html"
    page.write_text(render_html.report_page(json.loads(json.dumps(data))), encoding="utf-8")
    shot = _shot(tmp_path, "report.png")
    res = browser.open(page, READ_DOM, screenshot=shot)

    assert res.errors() == []
    assert res.external_requests() == [] and res.requests == [res.url]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(res.screenshot) > 20_000
    dom = json.loads(res.value)
    assert dom["scrollWidth"] <= dom["innerWidth"], "the page scrolls sideways at 1280 px"
    assert dom["svgs"] == 5

    keyed = {k["key"]: k for k in dom["keyed"]}
    headline = ["capacity_gpu_hours", "granted_gpu_hours", "held_gpu_hours", "used_gpu_hours",
                "idle_reserved_gpu_hours", "unreserved_gpu_hours", "utilisation.used_over_capacity",
                "utilisation.used_over_held", "guarantee_breaches.count", "guarantee_breaches.gpu_hours",
                "refusals.count", "wait.p50_s", "wait.p95_s"]
    for key in headline:
        assert key in keyed, key
        assert json.loads(keyed[key]["value"]) == lookup(data, key), key
    # what a person reads is the JSON's number, formatted
    assert keyed["used_gpu_hours"]["text"] == "34.0"
    assert keyed["capacity_gpu_hours"]["text"] == "2,688.0"
    assert keyed["utilisation.used_over_held"]["text"] == pct(34 / 244)
    assert keyed["wait.p95_s"]["text"] == duration(4 * DAY)
    assert keyed["refusals.by_reason.over_allowance"]["text"] == "2"
    team_keys = [k for k in keyed if k.startswith("teams.")]
    assert len(team_keys) == 3 * 7  # allowance, granted, used, refunded, remaining, 2 shares
    for key in team_keys:
        assert json.loads(keyed[key]["value"]) == lookup(data, key), key


def test_empty_page_in_chromium(browser: Chromium, cluster_file: Path, tmp_path: Path) -> None:
    data = _report(cluster_file, False, T0, T0 + 7 * DAY, T0 + 10 * DAY)
    page = tmp_path / "empty.html"
    page.write_text(render_html.report_page(data), encoding="utf-8")
    res = browser.open(page, READ_DOM, screenshot=_shot(tmp_path, "empty.png"))
    assert res.errors() == [] and res.external_requests() == []
    dom = json.loads(res.value)
    assert "Nothing in this period" in dom["empty"]
    assert json.loads(dom["keyed"][0]["value"]) == data["capacity_gpu_hours"] == 2688


def test_harness_sees_fetches_and_errors(browser: Chromium, tmp_path: Path) -> None:
    """The checks above can fail: a page that fetches and logs an error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="http://example.invalid/x.png">'
                   '<script>console.error("boom")</script></body></html>')
    res = browser.open(bad, "1")
    assert res.external_requests() == ["http://example.invalid/x.png"]
    assert any("boom" in e for e in res.errors())


def test_csp_blocks_fetches_in_our_pages(browser: Chromium, tmp_path: Path) -> None:
    """A page built with html.page() cannot fetch even if a section smuggles in a URL: the
    attempt is blocked by its Content-Security-Policy and shows as an error."""
    from cellsched.report import html

    page = tmp_path / "csp.html"
    page.write_text(html.page("t", [html.Section("s", '<img src="http://example.invalid/y.png">')]))
    res = browser.open(page, "1")
    assert res.blocked == {"http://example.invalid/y.png": "csp"}
    assert any("Content Security Policy" in e for e in res.errors())


def test_ledger_is_untouched_by_rendering(cluster_file: Path) -> None:
    """Rendering reads; the event chain still audits after a report."""
    from cellsched.ledger import events

    e = open_env(cluster_file, f"sqlite:///{cluster_file.parent / 'b.db'}")
    fill_known(e.ledger)
    compute.build(snapshot.load(e.ledger, e.cluster, T0, T0 + DAY), e.cluster, T0, T0 + DAY, T0 + DAY)
    with Ledger(e.ledger.url).read() as s:
        assert events.audit(s).ok
    e.ledger.dispose()
