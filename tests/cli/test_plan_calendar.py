"""What-if and capacity through the real CLI (issue 14): ``plan`` / ``submit --dry-run``
write nothing and answer as the submit then does; ``submit --take N`` end to end (TOML,
YAML, JSON: the copy written next to the spec, the diff, the copy sealed and granted as the
alternative said); ``calendar``'s figures are what admission grants (each column's widest
grant starts there, one node-rule width wider does not; a ``--fit`` answer is re-admitted
at that start), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cellsched.cli.app import app
from cellsched.ledger.db import Ledger
from cellsched.service import ledger_version

NOW = "2026-12-01T00:00:00Z"
T0 = 1796083200
H = 3600

SPEC = """# a spec with comments, which --take keeps
name = "{name}"
team = "{team}"
owner = "alice"
problem = "Does the ablation change the loss?"

[budget]
gpu_hours = {hours}   # the GPU-hours
gpus = {gpus}         # held together
{extra}
[[jobs]]
name = "train"
run = ["python", "train.py"]
gpus = {gpus}
"""


@pytest.fixture
def cli(tmp_path: Path, cluster_file: Path, ledger_url: str):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def run(*args: str, user: str = "alice") -> Any:
        return runner.invoke(app, ["--cluster", str(cluster_file), "--db", ledger_url, *args],
                             env={"CELLSCHED_USER": user, "CELLSCHED_NOW": NOW, "CELLSCHED_SERVER": "local"})

    run.url = ledger_url  # type: ignore[attr-defined]
    return run


def write(tmp_path: Path, name: str, team: str = "interp", gpus: int = 8, hours: float = 16, extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SPEC.format(name=name, team=team, gpus=gpus, hours=hours, extra=extra))
    return path


def head(url: str) -> tuple[int, str]:
    ledger = Ledger(url)
    try:
        with ledger.read() as s:
            return ledger_version(s)
    finally:
        ledger.dispose()


def js(r: Any) -> Any:
    assert "Traceback" not in r.output, r.output
    return json.loads(r.stdout)


def busy(cli: Any, tmp_path: Path) -> None:
    """16 H100s on two nodes of 8: one node for two days, half the other for one."""
    assert cli("submit", str(write(tmp_path, "big", "pretraining", gpus=8, hours=8 * 48)), user="dave").exit_code == 0
    assert cli("submit", str(write(tmp_path, "side", "pretraining", gpus=4, hours=4 * 24)), user="dave").exit_code == 0


# -- plan -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", [("plan",), ("submit", "--dry-run")])
def test_plan_writes_nothing_and_answers_as_the_submit_then_does(cli: Any, tmp_path: Path, how: tuple[str, ...]) -> None:
    busy(cli, tmp_path)
    for path, code in ((write(tmp_path, "ok", gpus=4, hours=8), 0),
                       (write(tmp_path, "late", gpus=8, hours=64, extra='deadline = "2026-12-02T00:00:00Z"'), 1)):
        before = head(cli.url)
        r = cli(*how, str(path))
        assert r.exit_code == code and ("would be granted" if code == 0 else "would be refused") in r.stdout
        planned = js(cli(*how, str(path), "--json"))
        assert head(cli.url) == before and planned["dry_run"] is True
        real = js(cli("submit", str(path), "--json"))
        planned.pop("dry_run")
        if "grant" in planned:
            assert planned["grant"].pop("id") is None
            real["grant"].pop("id")
        assert planned == real


# -- --take ---------------------------------------------------------------------------------------


def test_take_writes_the_alternative_next_to_the_spec_shows_the_diff_and_submits_it(cli: Any, tmp_path: Path) -> None:
    busy(cli, tmp_path)
    path = write(tmp_path, "late", gpus=8, hours=64, extra='deadline = "2026-12-02T00:00:00Z"')
    refusal = js(cli("submit", str(path), "--json"))["refusal"]
    assert len(refusal["alternatives"]) >= 2
    for n, alt in enumerate(refusal["alternatives"], 1):
        r = cli("submit", str(path), "--take", str(n))
        assert r.exit_code == 0, r.output
        new = tmp_path / f"late.alt{n}.toml"
        assert f"wrote {new}" in r.stdout and f"--- {path}\n+++ {new}\n" in r.stdout
        text = new.read_text()
        assert text.startswith("# a spec with comments, which --take keeps") and "# held together" in text
        assert text.count("\n\n") == path.read_text().count("\n\n")  # an edited line adds no blank one
        granted = js(cli("status", "--json", "late"))[0]
        assert (granted["pool"], granted["width"], granted["start"], granted["end"]) == (
            alt["pool"], alt["gpus"], alt["start"], alt["end"])
        assert js(cli("verify", "--json", "late", "--spec", str(new)))["valid"]
        assert cli("cancel", "late").exit_code == 0
    first = refusal["alternatives"][0]
    assert first["kind"] == "later_start"
    assert 'deadline = "2026-12-02T08:00:00Z"' in (tmp_path / "late.alt1.toml").read_text()
    narrower = next(i for i, a in enumerate(refusal["alternatives"], 1) if a["kind"] == "narrower")
    text = (tmp_path / f"late.alt{narrower}.toml").read_text()
    assert "gpus = 4         # held together" in text and text.rstrip().endswith("gpus = 4")  # the job too


def test_take_in_yaml_and_json_and_the_bad_cases(cli: Any, tmp_path: Path) -> None:
    busy(cli, tmp_path)
    yaml = tmp_path / "y.yaml"
    yaml.write_text("name: y\nteam: interp\nowner: alice\nproblem: a question\nbudget:\n  gpu_hours: 64  # 8 h\n"
                    "  gpus: 8\n  deadline: '2026-12-02T00:00:00Z'\njobs:\n  - name: t\n    run: 'true'\n    gpus: 8\n")
    r = cli("submit", str(yaml), "--take", "2")
    assert r.exit_code == 0, r.output
    assert "gpus: 4" in (tmp_path / "y.alt2.yaml").read_text() and "# 8 h" in (tmp_path / "y.alt2.yaml").read_text()
    doc = {"name": "j", "team": "interp", "owner": "alice", "problem": "q",
           "budget": {"gpu_hours": 64, "gpus": 8, "deadline": "2026-12-02T00:00:00Z"},
           "jobs": [{"name": "t", "run": "true", "gpus": 8}]}
    (tmp_path / "j.json").write_text(json.dumps(doc))
    out = js(cli("submit", str(tmp_path / "j.json"), "--take", "1", "--json"))
    assert out["decision"] == "granted" and out["took"]["kind"] == "later_start" and out["took"]["diff"]
    assert json.loads((tmp_path / "j.alt1.json").read_text())["budget"]["deadline"] == "2026-12-02T08:00:00Z"
    ok = write(tmp_path, "fine", gpus=2, hours=2)
    r = cli("submit", str(ok), "--take", "1")
    assert r.exit_code == 2 and "would be granted as it is" in r.stderr
    late = write(tmp_path, "late2", gpus=8, hours=64, extra='deadline = "2026-12-02T00:00:00Z"')
    r = cli("submit", str(late), "--take", "9")
    assert r.exit_code == 2 and "--take 9: the refusal (no_capacity_in_window) offers alternative" in r.stderr


# -- calendar -------------------------------------------------------------------------------------


def test_calendar_figures_are_what_admission_grants(cli: Any, tmp_path: Path) -> None:
    busy(cli, tmp_path)
    data = js(cli("calendar", "--days", "3", "--json"))
    (pool,) = data["pools"]
    step = data["step_s"]
    assert data["from"] == T0 and step == H and len(pool["widest"]) == 72
    assert pool["widest"][0] == 4 and pool["widest"][30] == 8 and pool["widest"][60] == 16
    assert [c["widest"] for c in pool["changes"]] == [4, 8, 16]
    # Each column's widest grant is granted there (for a team without limits); one wider is not.
    for i in (0, 23, 24, 47, 48):
        t, w = T0 + i * step, pool["widest"][i]
        nb = f'not_before = "{iso(t)}"'
        got = js(cli("plan", str(write(tmp_path, f"c{i}", "pretraining", gpus=w, hours=w, extra=nb)), "--json",
                     user="dave"))
        assert got["grant"]["start"] == t, (i, w, got)
        wider = {4: 8, 8: 16}.get(w)
        if wider:
            got = js(cli("plan", str(write(tmp_path, f"d{i}", "pretraining", gpus=wider, hours=wider, extra=nb)),
                         "--json", user="dave"))
            assert got["decision"] == "refused" or got["grant"]["start"] > t, (i, wider, got)
    # --fit: the earliest window of 16 GPUs for 24 h; admission grants that very window.
    fit = js(cli("calendar", "--fit", "16x24h", "--json"))["fit"]
    assert fit["earliest"]["start"] == T0 + 48 * H
    got = js(cli("plan", str(write(tmp_path, "f", "pretraining", gpus=16, hours=16 * 24, extra='pool = "h100"')),
                 "--json", user="dave"))
    assert (got["grant"]["start"], got["grant"]["end"]) == (fit["earliest"]["start"], fit["earliest"]["end"])
    team = js(cli("calendar", "--fit", "8x150h", "--team", "evals", "--json"))["fit"]
    assert team["earliest"] is None and team["pools"][0]["note"] == "over_allowance"
    r = cli("calendar", "--days", "2", "--fit", "16x24h")
    assert r.exit_code == 0 and "h100  16 GPUs H100 on nodes of 8" in r.stdout and "▕" in r.stdout
    assert " * h100: 2026-12-03 00:00 → 2026-12-04 00:00 UTC  (nodes 0, 1)" in r.stdout
    for bad, line in ((("--fit", "16by24"), "--fit: '16by24' is not GPUS x HOURS"),
                      (("--pool", "tpu"), "--pool: no pool 'tpu' (pools: h100)"),
                      (("--days", "0"), "--days: 0 is not between 1 and 366")):
        r = cli("calendar", *bad)
        assert r.exit_code == 2 and line in r.stderr and r.stderr.count("\n") == 1, r.output


def iso(t: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
