"""What one team's member can do to the other teams through the server: nothing one request
costs may stall everyone's submits or swell the ledger without limit. Through a real server
(uvicorn) over a real ledger, SQLite and PostgreSQL.

- a best-effort spec makes at most ``spec.models.TASKS_MAX`` tasks in all (one row each,
  written under the ledger's write lock): a spec of 1,000 jobs of ``count = 10000`` was
  ten million rows from 50 KB of text;
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import Served, example_cluster, start_server
from sqlmodel import col, func, select

from cellsched.ledger.tables import BestEffortTaskRow, EventRow

SPEC = """name = "{name}"
team = "{team}"
owner = "someone"
problem = "What does it cost the others?"
{kind}
[budget]
gpu_hours = {hours}
gpus = {gpus}
{jobs}
"""


def spec(name: str, team: str, hours: float, gpus: int = 1, jobs: str = '[[jobs]]\nname = "a"\nrun = "x"\n',
         best_effort: bool = False) -> dict[str, str]:
    kind = 'kind = "best-effort"' if best_effort else ""
    return {"file": f"{name}.toml",
            "text": SPEC.format(name=name, team=team, kind=kind, hours=hours, gpus=gpus, jobs=jobs)}


def sweep_jobs(jobs: int, count: int) -> str:
    return "".join(f'[[jobs]]\nname = "trial{i}"\nrun = "python sweep.py"\ncount = {count}\n' for i in range(jobs))


@pytest.fixture
def served(tmp_path: Path, ledger_url: str) -> Iterator[Served]:
    """The example cluster, with a best-effort allowance for team evals."""
    from cellsched.receipt import create_keys, key_paths
    from cellsched.service import open_env

    path = tmp_path / "cluster.toml"
    path.write_text(example_cluster().replace('members = ["carol"]', 'members = ["carol"]\nbest_effort_gpu_hours = 300'))
    create_keys(*key_paths(path))
    env = open_env(path, ledger_url)
    with start_server(env) as s:
        yield s
    env.ledger.dispose()


def events(served: Served) -> int:
    with served.env.ledger.read() as s:
        return int(s.exec(select(func.count()).select_from(EventRow)).one())


def tasks(served: Served) -> int:
    with served.env.ledger.read() as s:
        return int(s.exec(select(func.count(col(BestEffortTaskRow.id)))).one())


def test_a_best_effort_spec_makes_at_most_10000_tasks(served: Served, tmp_path: Path) -> None:
    with served.http("carol") as c:
        before = events(served)
        big = spec("sweep", "evals", 1, best_effort=True, jobs=sweep_jobs(3, 10_000))
        r = c.post("/api/submit", json=big)
        assert r.status_code == 400, r.text
        assert r.json() == {"exit_code": 2, "error": "sweep.toml: jobs: 30,000 tasks (the jobs' count, summed); "
                                                     "a best-effort spec makes at most 10,000"}
        for route in ("/api/plan", "/api/validate"):
            body = {"specs": [big]} if route == "/api/validate" else big
            assert c.post(route, json=body).status_code == 400
        assert (events(served), tasks(served)) == (before, 0)
        # as many as the limit: queued, one task each
        out = c.post("/api/submit", json=spec("sweep", "evals", 1, best_effort=True, jobs=sweep_jobs(2, 5_000))).json()
        assert out["decision"] == "queued", out
        assert tasks(served) == 10_000
    # the CLI says it in one line, exit 2
    path = tmp_path / "sweep2.toml"
    path.write_text(spec("sweep2", "evals", 1, best_effort=True, jobs=sweep_jobs(2, 5_001))["text"])
    got = served.cli("submit", str(path), user="carol")
    assert got.exit_code == 2, got.output
    assert got.output.strip().splitlines() == [
        f"cellsched: {path}: jobs: 10,002 tasks (the jobs' count, summed); a best-effort spec makes at most 10,000"]
