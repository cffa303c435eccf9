"""`cellsched report` end to end: flags, exit codes, the empty report, files written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from report_builders import DAY, T0

from cellsched.report.compute import utc

SINCE, UNTIL, NOW = utc(T0), utc(T0 + 7 * DAY), utc(T0 + 10 * DAY)


def cli(cluster: Path, db: str, *args: str, now: str = NOW) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CELLSCHED_NOW": now, "CELLSCHED_USER": "root-admin", "CELLSCHED_DB": db}
    return subprocess.run(
        [sys.executable, "-c", "from cellsched.cli.app import main; main()", "--cluster", str(cluster), "report", *args],
        capture_output=True, text=True, env=env, timeout=120)


def test_empty_ledger_says_nothing_in_period(cluster_file: Path) -> None:
    db = f"sqlite:///{cluster_file.parent / 'empty.db'}"
    out = cli(cluster_file, db)
    assert out.returncode == 0, out.stderr
    assert "nothing in this period" in out.stdout
    j = cli(cluster_file, db, "--json")
    assert j.returncode == 0
    data = json.loads(j.stdout)
    assert data["empty"] is True and data["capacity_gpu_hours"] == 16 * 24 * 30


def test_empty_ledger_html(cluster_file: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{cluster_file.parent / 'empty.db'}"
    out = cli(cluster_file, db, "--html", str(tmp_path / "r.html"), "--png", str(tmp_path / "png"))
    assert out.returncode == 0, out.stderr
    assert "Nothing in this period" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--since", "2026-12-01", "--until", "2026-11-01"], "--since must be before --until"),
    (["--since", "yesterday"], "--since: 'yesterday' is not a time"),
    (["--since", "\u00b2"], "--since: '\u00b2' is not a time"),  # str.isdigit() passes it, int() does not
    (["--until", "9" * 30], "--until: " + "9" * 30 + " is out of range"),
    (["--team", "nobody"], "--team: no team 'nobody'"),
])
def test_bad_input_exits_2(cluster_file: Path, args: list[str], message: str) -> None:
    out = cli(cluster_file, f"sqlite:///{cluster_file.parent / 'x.db'}", *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def _fill(cluster_file: Path) -> str:
    """The ``known`` ledger on SQLite (these tests are about the command, not the database)."""
    from report_builders import fill_known

    from cellsched.ledger.db import Ledger

    url = f"sqlite:///{cluster_file.parent / 'known.db'}"
    ledger = Ledger(url)
    fill_known(ledger)
    ledger.dispose()
    return url


def test_terminal_json_html_png_agree(cluster_file: Path, tmp_path: Path) -> None:
    db = _fill(cluster_file)
    html, png = tmp_path / "out" / "r.html", tmp_path / "charts"
    j = cli(cluster_file, db, "--since", SINCE, "--until", UNTIL, "--json", "--html", str(html), "--png", str(png))
    assert j.returncode == 0, j.stderr
    data = json.loads(j.stdout)  # --json keeps stdout pure JSON even when files are written
    assert data["used_gpu_hours"] == 34 and data["refusals"]["by_reason"]["over_allowance"] == 2
    assert {p.name for p in png.iterdir()} >= {"capacity.png", "pool-h100-timeline.png", "burndown.png",
                                               "refusals.png", "pool-h100-calendar.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in png.iterdir())
    page = html.read_text()
    assert page.count("<svg") == 5 and "http://" not in page.replace("http://www.w3.org/", "")
    t = cli(cluster_file, db, "--since", SINCE, "--until", UNTIL)
    assert t.returncode == 0, t.stderr
    from cellsched.report.terminal import headline_rows

    for _key, label, text in headline_rows(data):
        line = next(ln for ln in t.stdout.splitlines() if ln.startswith(label))
        assert line.rstrip().endswith(text), (label, text, line)


def test_team_json(cluster_file: Path) -> None:
    db = _fill(cluster_file)
    data = json.loads(cli(cluster_file, db, "--since", SINCE, "--until", UNTIL, "--team", "evals", "--json").stdout)
    assert data["team"] == "evals" and [t["team"] for t in data["teams"]] == ["evals"]
    assert data["granted_gpu_hours"] == 12 and data["refunded_gpu_hours"] == 36  # b, released early


def test_matplotlib_only_when_charts_are_asked_for(cluster_file: Path, tmp_path: Path) -> None:
    db = _fill(cluster_file)
    probe = ("import sys; from cellsched.cli.app import app\n"
             "try:\n    app()\nexcept SystemExit as e:\n    code = e.code\n"
             "print('MPL', 'matplotlib' in sys.modules, code, file=sys.stderr)")
    env = {**os.environ, "CELLSCHED_NOW": NOW, "CELLSCHED_DB": db}
    base = [sys.executable, "-c", probe, "--cluster", str(cluster_file), "report", "--since", SINCE, "--until", UNTIL]
    plain = subprocess.run([*base, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert "MPL False 0" in plain.stderr
    charts = subprocess.run([*base, "--html", str(tmp_path / "r.html")], capture_output=True, text=True, env=env,
                            timeout=120)
    assert "MPL True 0" in charts.stderr
