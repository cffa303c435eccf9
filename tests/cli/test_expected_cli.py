"""The expected start through the real CLI (issue 15, point 2), on SQLite and PostgreSQL:
``plan`` and ``submit`` print it beside the guaranteed window, ``status`` shows it in a
column when a grant waits and ``status PROJECT`` with its basis; ``--json`` of
``submit --dry-run``, ``submit`` and ``status`` carries ``expected_start`` (and
``expected_start_utc``) and ``expected_start_basis``. The figures are the ones
tests/service/test_expected_start.py computes by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cellsched import service
from cellsched.cli.app import app
from cellsched.ledger.lifecycle import GrantWriter
from cellsched.spec.models import ProjectSpec

NOW = "2026-12-01T00:00:00Z"
T0 = 1796083200
H = 3600
DAY = 86400

SPEC = """name = "{name}"
team = "{team}"
owner = "{owner}"
problem = "Does the ablation change the loss?"
[budget]
gpu_hours = {hours}
gpus = {gpus}
[[jobs]]
name = "train"
run = ["python", "train.py"]
gpus = {gpus}
"""


def write(where: Path, name: str, team: str, owner: str, gpus: int, hours: int) -> Path:
    path = where / f"{name}.toml"
    path.write_text(SPEC.format(name=name, team=team, owner=owner, gpus=gpus, hours=gpus * hours))
    return path


@pytest.fixture
def cli(tmp_path: Path, cluster_file: Path, ledger_url: str):  # type: ignore[no-untyped-def]
    """The CLI on a ledger where team interp's three grants of the last 30 days each held
    half of their 4 h window (ratio 0.5), and "a" (interp, 16 GPUs, 8 h) starts at T0."""
    env = service.open_env(cluster_file, ledger_url)
    env.ledger.ensure_schema()
    try:
        for i, days in enumerate((10, 6, 2)):
            at = T0 - days * DAY
            sp = ProjectSpec.model_validate({
                "name": f"old{i}", "team": "interp", "owner": "alice", "problem": "q",
                "budget": {"gpu_hours": 32, "gpus": 8}, "jobs": [{"name": "t", "run": "true", "gpus": 8}]})
            out = service.submit(env, sp, "alice", at)
            assert out.grant is not None and out.grant.id is not None
            w = GrantWriter(env.ledger)
            assert w.begin(out.grant.id, "r", "logs", at, None) and w.activate(out.grant.id, at)
            assert w.finish_early(out.grant.id, at + 2 * H, "completed", lambda s, now: []) is not None
    finally:
        env.ledger.dispose()
    runner = CliRunner()

    def run(*args: str, user: str = "alice") -> Any:
        r = runner.invoke(app, ["--cluster", str(cluster_file), "--db", ledger_url, *args],
                          env={"CELLSCHED_USER": user, "CELLSCHED_NOW": NOW, "CELLSCHED_SERVER": "local"})
        assert "Traceback" not in r.output, r.output
        return r

    assert run("submit", str(write(tmp_path, "a", "interp", "alice", 16, 8))).exit_code == 0
    return run


def test_plan_submit_and_status_say_the_expected_start(cli: Any, tmp_path: Path) -> None:
    b = write(tmp_path, "b", "interp", "bob", 8, 4)  # promised [T0 + 8 h, T0 + 12 h); expected T0 + 4 h
    basis = ("team interp's last 30 days: half the grants held at most 50% of their window (3 grants); "
             "later work arrives as in the last 24 h")
    line = f"  expected start 2026-12-01 04:00 UTC (4 h before the guaranteed start) — {basis}"

    planned = json.loads(cli("submit", "--dry-run", "--json", str(b), user="bob").stdout)
    assert planned["grant"]["start"] == T0 + 8 * H
    assert (planned["expected_start"], planned["expected_start_utc"], planned["expected_start_basis"]) == (
        T0 + 4 * H, "2026-12-01T04:00:00Z", basis)
    assert line in cli("plan", str(b), user="bob").stdout.splitlines()
    out = cli("submit", str(b), user="bob").stdout.splitlines()
    assert out[0].startswith("granted  b@") and out[0].endswith("2026-12-01 08:00 → 2026-12-01 12:00 UTC")
    assert out[1] == line

    items = {it["project"].split("@")[0]: it for it in json.loads(cli("status", "--json").stdout)}
    assert (items["b"]["expected_start"], items["b"]["expected_start_basis"]) == (T0 + 4 * H, basis)
    assert (items["a"]["expected_start"], items["a"]["expected_start_basis"]) == (T0, "started")
    assert (items["old1"]["expected_start"], items["old1"]["expected_start_basis"]) == (None, None)
    assert "old0" not in items  # ended 10 days ago: `status --all` lists it
    table = cli("status").stdout
    assert "expected (UTC)" in table
    row = next(r for r in table.splitlines() if r.startswith("b@"))
    assert [c.strip() for c in row.split("│")][4:7] == ["2026-12-01 08:00", "2026-12-01 04:00", "2026-12-01 12:00"]
    assert line.strip() in cli("status", "b").stdout.splitlines()


def test_a_window_that_has_begun_says_nothing_more(cli: Any, tmp_path: Path) -> None:
    c = write(tmp_path, "c", "interp", "alice", 16, 1)  # after a: [T0 + 8 h, T0 + 9 h)
    assert "expected start" not in cli("status").stdout  # a starts now: no column, no line
    got = json.loads(cli("submit", "--json", str(c)).stdout)
    assert got["expected_start"] == T0 + 4 * H  # a ends at T0 + 4 h
    again = json.loads(cli("submit", "--json", str(write(tmp_path, "a", "interp", "alice", 16, 8))).stdout)
    assert again["existing"] and (again["expected_start"], again["expected_start_basis"]) == (T0, "starts now")
