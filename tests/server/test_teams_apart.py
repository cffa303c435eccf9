"""What one team's member can do to the other teams through the server: nothing one request
costs may stall everyone's submits or swell the ledger without limit. Through a real server
(uvicorn) over a real ledger, SQLite and PostgreSQL.

- a best-effort spec makes at most ``spec.models.TASKS_MAX`` tasks in all (one row each,
  written under the ledger's write lock): a spec of 1,000 jobs of ``count = 10000`` was
  ten million rows from 50 KB of text;
- a window is at most the horizon long unless ``policy.max_grant_hours`` says otherwise: a
  1-GPU window of 10,000,000 GPU-hours (a month of one GPU is within most allowances) ran
  to the year 3167, and every admission snapshot built after it took ~40 s and 1.6 GB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import Served, example_cluster, start_server
from sqlmodel import col, func, select

from cellsched.ledger.tables import BestEffortTaskRow, EventRow

HORIZON_S = 366 * 86400  # the default policy.horizon_days

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


def test_a_window_is_at_most_the_horizon_long_by_default(served: Served, tmp_path: Path) -> None:
    """A team may not hold GPUs for longer than admission looks ahead: one GPU for 8,785 h
    (within interp's 1,500 GPU-hours a month, month by month) is refused, and the answer
    says how many GPUs make the window short enough."""
    with served.http("alice") as c:
        out = c.post("/api/submit", json=spec("forever", "interp", 8_785)).json()
        assert out["decision"] == "refused", out
        r = out["refusal"]
        assert (r["reason"], r["needed"], r["available"]) == ("longer_than_max_grant", 8_785 * 3600, HORIZON_S)
        assert r["message"] == ("1 GPU for 8,785.0 GPU-hours is a window of 8,785.0 h; the longest grant is "
                                "8,784.0 h (ask for at least 2 GPUs).")
        assert [a["gpus"] for a in r["alternatives"]] == [2]
        assert c.post("/api/submit", json=spec("year", "interp", 8_784)).json()["decision"] == "granted"
    # the CLI's refusal, exit 1
    path = tmp_path / "forever2.toml"
    path.write_text(spec("forever2", "interp", 10_000_000)["text"])
    got = served.cli("submit", str(path), "--json", user="alice")
    assert got.exit_code == 1, got.output
    assert json.loads(got.output)["refusal"]["reason"] == "longer_than_max_grant"


def test_a_window_as_long_as_max_grant_hours_says(tmp_path: Path, ledger_url: str) -> None:
    """An admin who wants longer windows says so: max_grant_hours past the horizon is taken."""
    from cellsched.receipt import create_keys, key_paths
    from cellsched.service import open_env

    path = tmp_path / "cluster.toml"
    path.write_text(example_cluster().replace("grace_s = 5", "grace_s = 5\nmax_grant_hours = 20000"))
    create_keys(*key_paths(path))
    env = open_env(path, ledger_url)
    try:
        with start_server(env) as served, served.http("alice") as c:
            out: dict[str, Any] = c.post("/api/submit", json=spec("long", "interp", 10_000)).json()
            assert out["decision"] == "granted", out
            assert out["grant"]["end"] - out["grant"]["start"] == 10_000 * 3600
    finally:
        env.ledger.dispose()


def preload(env: Any, grants: int, now: int) -> None:
    """``grants`` windows of team interp over the 60 days from ``now``, each admitted by the
    core (a calendar admission could have made), written in bulk."""
    import random
    import uuid

    from sqlalchemy import insert

    from cellsched.core.admission import Grant, Request, Schedule
    from cellsched.ledger import events as ev
    from cellsched.ledger.snapshot import nodes_json
    from cellsched.ledger.tables import GrantRow, ProjectRow

    sched, rng = Schedule.empty(env.cluster), random.Random(1)
    projects, rows = [], []
    for n in range(grants):
        req = Request(f"g{n}", "interp", rng.choice((1, 2, 4, 8)), 3600 * rng.randrange(1, 3),
                      not_before=now + rng.randrange(60 * 86400))
        g = sched.admit(req, now, alternatives=False)
        assert isinstance(g, Grant)
        g = sched.commit(g)
        digest = uuid.uuid4().hex * 2
        pid = f"g{n}@{digest[:12]}"
        projects.append({"id": pid, "name": f"g{n}", "digest": digest, "team": "interp", "owner": "t",
                         "submitted_by": "alice", "spec_json": "{}", "created_at": now})
        rows.append({"project_id": pid, "project": f"g{n}", "digest": digest, "team": "interp", "pool": g.pool,
                     "width": g.width, "start": g.start, "end": g.end, "promised_start": g.start,
                     "promised_end": g.end, "charged_gs": g.gpu_seconds, "created_at": now,
                     "nodes": nodes_json(g.nodes), "state": "granted", "receipt": ""})
    with env.ledger.write() as s:
        s.execute(insert(ProjectRow), projects)
        s.execute(insert(GrantRow), rows)
        ev.append(s, now, "preloaded", "test", "test", {"grants": len(rows)})


def whoami_during(served: Served, request: Any, n: int = 60) -> float:
    """Seconds alice's ``whoami`` takes a second after ``n`` threads began ``request(i)``
    (all of them joined before it returns)."""
    import threading
    import time

    flood = [threading.Thread(target=request, args=(i,)) for i in range(n)]
    for t in flood:
        t.start()
    try:
        time.sleep(1.0)
        with served.http("alice") as c:
            t0 = time.monotonic()
            assert c.get("/api/whoami").json()["user"] == "alice"
            return time.monotonic() - t0
    finally:
        for t in flood:
            t.join(120)


def test_a_flood_of_dashboard_pages_leaves_the_api_answering(served: Served) -> None:
    """The dashboard needs no token, and a page of another period is drawn anew (about a
    second on this ledger). Sixty such requests at once took every thread of the server's
    pool: alice's ``whoami`` waited 9 s. Pages are now drawn one at a time, a few more wait
    their turn without a thread, and the rest are told at once that the dashboard is busy."""
    import httpx

    from cellsched.runtime.clock import now_s

    now = now_s()
    preload(served.env, 3000, now)
    got: list[int] = []
    lines: set[str] = set()

    def page(i: int) -> None:
        try:
            r = httpx.get(f"{served.url}/?since={now + 60 * i}&until={now + 60 * 86400}", timeout=120)
        except httpx.HTTPError:
            got.append(0)
            return
        got.append(r.status_code)
        if r.status_code == 503:
            lines.add(r.text.split('id="error">')[1].split("<")[0] + f' (retry after {r.headers["retry-after"]})')

    took = whoami_during(served, page)
    assert took < 8.0, f"whoami took {took:.1f} s behind the dashboard's pages"  # (under 1 s; a bound for slow machines)
    assert sorted(set(got)) == [200, 503], got
    assert lines == {"the dashboard is busy drawing other pages: reload in a few seconds (retry after 5)"}
    assert got.count(200) >= 1 + 8  # the page drawing and those that waited
    busy = httpx.get(f"{served.url}/?since={now}&until={now + 86400}", timeout=60)
    assert busy.status_code == 200  # the flood is over: pages are drawn again


def test_one_user_cannot_take_every_thread_of_the_server(served: Served) -> None:
    """Sixty of carol's ``calendar`` requests at once (each reads the whole calendar: half a
    second here) took every thread of the server's pool, and alice's ``whoami`` waited 4-7 s.
    Now a user has at most 16 requests in progress; the others are answered 429 at once."""

    from cellsched.runtime.clock import now_s

    preload(served.env, 3000, now_s())
    got: list[int] = []
    lines: set[str] = set()
    with served.http("carol") as carol:
        def ask(i: int) -> None:
            r = carol.get(f"/api/calendar?days=366&fit=8x{i + 1}h")
            got.append(r.status_code)
            if r.status_code == 429:
                lines.add(f'{r.json()["error"]} (exit {r.json()["exit_code"]}, retry after {r.headers["retry-after"]})')

        took = whoami_during(served, ask)
        assert took < 8.0, f"whoami took {took:.1f} s behind carol's requests"  # (0.4-1 s; a bound for slow machines)
    assert sorted(set(got)) == [200, 429] and got.count(200) >= 16, got
    assert lines == {"carol has 16 requests in progress already: wait for their answers (exit 1, retry after 1)"}
    # her requests are answered again once the others are
    with served.http("carol") as carol:
        assert carol.get("/api/whoami").status_code == 200
    # the CLI prints the line, exit 1
    served.state.per_user_at_once = 0
    out = served.cli("budget", "evals", user="carol")
    assert (out.exit_code, out.output.strip()) == (
        1, "cellsched: carol has 0 requests in progress already: wait for their answers"), out.output


def test_status_stays_quick_over_a_long_best_effort_history(served: Served) -> None:
    """Queuing and cancelling best-effort work costs a team nothing (only what ran is
    charged), so a member may leave any number of ended submissions behind. ``status``
    read every one of them to find each name's newest: 100,000 made everyone's ``status``
    take 1.4 s of the server's CPU. It asks the database for each name's newest now."""
    import time

    from sqlalchemy import insert

    from cellsched.ledger.tables import BestEffortRow, ProjectRow
    from cellsched.runtime.clock import now_s

    now = now_s()
    n, names = 100_000, 50
    rows = [{"project_id": f"s{i % names}@{i:012x}", "project": f"s{i % names}", "digest": f"{i:064x}",
             "team": "evals", "pool": "h100", "max_gpus": 1, "budget_gs": 1,
             "created_at": now - 86400 * (i % 20) - 3600, "state": "cancelled",
             "ended_at": now - 86400 * (i % 20) - 3600} for i in range(n)]
    with served.env.ledger.write() as s:
        for k in range(0, n, 5000):
            s.execute(insert(ProjectRow), [
                {"id": r["project_id"], "name": r["project"], "digest": r["digest"], "team": "evals", "owner": "c",
                 "submitted_by": "carol", "spec_json": "{}", "created_at": r["created_at"]} for r in rows[k:k + 5000]])
            s.execute(insert(BestEffortRow), rows[k:k + 5000])
    with served.http("alice") as c:
        c.get("/api/status")
        t0 = time.monotonic()
        items = c.get("/api/status").json()
        took = time.monotonic() - t0
        everything = c.get("/api/status?all=true").json()
    # each name's newest submission: the one of the highest id (i = n - names + k)
    assert sorted(it["project"] for it in everything) == sorted(f"s{k}@{n - names + k:012x}" for k in range(names))
    # of those, the ones that ended in the last 7 days (i % 20 days and an hour ago)
    recent = sorted(f"s{k}@{n - names + k:012x}" for k in range(names) if (n - names + k) % 20 < 7)
    assert sorted(it["project"] for it in items) == recent
    assert {it["older_not_listed"] for it in items} == {names - len(recent)}
    assert took < 0.7, f"status took {took:.2f} s over {n:,} ended best-effort submissions"


def test_a_best_effort_submit_stays_quick_over_its_teams_history(served: Served) -> None:
    """A best-effort submit reads its team's use of the period under the ledger's write
    lock. It loaded every submission of the period to add them up: after 100,000 queued and
    cancelled ones (free: nothing ran), each of the team's submits held the lock that every
    team's submits need for 1.5 s. The sums are the database's now."""
    import time

    from sqlalchemy import insert

    from cellsched.core.allowance import period_bounds
    from cellsched.ledger.tables import BestEffortRow, ProjectRow
    from cellsched.runtime.clock import now_s

    now = now_s()
    p0 = period_bounds(now, "month")[0]
    n = 100_000
    # cancelled ones charged 5 s each (the last 1,000: 0), and two live ones: one charged
    # part of its budget, one charged more than its budget (reserving nothing more)
    rows = [{"project_id": f"s{i}@{i:012x}", "project": f"s{i}", "digest": f"{i:064x}", "team": "evals",
             "pool": "h100", "max_gpus": 1, "budget_gs": 3600, "charged_gs": 5 if i < n - 1000 else 0,
             "created_at": p0 + i % 3600, "state": "cancelled", "ended_at": p0 + i % 3600} for i in range(n)]
    rows += [{"project_id": f"live{k}@{k:012x}", "project": f"live{k}", "digest": f"{n + k:064x}", "team": "evals",
              "pool": "h100", "max_gpus": 1, "budget_gs": 7200, "charged_gs": c, "created_at": p0,
              "state": "queued", "ended_at": None} for k, c in ((0, 1800), (1, 9000))]
    with served.env.ledger.write() as s:
        for k in range(0, len(rows), 5000):
            s.execute(insert(ProjectRow), [
                {"id": r["project_id"], "name": r["project"], "digest": r["digest"], "team": "evals", "owner": "c",
                 "submitted_by": "carol", "spec_json": "{}", "created_at": r["created_at"]} for r in rows[k:k + 5000]])
            s.execute(insert(BestEffortRow), rows[k:k + 5000])
    charged = (n - 1000) * 5 + 1800 + 9000
    reserved = 7200 - 1800
    with served.http("carol") as c:
        took = []
        for i in range(2):
            t0 = time.monotonic()
            out = c.post("/api/submit", json=spec(f"new{i}", "evals", 1, best_effort=True)).json()
            took.append(time.monotonic() - t0)
            assert out["decision"] == "queued", out
            left = 300 * 3600 - charged - reserved - 3600 * (i + 1)
            assert round(out["best_effort_remaining_gpu_hours"] * 3600) == left
        budget = c.get("/api/budget?name=evals").json()
    assert round(budget["best_effort_charged_gpu_hours"] * 3600) == charged
    assert round(budget["best_effort_reserved_gpu_hours"] * 3600) == reserved + 2 * 3600
    assert min(took) < 0.5, f"a best-effort submit took {min(took):.2f} s over {n:,} submissions of the period"


def _trickle(served: Served, user: str, digest: str) -> Any:
    """A code upload that sends its head and one byte of a 1 MB body, then nothing."""
    import socket

    host, port = served.url.split("//")[1].split(":")
    c = socket.create_connection((host, int(port)))
    c.settimeout(30)
    c.sendall((f"PUT /api/code/{digest} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.token(user)}\r\n"
               "Content-Length: 1000000\r\n\r\n").encode() + b"x")
    return c


def _answer(c: Any) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        more = c.recv(65536)
        if not more:
            break
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_slow_upload_cannot_keep_other_teams_from_uploading(served: Served) -> None:
    """Two code uploads' bodies are read at a time. Carol sent two uploads' heads and one
    byte each: alice's upload waited as long as carol liked (no answer in 10 s). Now a user
    reads one upload at a time (a second is 429 at once), and a body that stops arriving is
    answered 408 after ``upload_idle_s`` (30 s), its turn given up."""
    import time

    first = _trickle(served, "carol", "ab" * 32)
    t0 = time.monotonic()
    while "carol" not in served.state.uploading and time.monotonic() - t0 < 10:
        time.sleep(0.01)  # (the server has her first upload: it is reading its body)
    second = _trickle(served, "carol", "ac" * 32)
    try:
        assert _answer(second) == (429, {"exit_code": 1, "error": "carol is uploading code already: "
                                                                 "one upload at a time"})
        with served.http("alice", timeout=10) as alice:
            t0 = time.monotonic()
            r = alice.put(f"/api/code/{'cd' * 32}", content=b"not an archive")
            assert r.status_code == 400 and r.json()["error"].startswith("code: not a code archive"), r.text
            assert time.monotonic() - t0 < 5
    finally:
        first.close()
        second.close()
    served.state.upload_idle_s = 1.0
    stalled = _trickle(served, "carol", "ab" * 32)
    try:
        t0 = time.monotonic()
        assert _answer(stalled) == (408, {"exit_code": 2, "error": "code upload: no data for 1 s: its turn is given "
                                                                   "up (send the archive again)"})
        assert time.monotonic() - t0 < 10
    finally:
        stalled.close()
    # and carol may upload again
    with served.http("carol") as carol:
        assert carol.put(f"/api/code/{'cd' * 32}", content=b"not an archive").status_code == 400


def test_a_loop_of_submits_is_held_to_the_servers_rate(served: Served) -> None:
    """Every submit, refused ones too, is an event of the ledger (about 580 bytes, 2-3 ms
    each): a member's loop of them grew it without bound. A user now has a burst of
    submits, then so many a second (here 3, then one every 100 s); past that a one-line 429,
    exit 1, nothing written, and other users' submits go on."""
    from cellsched.server.state import SubmitRate

    served.state.submits = SubmitRate(3, 0.01)
    with served.http("carol") as carol:
        for i in range(3):  # 9,999 GPU-hours: over evals' allowance, refused, and written
            assert carol.post("/api/submit", json=spec(f"big{i}", "evals", 9999)).json()["decision"] == "refused"
        before = events(served)
        r = carol.post("/api/submit", json=spec("big3", "evals", 9999))
        wait = int(r.headers["retry-after"])
        assert r.status_code == 429 and 90 <= wait <= 100  # (100 s less what a token grew since the burst)
        assert r.json() == {"error": "carol is submitting faster than the server takes (3 at once, then 0.01 a "
                                     f"second): wait {wait} s", "exit_code": 1}
        assert events(served) == before
        assert carol.post("/api/plan", json=spec("big3", "evals", 9999)).status_code == 200  # plans write nothing
    with served.http("alice") as alice:
        assert alice.post("/api/submit", json=spec("small", "interp", 1)).json()["decision"] == "granted"


@pytest.mark.parametrize("rate", ["5", "0/1", "10/0", "10/-1", "x/1", "10/nan", "10/inf", "1.5/1"])
def test_a_bad_submit_rate_is_one_line_before_the_server_starts(rate: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cellsched.cli.app import app

    r = CliRunner().invoke(app, ["--cluster", str(tmp_path / "none.toml"), "server", "--listen", "http://127.0.0.1:0",
                                 "--submit-rate", rate])
    assert r.exit_code == 2 and r.output.startswith(f"cellsched: --submit-rate {rate}: give BURST/PER_S") and \
        len(r.output.splitlines()) == 1, r.output
