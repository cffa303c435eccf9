"""One CLI (issue 14): one module formats times, durations, GPU-hours and counts for the CLI,
the report and the completion report; flags show no ``<bool>``; ``logs --json``; ``simulate``
and the global ``--cluster``, missing teams, refusal reasons; the report's period flags;
``audit``'s help and JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from cellsched import fmt
from cellsched.cli.app import app

SRC = Path(__file__).resolve().parents[2] / "src" / "cellsched"
NOW = "2026-12-10T12:00:00Z"


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env={"CELLSCHED_SERVER": "local", "COLUMNS": "200", **(env or {})})


# -- the formatting module ----------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0 s"), (45, "45 s"), (59, "59 s"), (60, "1 min"), (89, "1 min"), (12 * 60, "12 min"), (3569, "59 min"),
    (3599, "1 h"), (3600, "1 h"), (3.5 * 3600, "3.5 h"), (12 * 3600, "12 h"), (23.9 * 3600, "23.9 h"),
    (86399, "1 d"), (86400, "1 d"), (2 * 86400 + 4 * 3600, "2 d 4 h"), (400 * 86400, "400 d"), (-90, "-2 min"),
    (None, "-"),
])
def test_durations(seconds: float | None, text: str) -> None:
    assert fmt.duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**9))
def test_a_duration_is_a_number_and_one_unit_or_days_and_hours(seconds: int) -> None:
    assert re.fullmatch(r"\d+ s|\d+ min|[\d.]+ h|[\d,]+ d( \d+ h)?", fmt.duration(seconds))


@given(st.floats(min_value=-1e7, max_value=1e7, allow_nan=False))
def test_gpu_hours_never_read_zero_unless_zero(x: float) -> None:
    text = fmt.gpu_hours(x)
    assert (float(text.replace(",", "")) == 0) == (x == 0), (x, text)
    if abs(x) >= 0.095:
        assert abs(float(text.replace(",", "")) - x) <= 0.05 + 1e-9


def test_the_report_rule_is_the_one_rule() -> None:
    from cellsched.report import terminal

    for x in (None, 0, 1 / 3600, 0.05, 0.0949, 12, 1234.56):
        assert terminal.gpu_hours(x) == fmt.gpu_hours(x)
        assert terminal.gpu_hours(x, fixed=True) == fmt.gpu_hours(x, fixed=True)


def test_counts_and_times() -> None:
    assert [fmt.plural(n, "GPU") for n in (0, 1, 2, 1100)] == ["0 GPUs", "1 GPU", "2 GPUs", "1,100 GPUs"]
    assert fmt.plural(1, "file") == "1 file" and fmt.plural(3, "file") == "3 files"
    t = 1796083200  # 2026-12-01T00:00:00Z
    assert fmt.when(t) == "2026-12-01 00:00 UTC" and fmt.when(t + 5, True) == "2026-12-01 00:00:05 UTC"
    assert fmt.span(t, t + 43200) == "2026-12-01 00:00 → 2026-12-01 12:00 UTC"
    assert fmt.header("start") == "start (UTC)" and fmt.stamp(t) == "2026-12-01 00:00"
    assert fmt.iso(t) == "2026-12-01T00:00:00Z" and fmt.iso(None) is None and fmt.when(None) == "-"
    year_one = -62135596800 + 86400  # 0001-01-02: a spec's deadline may say it; 4 digits, as ISO 8601 has them
    assert (fmt.when(year_one), fmt.iso(year_one)) == ("0001-01-02 00:00 UTC", "0001-01-02T00:00:00Z")


def test_the_report_and_the_completion_report_do_not_import_the_cli_and_fmt_is_light() -> None:
    code = (
        "import sys\n"
        "import cellsched.fmt\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('rich', 'sqlmodel', 'sqlalchemy', 'ray', 'typer')]\n"
        "assert not heavy, heavy\n"
        "import cellsched.report.terminal, cellsched.report.render_html, cellsched.runtime.report\n"
        "cli = [m for m in sys.modules if m.startswith('cellsched.cli')]\n"
        "assert not cli, cli\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_people_times_are_formatted_in_one_module() -> None:
    """No renderer of the CLI, the report or the completion report formats a time itself.
    (report/compute.utc is the JSON's ISO string; charts hand datetimes to matplotlib.)"""
    allowed = {SRC / "fmt.py", SRC / "report" / "compute.py", SRC / "report" / "charts.py"}
    files = [*(SRC / "cli").glob("*.py"), *(SRC / "report").glob("*.py"), SRC / "runtime" / "report.py",
             SRC / "runtime" / "demo.py"]
    offenders = [f.name for f in files if f not in allowed and re.search(r"strftime|fromtimestamp", f.read_text())]
    assert offenders == []
    # and people never read GPU-seconds
    said = [f.name for f in (SRC / "cli").glob("*.py") if re.search(r"GPU-seconds?\b", f.read_text())]
    assert said == []


# -- help ----------------------------------------------------------------------------------


def _commands() -> list[list[str]]:
    from typer.main import get_command

    group = get_command(app)
    out: list[list[str]] = [[]]
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        out.append([name])
        out += [[name, sub] for sub in getattr(cmd, "commands", {})]
    return out


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "cellsched")
def test_flags_show_no_type_in_help(command: list[str]) -> None:
    r = run(*command, "--help")
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.stdout and "--help" in r.stdout


def test_audit_help_says_it_checks_the_derived_tables() -> None:
    text = " ".join(run("audit", "--help").stdout.split())
    assert "chain" in text and "derived from it" in text


# -- audit --json --------------------------------------------------------------------------


def test_audit_json_names_the_table_and_row(tmp_path: Path, cluster_file: Path) -> None:
    spec = tmp_path / "p.toml"
    spec.write_text('name = "p"\nteam = "interp"\nowner = "alice"\nproblem = "x"\n[budget]\ngpu_hours = 8\n'
                    'gpus = 8\n[[jobs]]\nname = "t"\nrun = "true"\ngpus = 8\n')
    env = {"CELLSCHED_USER": "alice", "CELLSCHED_NOW": NOW}
    base = ["--cluster", str(cluster_file)]
    assert run(*base, "submit", str(spec), env=env).exit_code == 0
    ok = run(*base, "audit", "--json", env=env)
    data = json.loads(ok.stdout)
    assert data["ok"] and data["table"] is None and data["row"] is None and data["rows"] >= 2
    assert re.fullmatch(r"ok  \d+ events?, chain head sha256:[0-9a-f]{64}; \d+ derived rows agree with them\n",
                        run(*base, "audit", env=env).stdout)
    import sqlite3

    db = sqlite3.connect(cluster_file.parent / "cellsched.db")
    db.execute("UPDATE cs_grant SET width = 4")
    db.commit()
    db.close()
    bad = run(*base, "audit", "--json", env=env)
    data = json.loads(bad.stdout)
    assert bad.exit_code == 1 and not data["ok"] and data["table"] == "cs_grant" and data["row"].startswith("1 ")


# -- report's period -----------------------------------------------------------------------


@pytest.mark.parametrize(("args", "since", "until"), [
    ((), "2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"),  # the allowance period containing now
    (("--period", "2026-11"), "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z"),
    (("--period", "2026-Q4"), "2026-10-01T00:00:00Z", "2027-01-01T00:00:00Z"),
    (("--period", "2027"), "2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"),
    (("--since", "7d"), "2026-12-03T12:00:00Z", "2026-12-10T12:00:00Z"),
    (("--since", "12h", "--until", "2026-12-05"), "2026-12-04T12:00:00Z", "2026-12-05T00:00:00Z"),
    (("--since", "2026-12-02"), "2026-12-02T00:00:00Z", "2026-12-10T12:00:00Z"),
    (("--until", "2026-11-20"), "2026-11-01T00:00:00Z", "2026-11-20T00:00:00Z"),
])
def test_report_periods(cluster_file: Path, args: tuple[str, ...], since: str, until: str) -> None:
    r = run("--cluster", str(cluster_file), "report", "--json", *args, env={"CELLSCHED_NOW": NOW})
    assert r.exit_code == 0, r.output
    p = json.loads(r.stdout)["period"]
    assert (fmt.iso(p["since"]), fmt.iso(p["until"])) == (since, until)


@pytest.mark.parametrize(("args", "message"), [
    (("--period", "2026-13"), "--period 2026-13: no month 13"),
    (("--period", "Q4"), "--period 'Q4': use a month (2026-11), a quarter (2026-Q4) or a year (2026)"),
    (("--period", "2026-11", "--since", "7d"), "--period names the whole period"),
    (("--since", "0d"), "--since 0d: a span must be longer than zero"),
    (("--since", "999999999999999w"), "--since 999999999999999w: a span of at most 100 years (5218w)"),
    (("--png", ""), "--png: empty: give a directory (--png . for this one)"),
    (("--since", "7 days"), "--since: '7 days' is not a time"),
])
def test_report_period_bad_input_is_one_line(cluster_file: Path, args: tuple[str, ...], message: str) -> None:
    r = run("--cluster", str(cluster_file), "report", *args, env={"CELLSCHED_NOW": NOW})
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith(f"cellsched: {message}") and r.stderr.count("\n") == 1, r.stderr


# -- simulate ------------------------------------------------------------------------------

SIM_CLUSTER = """
[[pools]]
name = "main"
gpu_type = "a100"
gpus = 16
gpus_per_node = 8

[[teams]]
name = "t0"
members = ["alice"]
allowance_gpu_hours = 1000
"""


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    p = tmp_path / "jobs.csv"
    rows = ["job_id,submit_s,duration_s,gpus,team"]
    rows += [f"j{i},{i * 30},{600 + 37 * (i % 11)},{[1, 1, 2, 4, 8][i % 5]},t{i % 3}" for i in range(30)]
    p.write_text("\n".join(rows) + "\n")
    return p


def test_simulate_takes_the_global_cluster_and_says_which_trace_teams_it_lacks(tmp_path: Path, trace: Path) -> None:
    cluster = tmp_path / "sim.toml"
    cluster.write_text(SIM_CLUSTER)
    r = run("--cluster", str(cluster), "simulate", "--trace", str(trace), "-p", "cellsched", "-p", "easy")
    assert r.exit_code == 0, r.output
    warning = [line for line in r.stderr.splitlines() if line.startswith("cellsched: warning:")]
    assert warning == [f"cellsched: warning: 2 trace teams not in {cluster} (t1, t2): cellsched and quota refuse all "
                       "20 jobs of them (unknown_team); add the teams to the file, or remove every team from it to "
                       "give each trace team its demand as allowance"]
    assert f"note: 2 trace teams not in {cluster}" in r.stdout
    assert re.search(r"refusals by reason \(jobs\)\npolicy +┃ unknown_team\n", r.stdout)
    assert re.search(r"^cellsched +│ +20$", r.stdout, re.M) and re.search(r"^easy +│ +0$", r.stdout, re.M)
    data = json.loads(run("simulate", "--cluster", str(cluster), "--trace", str(trace), "-p", "cellsched",
                          "--json").stdout)
    assert data["missing_teams"] == ["t1", "t2"] and len(data["notes"]) == 1
    assert data["policies"]["cellsched"]["refused_by_reason"] == {"unknown_team": 20}


def test_simulate_without_teams_in_the_file_is_quiet(tmp_path: Path, trace: Path) -> None:
    cluster = tmp_path / "sim.toml"
    cluster.write_text(SIM_CLUSTER.split("[[teams]]")[0])
    r = run("--cluster", str(cluster), "simulate", "--trace", str(trace), "-p", "cellsched")
    assert r.exit_code == 0 and "warning" not in r.stderr and "note:" not in r.stdout
    assert "refusals by reason" not in r.stdout


# -- logs --json ---------------------------------------------------------------------------


def test_logs_json_has_the_attempts_and_each_log_with_its_text(env: Any, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
    from runtime_builders import Harness, job, project, submit

    from cellsched.executor import Behaviour

    g = submit(env, project("chatty", [job("train", gpus=2, retries=1)]))

    def script(gang: Any) -> Behaviour:
        for r in range(gang.width):  # the twin runs nothing: write what a rank would print
            p = Path(gang.log_path(r))
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"attempt {gang.attempt} rank {r} ✓\n")
        return Behaviour(3, exit_code=1 if gang.attempt == 1 else 0)

    Harness(env, tmp_path, script).run_until_done(g.id)
    base = ["--cluster", str(env.cluster_path), "--db", env.ledger.url]
    r = run(*base, "logs", "chatty", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["project"] == g.project_id and data["grant_state"] == "completed" and data["grant_live"] is False
    assert [(a["job"], a["attempt"], a["state"]) for a in data["attempts"]] == [("train", 1, "failed"),
                                                                                 ("train", 2, "succeeded")]
    assert [(f["job"], f["attempt"], f["rank"], f["text"]) for f in data["logs"]] == [
        ("train", 2, 0, "attempt 2 rank 0 ✓\n"), ("train", 2, 1, "attempt 2 rank 1 ✓\n")]
    assert all(f["exists"] and f["bytes"] == len(f["text"].encode()) and Path(f["path"]).is_file()
               for f in data["logs"])
    one = json.loads(run(*base, "logs", "chatty", "train", "--attempt", "1", "--rank", "1", "--json").stdout)
    assert [(f["attempt"], f["rank"], f["text"]) for f in one["logs"]] == [(1, 1, "attempt 1 rank 1 ✓\n")]
    # what `logs` prints is the JSON's text
    assert run(*base, "logs", "chatty", "train", "--rank", "1").stdout == "attempt 2 rank 1 ✓\n"
    both = run(*base, "logs", "chatty", "train", "--follow", "--json")
    assert both.exit_code == 2 and "--follow and --json" in both.stderr
