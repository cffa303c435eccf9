"""Group commit (``service.SubmitQueue``): submits made at the same time are admitted one
after another in one transaction, and each gets the answer it would get alone in that
order; a failure of the batch's writes reruns its submits one by one; nothing is answered
before the commit; a server killed mid-batch loses no submit it answered as granted. Also
the server's token lookups, kept a few seconds (``tokens.TokenCache``). On SQLite and on
PostgreSQL, with the real ledger (no mocks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import NOW, Served
from sqlmodel import select

from cellsched import ops
from cellsched.ledger import events
from cellsched.ledger.snapshot import nodes_of
from cellsched.ledger.tables import EventRow, GrantRow
from cellsched.service import Env, open_env

SPEC = """
name = "{name}"
team = "{team}"
owner = "{owner}"
problem = "Is the answer the same in a batch?"
{extra}
[budget]
gpu_hours = {hours}
gpus = {gpus}
[[jobs]]
name = "train"
run = ["python", "train.py"]
gpus = {gpus}
"""

MEMBER = {"interp": "alice", "evals": "carol", "pretraining": "dave"}


def spec(name: str, team: str, gpus: int, hours: float, *, owner: str = "alice", extra: str = "",
         code: dict[str, Any] | None = None) -> tuple[str, ops.SpecIn]:
    """(the caller, the spec) for a submit: the caller is a member of the team."""
    text = SPEC.format(name=name, team=team, gpus=gpus, hours=hours, owner=owner, extra=extra)
    return MEMBER[team], ops.SpecIn(file=f"{name}.toml", text=text, code=code)


def replacing(name: str, team: str, gpus: int, hours: float, of: ops.SpecIn) -> tuple[str, ops.SpecIn]:
    """A new version of the project ``of`` (same name) that replaces its grant."""
    from cellsched.spec.seal import digest

    d = digest(ops.sealed_spec(of))
    return spec(name, team, gpus, hours, extra=f'replaces = "{name}@{d[:12]}"')


def mixed(db_failure: bool) -> list[tuple[str, ops.SpecIn]]:
    """Submits of every kind: granted ones, refused ones (wider than the pool, or another
    version of a live name: one held before the batch, one the batch took), bad input
    (code never uploaded; a replace of nothing), the same spec twice (the second is the
    first's grant, ``existing``), a replace of a grant made earlier in the same batch and,
    with ``db_failure``, a project row the database itself refuses (a trigger: see
    :func:`refuse_in_db`), which fails the batch's writes."""
    _, first = spec("ablation", "interp", 8, 64)
    out = [
        spec("warmup", "pretraining", 4, 8),
        spec("ablation", "interp", 8, 64),
        spec("evals-a", "evals", 8, 80),
        spec("too-wide", "interp", 32, 64),
        spec("coded", "interp", 1, 1, extra="[code]", code={"digest": "ab" * 32, "source": "dir p"}),
        spec("ablation", "interp", 8, 64),  # the same spec again
        replacing("ablation", "interp", 4, 64, first),
        spec("pretrain", "pretraining", 16, 16 * 30),
        spec("ghost", "interp", 2, 2, extra='replaces = "ghost@abcdef123456"'),
        spec("evals-b", "evals", 4, 40),
        spec("wider-still", "evals", 64, 64),
        spec("late", "interp", 8, 8 * 20),
        spec("evals-a", "evals", 4, 40),  # another version of a name this batch took: name_in_use
        spec("warmup", "pretraining", 2, 8),  # ... of a name held before the batch: name_in_use
    ]
    if db_failure:
        out.insert(6, spec("db-refuses", "interp", 2, 4, owner=REFUSED_OWNER))
    return out


def answer(env: Env, caller: str, s: ops.SpecIn) -> tuple[Any, ...]:
    """A submit's answer, comparable across ledgers: the JSON without the grant's id (the
    ledger's row number; PostgreSQL's sequence skips the ids of a rolled-back batch), or
    the error's type and first line."""
    try:
        out = ops.submit(env, caller, s, NOW)
    except Exception as e:  # noqa: BLE001 - the error is the answer
        return ("error", type(e).__name__, str(e).splitlines()[0])
    if "grant" in out:
        out["grant"] = {k: v for k, v in out["grant"].items() if k != "id"}
    return ("ok", out)


def overcommitted(rows: list[GrantRow], gpus: int) -> bool:
    edges = sorted({t for r in rows for t in (r.start, r.end)})
    return any(sum(r.width for r in rows if r.start <= t < r.end) > gpus for t in edges)


def check_ledger(env: Env) -> Counter[str]:
    """The audit passes (chain and derived tables), no pool or team over-commits; the
    event kinds."""
    with env.ledger.read() as s:
        audit = events.audit(s)
        live = [r for r in s.exec(select(GrantRow)) if r.state in ("granted", "reserving", "active")]
        kinds = Counter(e.kind for e in s.exec(select(EventRow)))
    assert audit.ok, audit
    assert not overcommitted(live, 16)
    assert not overcommitted([r for r in live if r.team == "evals"], 8)
    return kinds


REFUSED_OWNER = "refused-by-the-database"


def refuse_in_db(env: Env) -> None:
    """A trigger that makes the database refuse a project row of ``REFUSED_OWNER``: a real
    write failure inside a batch (what a full disk, a lost connection or a constraint would
    be), on either database."""
    env.ledger.ensure_schema()
    with env.ledger.engine.begin() as c:
        if env.ledger.is_sqlite:
            c.exec_driver_sql(f"CREATE TRIGGER refuse BEFORE INSERT ON cs_project WHEN NEW.owner = "
                              f"'{REFUSED_OWNER}' BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END")
        else:
            c.exec_driver_sql(f"CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.owner = "
                              f"'{REFUSED_OWNER}' THEN RAISE EXCEPTION 'refused by a trigger'; END IF; "
                              "RETURN NEW; END $$ LANGUAGE plpgsql")
            c.exec_driver_sql("CREATE TRIGGER refuse BEFORE INSERT ON cs_project FOR EACH ROW EXECUTE FUNCTION refuse()")


@pytest.fixture
def second_url(ledger_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty ledger of the same kind as ``ledger_url``: where the reference runs."""
    if ledger_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'alone.db'}"
        return
    from sqlalchemy import create_engine

    base, _, _ = ledger_url.partition("?")
    schema = "cs_" + uuid.uuid4().hex[:12]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def wait_for(cond: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


@pytest.mark.parametrize("db_failure", [False, True], ids=["writes-ok", "a-row-the-db-refuses"])
def test_a_batch_answers_each_submit_as_it_would_be_answered_alone(
        env: Env, cluster_file: Path, ledger_url: str, second_url: str, db_failure: bool) -> None:
    submits = mixed(db_failure)
    # The reference: the same submits one after another on an empty ledger.
    alone = open_env(cluster_file, second_url)
    if db_failure:
        refuse_in_db(alone)
        refuse_in_db(env)
    try:
        expected = [answer(alone, caller, s) for caller, s in submits]
        reference_kinds = check_ledger(alone)
    finally:
        alone.ledger.dispose()
    kinds_of = Counter(a[0] if a[0] == "error" else a[1]["decision"] for a in expected)
    assert kinds_of["granted"] >= 5 and kinds_of["refused"] >= 2 and kinds_of["error"] >= 2, expected
    assert any(a[0] == "ok" and a[1]["existing"] for a in expected)
    assert any(a[0] == "ok" and a[1].get("replaced") for a in expected)
    assert [a[1]["refusal"]["reason"] for a in expected[-2:]] == ["name_in_use"] * 2, expected[-2:]
    if db_failure:
        assert expected[6][0] == "error" and "refused by a trigger" in expected[6][2]

    # The batch: the first submit's thread writes it alone while another writer holds the
    # ledger's lock; the others queue up in order behind it and go as one batch.
    other = open_env(cluster_file, ledger_url)
    got: dict[int, tuple[Any, ...]] = {}
    committed_first: list[int] = []

    def client(i: int) -> None:
        caller, s = submits[i]
        got[i] = a = answer(env, caller, s)
        if a[0] == "ok" and a[1]["decision"] == "granted" and not a[1]["existing"]:
            # Answered only after the commit: another connection sees the grant already.
            with other.ledger.read() as rs:
                if rs.exec(select(GrantRow).where(GrantRow.project_id == a[1]["project"])).first() is not None:
                    committed_first.append(i)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(submits))]
    try:
        with other.ledger.write():
            threads[0].start()
            wait_for(lambda: env.submits.busy and env.submits.waiting() == 0, "the first submit leads")
            for i, t in enumerate(threads[1:], 1):
                t.start()
                wait_for(lambda i=i: env.submits.waiting() == i, f"submit {i} queued")
        for t in threads:
            t.join(120)
        assert [got.get(i) for i in range(len(submits))] == expected
        granted_new = [i for i, a in enumerate(expected)
                       if a[0] == "ok" and a[1]["decision"] == "granted" and not a[1]["existing"]]
        assert sorted(committed_first) == granted_new
        if db_failure:
            # The batch's writes failed: rolled back, every submit run again alone.
            assert env.submits.batches == 1 + (len(submits) - 1)
        else:
            assert (env.submits.batches, env.submits.largest) == (2, len(submits) - 1)
        assert check_ledger(env) == reference_kinds  # a refusal records its event in a batch too
    finally:
        other.ledger.dispose()


def test_concurrent_submits_through_the_server_are_a_serial_history(served: Served) -> None:
    """16 clients at once through a real server, a mix of grants, refusals, duplicates and
    bad input: every client gets an answer, the ledger holds exactly the grants answered,
    and replaying the submits alone in the order the ledger recorded them gives the same
    answers."""
    clients = 16
    teams = list(MEMBER)
    barrier = threading.Barrier(clients)
    answers: dict[tuple[int, int], tuple[int, dict[str, Any]]] = {}
    bodies: dict[tuple[int, int], tuple[str, dict[str, Any]]] = {}

    def client(i: int) -> None:
        team = teams[i % 3]
        with served.http(MEMBER[team]) as c:
            barrier.wait(30)
            for k in range(4):
                j = i % 6 + k  # clients i and i + 6 (the same team) send the same specs
                gpus = (2, 4, 8, 32)[j % 4]  # 32: wider than the pool, refused
                caller, s = spec(f"c{i % 6}-{k}", team, gpus, gpus * (3 + j % 7))
                body = s.model_dump(exclude_none=True)
                if j % 5 == 0:
                    body["code"] = {"digest": "cd" * 32, "source": "dir p"}  # never uploaded: 400
                bodies[(i, k)] = (caller, body)
                r = c.post("/api/submit", json=body)
                answers[(i, k)] = (r.status_code, r.json())

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == clients * 4
    assert {status for status, _ in answers.values()} <= {200, 400}
    granted = {a["project"]: a["grant"] for status, a in answers.values() if status == 200
               and a["decision"] == "granted"}
    refused = [a for status, a in answers.values() if status == 200 and a["decision"] == "refused"]
    assert granted and refused
    env = served.env
    with env.ledger.read() as s:
        rows = {r.project_id: r for r in s.exec(select(GrantRow))}
        history = [(e.kind, e.subject, e.at) for e in s.exec(select(EventRow).order_by(EventRow.seq))
                   if e.kind in ("granted", "refused")]
    assert {p: (r.id, r.start, r.end, nodes_of(r)) for p, r in rows.items()} == {
        p: (g["id"], g["start"], g["end"], g["nodes"]) for p, g in granted.items()}
    assert len(history) == len([a for s_, a in answers.values() if s_ == 200 and not a.get("existing")])
    check_ledger(env)
    assert env.submits.largest > 1  # some submits did share a transaction

    # Replay alone, in the ledger's order, on an empty ledger of the same kind.
    by_subject: dict[str, list[tuple[int, int]]] = {}
    for key, (status, a) in sorted(answers.items()):
        if status == 200 and not a.get("existing"):
            by_subject.setdefault(a["project"], []).append(key)
    replay_env = open_env(env.cluster_path, _fresh_url(env, served))
    try:
        for kind, subject, at in history:  # at: the server's clock at that submit
            key = by_subject[subject].pop(0)
            caller, body = bodies[key]
            out = ops.submit(replay_env, caller, ops.SpecIn(**body), at)
            status, a = answers[key]
            assert (out["decision"], out.get("grant", {}).get("start"), out.get("grant", {}).get("nodes"),
                    (out.get("refusal") or {}).get("reason")) == (
                a["decision"], a.get("grant", {}).get("start"), a.get("grant", {}).get("nodes"),
                (a.get("refusal") or {}).get("reason")), (kind, subject)
    finally:
        replay_env.ledger.dispose()


_FRESH: list[Any] = []


def _fresh_url(env: Env, served: Served) -> str:
    """An empty ledger of the same kind as ``env``'s, dropped with the test's database."""
    if env.ledger.is_sqlite:
        return f"sqlite:///{served.home.parent / ('replay-' + uuid.uuid4().hex[:8] + '.db')}"
    # The same PostgreSQL schema holds a second ledger only as another schema: the
    # ledger_url fixture's schema is dropped with CASCADE, so make this one inside the test.
    from sqlalchemy import create_engine

    base = env.ledger.url.partition("?")[0]
    schema = "cs_" + uuid.uuid4().hex[:12]
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    _FRESH.append((admin, schema))
    return f"{base}?options=-csearch_path%3D{schema}"


@pytest.fixture(autouse=True)
def _drop_fresh() -> Iterator[None]:
    yield
    while _FRESH:
        admin, schema = _FRESH.pop()
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


# -- a server killed mid-batch ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_server_killed_mid_batch_loses_no_answered_grant(env: Env, cluster_file: Path) -> None:
    """``cellsched server`` (its own process) under 16 clients, killed with SIGKILL: every
    submit answered as granted is in the ledger as answered; the chain and the derived
    tables still audit; a client whose submit was cut off just gets no answer."""
    import httpx

    from cellsched.server.tokens import issue

    env.ledger.ensure_schema()
    tokens = {u: issue(env, u, "root-admin", NOW - 60)[1] for u in MEMBER.values()}
    if env.ledger.is_sqlite:  # the server's account alone may read the ledger
        db = Path(env.ledger.url.removeprefix("sqlite:///"))
        for f in db.parent.glob(db.name + "*"):
            f.chmod(0o600)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cellsched.cli.app import main; main()", "--cluster", str(cluster_file),
         "server", "--listen", f"http://127.0.0.1:{port}", "--log-level", "warning"],
        env={**os.environ, "CELLSCHED_DB": env.ledger.url, "CELLSCHED_NOW": str(NOW)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: _connects(port) or proc.poll() is not None, "the server listens", 60)
        assert proc.poll() is None, proc.communicate()[1]
        granted: dict[str, dict[str, Any]] = {}
        stop = threading.Event()
        teams = list(MEMBER)

        def client(i: int) -> None:
            team = teams[i % 3]
            k = 0
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                              headers={"authorization": f"Bearer {tokens[MEMBER[team]]}"}) as c:
                while not stop.is_set():
                    _, s = spec(f"k{i}-{k}", team, (1, 2, 4)[k % 3], 2)
                    k += 1
                    try:
                        r = c.post("/api/submit", json=s.model_dump(exclude_none=True))
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 200 and r.json()["decision"] == "granted":
                        granted[r.json()["project"]] = r.json()["grant"]

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        wait_for(lambda: len(granted) >= 40, "40 grants answered", 120)  # and batches in flight
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert len(granted) >= 40
    with env.ledger.read() as s:
        rows = {r.project_id: r for r in s.exec(select(GrantRow))}
    for project, g in granted.items():
        r = rows.get(project)
        assert r is not None, f"{project} was answered as granted but is not in the ledger"
        assert (r.id, r.start, r.end, r.width) == (g["id"], g["start"], g["end"], g["width"])
    check_ledger(env)


def _connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# -- token lookups kept a few seconds ---------------------------------------------------------


def test_a_token_revoked_elsewhere_stops_working_within_the_bound(served: Served, cluster_file: Path,
                                                                  ledger_url: str) -> None:
    from cellsched.server.auth import Identity
    from cellsched.server.tokens import TokenCache, revoke

    served.env.token_cache = TokenCache(ttl=1.0)  # the bound, short for the test (LOOKUP_TTL_S)
    token = served.token("alice")
    with served.http("alice") as c:
        assert c.get("/api/whoami").status_code == 200  # looked up, kept
        # Revoked by another process on the ledger (the local CLI): the server learns it
        # when the kept lookup runs out, within the bound.
        tid, _ = _token_id(served, token)
        elsewhere = open_env(cluster_file, ledger_url)
        try:
            revoke(elsewhere, Identity("root-admin", "local"), tid, NOW)
        finally:
            elsewhere.ledger.dispose()
        t0 = time.monotonic()
        while c.get("/api/whoami").status_code == 200:
            assert time.monotonic() - t0 < 1.0 + 2.0, "still accepted past the bound"
            time.sleep(0.05)
        assert c.get("/api/whoami").status_code == 401


def test_a_token_revoked_through_the_server_stops_working_at_once(served: Served) -> None:
    token = served.token("bob")
    with served.http("bob") as c:
        assert c.get("/api/whoami").status_code == 200  # looked up, kept
        tid, _ = _token_id(served, token)
        assert c.delete(f"/api/tokens/{tid}").json()["revoked_now"] is True
        assert c.get("/api/whoami").status_code == 401
        assert c.post("/api/submit", json=spec("x", "interp", 1, 1)[1].model_dump(exclude_none=True)).status_code == 401


def _token_id(served: Served, token: str) -> tuple[str, str]:
    from cellsched.server.tokens import lookup

    found = lookup(served.env, token, NOW)
    assert found is not None
    return found

