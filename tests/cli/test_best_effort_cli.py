"""Best-effort work through the command line (docs/lending.md): submit queues it (exit 0),
the issue's bad input is one line and exit 2 (or a refusal with its reason, exit 1) with
nothing written, plan writes nothing, status and budget show it, cancel stops it, audit
passes; the example in projects/ is real."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select
from typer.testing import CliRunner

from cellsched.cli.app import app
from cellsched.ledger.db import Ledger
from cellsched.ledger.tables import BestEffortRow, BestEffortTaskRow, EventRow, ProjectRow

NOW = "2026-12-01T00:00:00Z"
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "projects" / "lr-sweep" / "lr-sweep.toml"

CLUSTER = """
admins = ["root-admin"]
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 16
gpus_per_node = 8
[[teams]]
name = "interp"
members = ["alice"]
allowance_gpu_hours = 1500
[[teams]]
name = "evals"
members = ["carol"]
allowance_gpu_hours = 100
period = "month"
best_effort_gpu_hours = 300
"""

SWEEP = """
name = "lr-sweep"
team = "{team}"
owner = "carol"
problem = "Which learning rate schedule makes the loss fall fastest?"
kind = "best-effort"
[budget]
gpu_hours = {hours}
gpus = 1
{budget}
[[jobs]]
name = "trial"
run = "python sweep.py --resume"
gpus = 1
count = {count}
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    from cellsched.receipt import create_keys, key_paths

    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    create_keys(*key_paths(path))
    return path


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def cli(cluster: Path, db: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CELLSCHED_SERVER", raising=False)
    runner = CliRunner()

    def run(*args: str, user: str = "carol", now: str = NOW) -> Any:
        return runner.invoke(app, ["--cluster", str(cluster), "--db", db, *args],
                             env={"CELLSCHED_USER": user, "CELLSCHED_NOW": now})

    return run


def write(tmp_path: Path, team: str = "evals", hours: float = 200, count: Any = 64, budget: str = "",
          name: str = "sweep.toml") -> str:
    path = tmp_path / name
    path.write_text(SWEEP.format(team=team, hours=hours, count=count, budget=budget))
    return str(path)


def written(db: str) -> tuple[int, int, int, int]:
    """Events, projects, submissions and tasks in the ledger."""
    ledger = Ledger(db)
    try:
        with ledger.read() as s:
            return tuple(len(s.exec(select(t)).all())  # type: ignore[return-value]
                         for t in (EventRow, ProjectRow, BestEffortRow, BestEffortTaskRow))
    finally:
        ledger.dispose()


def test_submit_queues_64_trials_and_the_same_spec_again_is_its_submission(cli, tmp_path: Path, db: str) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", write(tmp_path))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("queued  lr-sweep@") and "best-effort: 64 queued, 0 running, 0 done of 64 tasks" in lines[0]
    assert "up to 1 GPU of H100 (h100) at once" in lines[0]
    assert "(remaining this month after it: 100 of 300)" in r.stdout
    assert written(db) == (1, 1, 1, 64)
    again = cli("submit", write(tmp_path), "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["existing"] is True and written(db) == (1, 1, 1, 64)


def test_status_shows_best_effort_work_in_its_own_section(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("submit", write(tmp_path, count=3)).exit_code == 0
    st = cli("status")
    assert st.exit_code == 0, st.output
    assert "best-effort work" in st.stdout and "lr-sweep@" in st.stdout
    (item,) = json.loads(cli("status", "--json").stdout)
    assert (item["kind"], item["state"], item["tasks"]["queued"], item["budget_gpu_hours"]) == (
        "best-effort", "queued", 3, 200)
    one = cli("status", "lr-sweep")
    assert one.exit_code == 0 and "tasks" in one.stdout and one.stdout.count(" queued ") >= 4, one.stdout


def test_budget_and_cancel(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("submit", write(tmp_path, count=3)).exit_code == 0
    b = cli("budget", "evals")
    assert b.exit_code == 0, b.output
    assert "  best-effort: allowance 300  charged 0  reserved 200  remaining 100  (GPU-hours)" in b.stdout
    data = json.loads(cli("budget", "evals", "--json").stdout)
    assert (data["best_effort_allowance_gpu_hours"], data["best_effort_charged_gpu_hours"],
            data["best_effort_remaining_gpu_hours"]) == (300, 0, 100)
    c = cli("cancel", "lr-sweep")
    assert c.exit_code == 0, c.output
    assert c.stdout.startswith("cancelled  lr-sweep@") and "3 queued tasks cancelled" in c.stdout
    au = cli("audit", "--json")
    assert au.exit_code == 0 and json.loads(au.stdout)["ok"] is True, au.output


@pytest.mark.parametrize(("case", "kwargs", "words"), [
    ("count 0", {"count": 0}, "sweep.toml: jobs.0.count: must be greater than or equal to 1"),
    ("count -1", {"count": -1}, "sweep.toml: jobs.0.count: must be greater than or equal to 1"),
    ("deadline", {"budget": 'deadline = "2027-01-01T00:00:00Z"'},
     "sweep.toml: budget.deadline: best-effort work has no window"),
    ("not_before", {"budget": "not_before = 2027-01-01T00:00:00Z"},
     "sweep.toml: budget.not_before: best-effort work has no window"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(cli, tmp_path: Path, db: str, case: str,  # type: ignore[no-untyped-def]
                                                          kwargs: dict[str, Any], words: str) -> None:
    for command in ("submit", "plan", "validate"):
        r = cli(command, write(tmp_path, **kwargs))
        assert r.exit_code == 2, r.output
        assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert r.stderr.startswith(f"cellsched: {tmp_path / words}"), r.stderr
    assert not Path(db.removeprefix("sqlite:///")).exists() or written(db) == (0, 0, 0, 0)


def test_a_team_without_best_effort_allowance_is_refused_with_nothing_written(cli, tmp_path: Path, db: str) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", write(tmp_path, team="interp"), user="alice")
    assert r.exit_code == 1, r.output
    assert r.stdout == ("refused  lr-sweep@" + r.stdout.split("@", 1)[1].split(" ", 1)[0] + "  no_best_effort_allowance: "
                        "team interp has no best-effort allowance (best_effort_gpu_hours in the cluster config)\n")
    data = json.loads(cli("submit", write(tmp_path, team="interp"), "--json", user="alice").stdout)
    assert (data["decision"], data["refusal"]["reason"]) == ("refused", "no_best_effort_allowance")
    over = cli("submit", write(tmp_path, hours=301))
    assert over.exit_code == 1 and "over_best_effort_allowance: 301 GPU-hours asked" in over.stdout
    assert written(db) == (0, 0, 0, 0)


def test_plan_and_dry_run_write_nothing_and_replace_is_bad_input(cli, tmp_path: Path, db: str) -> None:  # type: ignore[no-untyped-def]
    r = cli("plan", write(tmp_path))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("would be queued  lr-sweep@") and "nothing written (dry run)" in r.stdout
    assert json.loads(cli("submit", "--dry-run", "--json", write(tmp_path)).stdout)["dry_run"] is True
    rep = cli("submit", "--replace", write(tmp_path))
    assert rep.exit_code == 2 and "--replace: best-effort work has no window to replace" in rep.stderr
    assert written(db) == (0, 0, 0, 0)


def test_the_example_in_projects_is_queued_on_the_starter_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.resources import files

    monkeypatch.delenv("CELLSCHED_SERVER", raising=False)
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(files("cellsched").joinpath("templates/cluster.toml").read_text().replace("{user}", "carol"))
    runner = CliRunner()
    env = {"CELLSCHED_USER": "carol", "CELLSCHED_NOW": NOW}
    assert runner.invoke(app, ["--cluster", str(cfg), "init"], env=env).exit_code == 0
    r = runner.invoke(app, ["--cluster", str(cfg), "submit", str(EXAMPLE)], env=env)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("queued  lr-sweep@") and "64 queued" in r.stdout
