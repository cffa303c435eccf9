"""Best-effort work through a real ``cellsched server``: submit, plan, refusals, status,
budget, cancel and bad input print the same (people's lines and ``--json``) with the same
exit code as on a local ledger, and the ledgers agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from server_harness import Served, start_server
from sqlmodel import select
from typer.testing import CliRunner

from cellsched.cli.app import app
from cellsched.ledger.db import Ledger
from cellsched.ledger.tables import EventRow

NOW_ISO = "2026-12-01T00:00:00Z"

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
best_effort_gpu_hours = 300
"""

SWEEP = """
name = "{name}"
team = "{team}"
owner = "carol"
problem = "Which learning rate?"
kind = "best-effort"
[budget]
gpu_hours = {hours}
gpus = 2
{extra}
[[jobs]]
name = "trial"
run = "python sweep.py --resume"
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
def served(cluster: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """SQLite only: the service tests run best-effort work on PostgreSQL too."""
    from cellsched.service import open_env

    env = open_env(cluster, f"sqlite:///{tmp_path / 'served.db'}")
    with start_server(env) as s:
        yield s
    env.ledger.dispose()


def sweep(where: Path, name: str, team: str = "evals", hours: float = 100, count: int = 3, extra: str = "") -> str:
    path = where / f"{name}.toml"
    path.write_text(SWEEP.format(name=name, team=team, hours=hours, count=count, extra=extra))
    return str(path)


def same(out: str) -> Any:
    def strip(d: Any) -> Any:
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in ("db_now", "db_now_utc")}
        return [strip(v) for v in d] if isinstance(d, list) else d
    try:
        return strip(json.loads(out))
    except ValueError:
        return out


def test_best_effort_commands_print_the_same_through_the_server(served: Served, cluster: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLSCHED_NOW", NOW_ISO)
    a = sweep(tmp_path, "lr-sweep")
    b = sweep(tmp_path, "other", hours=250)
    none = sweep(tmp_path, "borrow", team="interp")
    bad = sweep(tmp_path, "late", extra='deadline = "2027-01-01T00:00:00Z"')
    local_db = f"sqlite:///{tmp_path / 'local.db'}"
    runner = CliRunner()

    def local(*args: str, user: str) -> Any:
        return runner.invoke(app, ["--cluster", str(cluster), "--db", local_db, *args],
                             env={"CELLSCHED_USER": user, "CELLSCHED_SERVER": "local"})

    steps: list[tuple[str, tuple[str, ...]]] = [
        ("carol", ("plan", a)),
        ("carol", ("submit", a)),
        ("carol", ("submit", "--json", b)),  # over what is left: refused
        ("alice", ("submit", none)),  # no best-effort allowance: refused
        ("carol", ("submit", bad)),  # bad input: one line, exit 2
        ("carol", ("status", "--json")),
        ("carol", ("status", "lr-sweep")),
        ("carol", ("budget", "--json", "lr-sweep")),
        ("carol", ("cancel", "--json", "lr-sweep")),
    ]
    for user, args in steps:
        mine, theirs = local(*args, user=user), served.cli(*args, user=user)
        assert theirs.exit_code == mine.exit_code, (args, mine.output, theirs.output)
        assert same(theirs.stdout) == same(mine.stdout), args
        assert theirs.stderr == mine.stderr, args
        assert "Traceback" not in theirs.output
    assert served.cli("submit", a, user="carol").exit_code == 0  # queued anew after the cancel

    def events(ledger: Ledger) -> list[tuple[str, str, str]]:
        with ledger.read() as s:
            return [(e.kind, e.subject, e.actor) for e in s.exec(select(EventRow).order_by(EventRow.seq))
                    if e.kind not in ("code_stored", "token_created")]

    mine_ledger = Ledger(local_db)
    there = events(served.env.ledger)
    assert there[:-1] == events(mine_ledger)
    assert [k for k, _, _ in there] == ["be_queued", "be_cancelled", "be_queued"]
    mine_ledger.dispose()
