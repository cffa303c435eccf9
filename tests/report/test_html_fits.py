"""The report page on a laptop screen (1366 x 768) in a real headless Chromium: the page
never scrolls sideways and every table fits its box, long project names included.

Skipped when no Chromium is installed, except under CI (as ``test_browser.py``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cdp import Chromium, find_chromium
from report_builders import DAY, T0, fill_known

from cellsched.report import compute, render_html, snapshot
from cellsched.service import open_env

CHROMIUM = find_chromium()
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("no chromium installed (apt-get install -y chromium); required under CI", allow_module_level=True)

MEASURE = """JSON.stringify({page: document.documentElement.scrollWidth, window: window.innerWidth,
  tables: [...document.querySelectorAll('table')].map(t => ({
    section: t.closest('section').id, width: t.scrollWidth, box: t.parentElement.clientWidth}))})"""


@pytest.mark.parametrize("width", [1366, 1280])
def test_every_table_fits_a_laptop_screen(cluster_file: Path, tmp_path: Path, width: int) -> None:
    e = open_env(cluster_file, f"sqlite:///{tmp_path / 'w.db'}")
    fill_known(e.ledger)
    data = compute.build(snapshot.load(e.ledger, e.cluster, T0, T0 + 7 * DAY), e.cluster, T0, T0 + 7 * DAY,
                         T0 + 3 * DAY)
    e.ledger.dispose()
    # project ids as long as real ones get: a long name and its digest
    text = json.dumps(data)
    for short in "abcdef":
        text = text.replace(f'"{short}@', f'"tokenizer-study-with-a-longer-name-{short}@')
    page = tmp_path / "report.html"
    page.write_text(render_html.report_page(json.loads(text)), encoding="utf-8")
    assert text.count("tokenizer-study-with-a-longer-name-") >= 6
    with Chromium(CHROMIUM, tmp_path / "profile", width=width, height=768) as browser:  # type: ignore[arg-type]
        dom = json.loads(browser.open(page, MEASURE).value)
    assert dom["page"] <= dom["window"], "the page scrolls sideways"
    assert {t["section"] for t in dom["tables"]} >= {"decisions", "teams", "pools", "calendar", "projects"}
    too_wide = [t for t in dom["tables"] if t["width"] > t["box"]]
    assert too_wide == [], f"tables scroll sideways at {width} px"
