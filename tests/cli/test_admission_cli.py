"""The admission commands through the real CLI (typer's CliRunner): exit codes, the lines
people read, and the ``--json`` keys programs read (times as UTC ISO 8601 beside epochs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cellsched.cli.app import app

NOW = "2026-12-01T00:00:00Z"
T0 = 1796083200


def iso(t: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


SPEC = """
name = "{name}"
team = "{team}"
owner = "alice"
problem = "Does the ablation change the loss?"
[budget]
gpu_hours = {hours}
gpus = {gpus}
{extra}
[[jobs]]
name = "train"
run = ["python", "train.py"]
gpus = {gpus}
"""


@pytest.fixture
def cli(tmp_path: Path, cluster_file: Path):  # type: ignore[no-untyped-def]
    """Run ``cellsched`` against the test cluster on a SQLite ledger, as a given user."""
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'ledger.db'}"

    def run(*args: str, user: str = "alice", now: str = NOW) -> Any:
        return runner.invoke(app, ["--cluster", str(cluster_file), "--db", db, *args],
                             env={"CELLSCHED_USER": user, "CELLSCHED_NOW": now})

    return run


def write_spec(tmp_path: Path, name: str, team: str = "interp", gpus: int = 8, hours: float = 16,
               extra: str = "") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(SPEC.format(name=name, team=team, gpus=gpus, hours=hours, extra=extra))
    return str(path)


def as_json(result: Any) -> Any:
    assert result.stdout.strip(), result.output
    return json.loads(result.stdout)


def test_submit_granted(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", write_spec(tmp_path, "pythia-ablation"))
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("granted  pythia-ablation@") and "8 × H100" in lines[0]
    assert "16 GPU-hours charged to team interp (remaining this month: 1,484 of 1,500)" in lines[1]
    assert "cellsched verify pythia-ablation@" in lines[2]
    again = cli("submit", write_spec(tmp_path, "pythia-ablation"))
    assert again.exit_code == 0 and "(already granted)" in again.stdout


def test_submit_granted_in_a_later_period_names_that_period(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A grant whose window starts next month: what remains is January's, and the line said
    "remaining this month" (December's was 1,400 after the first grant)."""
    assert cli("submit", write_spec(tmp_path, "now", hours=100)).exit_code == 0
    spec = write_spec(tmp_path, "later", extra="not_before = 2027-01-10T00:00:00Z")
    for args in (("submit", spec, "--dry-run"), ("submit", spec)):
        r = cli(*args)
        assert r.exit_code == 0, r.output
        assert "16 GPU-hours" in r.stdout and "team interp (remaining in January 2027: 1,484 of 1,500)" in r.stdout, r.stdout


def test_submit_json_keys_and_utc_times(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("submit", write_spec(tmp_path, "a"), "--json")
    assert r.exit_code == 0, r.output
    data = as_json(r)
    assert set(data) == {"project", "digest", "decision", "existing", "grant", "remaining_gpu_hours",
                         "remaining_period", "allowance_gpu_hours", "expected_start", "expected_start_utc",
                         "expected_start_basis"}
    assert (data["expected_start"], data["expected_start_basis"]) == (T0, "starts now")  # its window is now
    assert data["decision"] == "granted" and len(data["digest"]) == 64
    g = data["grant"]
    assert {"id", "project", "team", "pool", "width", "start", "end", "promised_start", "promised_end",
            "state", "gpu_hours", "refunded_gpu_hours", "started_at", "ended_at", "breach_gpu_hours",
            "start_utc", "end_utc", "promised_start_utc", "promised_end_utc"} <= set(g)
    assert (g["start"], g["start_utc"], g["end_utc"]) == (T0, "2026-12-01T00:00:00Z", "2026-12-01T02:00:00Z")
    assert data["remaining_gpu_hours"] == 1484 and data["allowance_gpu_hours"] == 1500
    assert data["remaining_period"] == "this month"


def test_submit_refused_says_why_and_what_would_be_granted(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # 16 GPUs on two nodes of 8: one whole node and half the other taken for two days.
    assert cli("submit", write_spec(tmp_path, "big", "pretraining", gpus=8, hours=8 * 48), user="dave").exit_code == 0
    assert cli("submit", write_spec(tmp_path, "side", "pretraining", gpus=4, hours=4 * 48), user="dave").exit_code == 0
    deadline = 'deadline = "2026-12-02T00:00:00Z"'
    path = write_spec(tmp_path, "too-big", gpus=8, hours=64, extra=deadline)
    r = cli("submit", path)
    assert r.exit_code == 1, r.output
    assert "refused  too-big@" in r.stdout
    assert "no_capacity_in_window: 8 GPUs are free together only from 2026-12-03 00:00 UTC, " \
           "after your deadline 2026-12-02 00:00 UTC." in r.stdout
    assert "  would be granted now:\n    1. start 2026-12-03 00:00 UTC (move the deadline" in r.stdout
    assert "\n    2. 4 GPUs in your window" in r.stdout
    assert r.stdout.rstrip().endswith("--take N")
    data = as_json(cli("submit", path, "--json"))
    assert data["decision"] == "refused" and "grant" not in data
    ref = data["refusal"]
    assert set(ref) == {"reason", "message", "needed", "available", "earliest_start", "earliest_start_utc",
                        "alternatives"}
    assert ref["reason"] == "no_capacity_in_window" and ref["earliest_start_utc"] == "2026-12-03T00:00:00Z"
    alt = ref["alternatives"][0]
    assert set(alt) == {"kind", "pool", "gpus", "start", "end", "gpu_hours", "message", "changes", "start_utc",
                        "end_utc"}
    assert alt["changes"] == {"deadline": "2026-12-03T08:00:00Z"}
    assert alt["start_utc"] == iso(alt["start"])


def test_bad_spec_is_exit_2_without_a_traceback_or_a_ledger_write(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.toml"
    path.write_text(SPEC.format(name="bad", team="interp", gpus=0, hours=1, extra=""))
    r = cli("submit", str(path))
    assert r.exit_code == 2 and "budget.gpus" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "ledger.db").exists()


def test_who_may_submit_and_cancel(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(tmp_path, "a")
    r = cli("submit", path, user="carol")
    assert r.exit_code == 1 and "carol is not a member of team interp" in r.stderr
    assert cli("submit", path).exit_code == 0
    r = cli("cancel", "a", user="carol")
    assert r.exit_code == 1 and "only members of team interp or admins" in r.stderr
    r = cli("cancel", "a", "--json", user="root-admin")
    assert r.exit_code == 0
    data = as_json(r)
    assert set(data) == {"project", "state", "refunded_gpu_hours", "grant"}
    assert data["state"] == "cancelled" and data["refunded_gpu_hours"] == 16
    assert data["grant"]["end_utc"] == "2026-12-01T00:00:00Z"
    assert cli("cancel", "a").exit_code == 2  # nothing live left: a name that does not exist


def test_cancel_frees_capacity_at_once(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("submit", write_spec(tmp_path, "whole", "pretraining", gpus=16, hours=160), user="dave").exit_code == 0
    r = cli("cancel", "whole", user="dave", now="2026-12-01T01:00:00Z")
    assert r.exit_code == 0 and r.stdout.startswith("cancelled  whole@") and "refunded 144 GPU-hours" in r.stdout
    data = as_json(cli("submit", write_spec(tmp_path, "next", gpus=16, hours=16, team="pretraining"), "--json",
                       user="dave", now="2026-12-01T01:00:00Z"))
    assert data["grant"]["start_utc"] == "2026-12-01T01:00:00Z"


def test_budget(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cli("submit", write_spec(tmp_path, "a", hours=16))
    cli("submit", write_spec(tmp_path, "b", hours=8, gpus=4))
    cli("cancel", "b", now="2026-12-01T00:30:00Z")
    r = cli("budget", "interp", now="2026-12-01T01:00:00Z")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("team interp  ·  month ")
    assert "allowance 1,500  committed 8  held 10  used 0  refunded 6  remaining 1,482  (GPU-hours)" in r.stdout
    data = as_json(cli("budget", "interp", "--json", now="2026-12-01T01:00:00Z"))
    assert set(data) == {"team", "period", "period_start", "period_end", "period_start_utc", "period_end_utc",
                         "allowance_gpu_hours", "committed_gpu_hours", "held_gpu_hours", "used_gpu_hours",
                         "refunded_gpu_hours", "remaining_gpu_hours", "overdrawn_gpu_hours", "projects", "daemon",
                         "best_effort_allowance_gpu_hours", "best_effort_charged_gpu_hours",
                         "best_effort_reserved_gpu_hours", "best_effort_remaining_gpu_hours", "best_effort"}
    assert data["daemon"]["alive"] is False  # no daemon has served this ledger
    assert (data["period_start_utc"], data["period_end_utc"]) == ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")
    assert [p["state"] for p in data["projects"]] == ["granted", "cancelled"]
    assert set(data["projects"][0]) == {"project", "state", "granted_gpu_hours", "committed_gpu_hours",
                                        "held_gpu_hours", "used_gpu_hours", "refunded_gpu_hours"}
    one = as_json(cli("budget", "b", "--json"))
    assert [p["project"] for p in one["projects"]] == [data["projects"][1]["project"]]
    assert cli("budget", "nobody").exit_code == 2


def test_status(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    empty = cli("status")
    assert empty.exit_code == 0 and "no projects live or ended in the last 7 days" in empty.stdout
    assert "no projects yet" in cli("status", "--all").stdout
    cli("submit", write_spec(tmp_path, "a", hours=16))
    r = cli("status", now="2026-12-01T01:00:00Z")
    assert r.exit_code == 0 and "a@" in r.stdout and "50%" in r.stdout and "--all" not in r.stdout
    items = as_json(cli("status", "a", "--json", now="2026-12-01T01:00:00Z"))
    assert len(items) == 1
    it = items[0]
    assert {"project", "state", "pool", "width", "start", "end", "promised_start", "promised_end", "progress",
            "used_gpu_hours", "jobs", "start_utc", "end_utc", "promised_start_utc", "promised_end_utc",
            "started_at_utc", "ended_at_utc"} <= set(it)
    assert it["progress"] == 0.5 and it["start_utc"] == "2026-12-01T00:00:00Z" and it["started_at_utc"] is None
    # Cancelled, it is listed for 7 days after it ended; then only --all lists it, and the
    # table says how many it left out.
    cli("cancel", "a", now="2026-12-01T02:00:00Z")
    cli("submit", write_spec(tmp_path, "b", hours=8), now="2026-12-09T00:00:00Z")
    week = cli("status", now="2026-12-08T01:59:00Z")
    assert "a@" in week.stdout and "cancelled" in week.stdout
    later = cli("status", now="2026-12-09T00:00:00Z")
    assert "a@" not in later.stdout and "b@" in later.stdout
    assert "and 1 project that ended before 2026-12-02 00:00 UTC: `cellsched status --all`" in later.stdout
    every = cli("status", "--all", now="2026-12-09T00:00:00Z")
    assert "a@" in every.stdout and "b@" in every.stdout and "ended before" not in every.stdout
    listed = as_json(cli("status", "--json", now="2026-12-09T00:00:00Z"))
    assert [(i["older_not_listed"], i["listed_since_utc"]) for i in listed] == [(1, "2026-12-02T00:00:00Z")]


def test_verify(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = write_spec(tmp_path, "a")
    cli("submit", path)
    r = cli("verify", "a", "--spec", path)
    assert r.exit_code == 0 and r.stdout.startswith("valid  a@"), r.output
    data = as_json(cli("verify", "a", "--json"))
    assert {"project", "digest", "valid", "receipt", "start_utc", "end_utc", "issued_at_utc"} <= set(data)
    assert data["valid"] is True and data["start_utc"] == "2026-12-01T00:00:00Z"
    other = write_spec(tmp_path, "a", hours=17)
    r = cli("verify", "a", "--spec", other)
    assert r.exit_code == 1 and "is not the sealed spec" in r.stderr
    import sqlite3

    con = sqlite3.connect(tmp_path / "ledger.db")
    con.execute("UPDATE cs_grant SET width = 16")
    con.commit()
    con.close()
    r = cli("verify", "a")
    assert r.exit_code == 1 and "differ from the receipt" in r.stderr


def test_budget_does_not_import_ray_or_matplotlib(tmp_path: Path, cluster_file: Path) -> None:
    code = (
        "import sys\n"
        "from cellsched.cli.app import main\n"
        f"sys.argv = ['cellsched', '--cluster', {str(cluster_file)!r}, 'budget', 'interp', '--json']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('ray', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**os.environ, "CELLSCHED_USER": "alice", "CELLSCHED_NOW": NOW, "CELLSCHED_DB": f"sqlite:///{tmp_path}/b.db"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []"
