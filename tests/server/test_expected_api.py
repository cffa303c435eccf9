"""The expected start through the server's API (issue 15, point 2), over TestClient on
SQLite and PostgreSQL: ``/api/submit``, ``/api/plan`` and ``/api/status`` answer with
``expected_start`` (and ``expected_start_utc``) and ``expected_start_basis``, the same JSON
the local commands print; a batch of submits that wait is answered with the expected starts
one replay gives them."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from cellsched import ops, service
from cellsched.ledger.lifecycle import GrantWriter
from cellsched.server.app import create_app
from cellsched.server.state import ServerState
from cellsched.server.tokens import issue
from cellsched.service import Env
from cellsched.spec.models import ProjectSpec

T0 = 1796083200  # 2026-12-01 00:00 UTC
H = 3600
DAY = 86400


def text(name: str, team: str, owner: str, gpus: int, hours: int) -> dict[str, str]:
    return {"file": f"{name}.toml", "text": (
        f'name = "{name}"\nteam = "{team}"\nowner = "{owner}"\nproblem = "q"\n'
        f"[budget]\ngpu_hours = {gpus * hours}\ngpus = {gpus}\n"
        f'[[jobs]]\nname = "t"\nrun = ["true"]\ngpus = {gpus}\n')}


def history(env: Env) -> None:
    """Team interp: three 8-GPU grants of 4 h ended 10, 6 and 2 days ago, each after 2 h."""
    for i, days in enumerate((10, 6, 2)):
        at = T0 - days * DAY
        out = service.submit(env, ProjectSpec.model_validate({
            "name": f"old{i}", "team": "interp", "owner": "alice", "problem": "q",
            "budget": {"gpu_hours": 32, "gpus": 8}, "jobs": [{"name": "t", "run": "true", "gpus": 8}]}), "alice", at)
        assert out.grant is not None and out.grant.id is not None
        w = GrantWriter(env.ledger)
        assert w.begin(out.grant.id, "r", "logs", at, None) and w.activate(out.grant.id, at)
        assert w.finish_early(out.grant.id, at + 2 * H, "completed", lambda s, now: []) is not None


def test_the_api_answers_with_the_expected_start(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLSCHED_NOW", str(T0))
    env.ledger.ensure_schema()
    history(env)
    client = TestClient(create_app(ServerState(env)))
    tokens = {u: issue(env, u, "root-admin", T0 - 10)[1] for u in ("alice", "bob")}

    def call(method: str, path: str, user: str, **kw: Any) -> Any:
        r = client.request(method, path, headers={"authorization": f"Bearer {tokens[user]}"}, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    a = call("POST", "/api/submit", "alice", json=text("a", "interp", "alice", 16, 8))  # starts now
    assert (a["expected_start"], a["expected_start_basis"]) == (T0, "starts now")
    b_in = text("b", "interp", "bob", 8, 4)  # promised T0 + 8 h; a ends at T0 + 4 h (0.5 of 8 h)
    planned = call("POST", "/api/plan", "bob", json=b_in)
    basis = ("team interp's last 30 days: half the grants held at most 50% of their window (3 grants); "
             "later work arrives as in the last 24 h")
    assert planned["dry_run"] and planned["grant"]["start"] == T0 + 8 * H
    assert (planned["expected_start"], planned["expected_start_utc"], planned["expected_start_basis"]) == (
        T0 + 4 * H, "2026-12-01T04:00:00Z", basis)
    b = call("POST", "/api/submit", "bob", json=b_in)
    assert (b["expected_start"], b["expected_start_basis"]) == (T0 + 4 * H, basis)
    status = call("GET", "/api/status", "bob")
    local = ops.status(env, "bob", None, T0)
    keys = ("project", "expected_start", "expected_start_utc", "expected_start_basis")
    assert [{k: it[k] for k in keys} for it in status] == [{k: it[k] for k in keys} for it in local]
    assert {it["project"].split("@")[0]: it["expected_start"] for it in status} == {
        "old1": None, "old2": None, "a": T0, "b": T0 + 4 * H}  # old0 ended more than 7 days ago
    assert {(it["older_not_listed"], it["listed_since"]) for it in status} == {(1, T0 - 7 * DAY)}
    every = call("GET", "/api/status", "bob", params={"all": "true"})
    assert [it["project"].split("@")[0] for it in every] == ["old0", "old1", "old2", "a", "b"]
    assert [{k: it[k] for k in keys} for it in every] == [
        {k: it[k] for k in keys} for it in ops.status(env, "bob", None, T0, everything=True)]


def test_a_batch_of_waiting_submits_gets_one_replays_answers(env: Env) -> None:
    """Three submits queued behind the write lock are one batch: each answer carries the
    expected start that the replay of the committed batch gives it (the same figures as
    tests/service/test_expected_start.py: b at T0 + 4 h, c at T0 + 6 h)."""
    import threading

    history(env)
    assert service.submit(env, spec("a", "interp", "alice", 16, 8), "alice", T0).expected_start == T0
    jobs = [(spec("b", "interp", "bob", 8, 4), "bob"), (spec("c", "pretraining", "dave", 16, 2), "dave"),
            (spec("e", "evals", "carol", 1, 1), "carol")]
    got: dict[str, service.SubmitOutcome] = {}
    with env.ledger.write():  # hold the lock: the three queue up and go as one batch
        threads = [threading.Thread(target=lambda sp=sp, who=who: got.__setitem__(sp.name, service.submit(
            env, sp, who, T0))) for sp, who in jobs]
        for t in threads:
            t.start()
        while env.submits.waiting() + env.submits.busy < 3:  # the leader waits for the lock
            threading.Event().wait(0.01)
    for t in threads:
        t.join(30)
    assert env.submits.largest >= 2
    # Whatever the order the three were admitted in: at T0 + 4 h, when a ends, b (the longest
    # that fits) and e (1 GPU: the replay has no node rule) start; c, 16 GPUs, when b ends.
    assert [got[n].expected_start for n in "bce"] == [T0 + 4 * H, T0 + 6 * H, T0 + 4 * H]
    assert all(got[n].grant.start >= T0 + 8 * H for n in "bce")  # type: ignore[union-attr]


def spec(name: str, team: str, owner: str, gpus: int, hours: int) -> ProjectSpec:
    return ProjectSpec.model_validate({
        "name": name, "team": team, "owner": owner, "problem": "q", "budget": {"gpu_hours": gpus * hours, "gpus": gpus},
        "jobs": [{"name": "t", "run": "true", "gpus": gpus}]})


def test_batches_committed_during_a_replay_share_the_next_one(env: Env) -> None:
    """While a replay runs (here: the queue marked busy, as a replay marks it), batches that
    commit queue up; the replay that follows answers all of them, on the newest calendar."""
    import threading
    import time

    history(env)
    service.submit(env, spec("a", "interp", "alice", 16, 8), "alice", T0)
    q = env.expects
    with q._lock:
        q._running = True  # a replay is running
    got: dict[str, service.SubmitOutcome] = {}
    threads = []
    for n, (sp, who) in enumerate([(spec("b", "interp", "bob", 8, 4), "bob"),
                                   (spec("c", "pretraining", "dave", 16, 2), "dave")]):
        threads.append(threading.Thread(target=lambda sp=sp, who=who: got.__setitem__(
            sp.name, service.submit(env, sp, who, T0))))
        threads[-1].start()
        deadline = time.monotonic() + 30
        while len(q._queue) < n + 1:  # committed, and waiting for the replay
            assert time.monotonic() < deadline
            time.sleep(0.005)
    assert not got  # nobody is answered before the replay
    with q._lock:
        q._queue[0].wake.set()  # the running replay ends: the first queued runs the next
    for t in threads:
        t.join(30)
    assert (q.replays, q.largest) == (1, 2)
    assert (got["b"].expected_start, got["c"].expected_start) == (T0 + 4 * H, T0 + 6 * H)
