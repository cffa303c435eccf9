"""The ledger on SQLite and PostgreSQL: schema on first use, the event chain, and an audit
that names the first event that was edited or removed — here and through ``cellsched audit``."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlmodel import col, select
from typer.testing import CliRunner

from cellsched.cli.app import app
from cellsched.errors import BadInput
from cellsched.ledger import events
from cellsched.ledger.db import Ledger, default_url, make_engine, schema_version
from cellsched.ledger.tables import SCHEMA_VERSION, EventRow, SchemaInfo

CORE_TABLES = {"cs_schema", "cs_project", "cs_grant", "cs_job_run", "cs_event"}


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = Ledger(ledger_url)
    yield led
    led.dispose()


def fill(led: Ledger, n: int, start: int = 0) -> None:
    """``n`` events, one transaction each, as commands write them."""
    for i in range(start, start + n):
        with led.write() as s:
            events.append(s, 1_796_083_200 + i, "submitted", f"p{i}@0123456789ab", "alice",
                          {"i": i, "gpus": 8, "note": "ünïcode ✓"})


def sql(led: Ledger, statement: str) -> None:
    """Tamper behind the ledger's back, the way someone with database access could."""
    with led.engine.begin() as c:
        c.exec_driver_sql(statement)


def rows(led: Ledger) -> list[EventRow]:
    with led.read() as s:
        return list(s.exec(select(EventRow).order_by(col(EventRow.seq))))


def audit(led: Ledger) -> events.AuditResult:
    with led.read() as s:
        return events.audit(s)


# -- schema ----------------------------------------------------------------------------

def test_schema_is_created_on_first_use(ledger: Ledger) -> None:
    assert not CORE_TABLES & set(inspect(ledger.engine).get_table_names())
    with ledger.read() as s:
        assert schema_version(s) == SCHEMA_VERSION
        assert s.exec(select(EventRow)).first() is None
    assert CORE_TABLES <= set(inspect(ledger.engine).get_table_names())
    assert audit(ledger) == events.AuditResult(True, 0, None, None, events.GENESIS)


def test_reopening_keeps_everything(ledger_url: str) -> None:
    first = Ledger(ledger_url)
    fill(first, 3)
    head = audit(first).head
    first.dispose()
    again = Ledger(ledger_url)
    again.ensure_schema()
    assert [r.seq for r in rows(again)] == [1, 2, 3] and audit(again).head == head
    with again.read() as s:
        assert schema_version(s) == SCHEMA_VERSION
        assert s.get(SchemaInfo, 1).head_seq == 3  # type: ignore[union-attr]
    again.dispose()


def test_a_newer_schema_is_refused(ledger_url: str) -> None:
    led = Ledger(ledger_url)
    led.ensure_schema()
    sql(led, f"UPDATE cs_schema SET version = {SCHEMA_VERSION + 1}")
    led.dispose()
    with pytest.raises(BadInput, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        Ledger(ledger_url).ensure_schema()


# -- the chain -------------------------------------------------------------------------

def test_events_form_a_hash_chain(ledger: Ledger) -> None:
    fill(ledger, 4)
    chain = rows(ledger)
    assert [r.seq for r in chain] == [1, 2, 3, 4]
    assert chain[0].prev_hash == events.GENESIS
    for before, after in zip(chain, chain[1:]):
        assert after.prev_hash == before.hash
    for r in chain:
        body = json.dumps([r.prev_hash, r.seq, r.at, r.kind, r.subject, r.actor, r.data],
                          separators=(",", ":"), ensure_ascii=False)
        assert r.hash == hashlib.sha256(body.encode("utf-8")).hexdigest()
    assert chain[2].data == '{"gpus":8,"i":2,"note":"ünïcode ✓"}'  # canonical JSON
    assert audit(ledger) == events.AuditResult(True, 4, None, None, chain[-1].hash)


def test_a_failed_write_leaves_no_event(ledger: Ledger) -> None:
    fill(ledger, 1)
    with pytest.raises(RuntimeError):
        with ledger.write() as s:
            events.append(s, 1, "submitted", "x", "alice", {})
            raise RuntimeError("admission blew up")
    assert [r.seq for r in rows(ledger)] == [1] and audit(ledger).ok


def test_concurrent_writers_keep_one_chain(ledger_url: str) -> None:
    ledgers = [Ledger(ledger_url) for _ in range(3)]
    ledgers[0].ensure_schema()
    errors: list[BaseException] = []

    def work(led: Ledger, k: int) -> None:
        try:
            for i in range(8):
                with led.write() as s:
                    events.append(s, i, "submitted", f"w{k}-{i}", "alice", {})
        except BaseException as e:  # noqa: BLE001 — reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(led, k)) for k, led in enumerate(ledgers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    result = audit(ledgers[0])
    assert result.ok and result.events == 24
    for led in ledgers:
        led.dispose()


# -- tampering -------------------------------------------------------------------------

# (what someone did, SQL, first bad event, words in the problem). Five events to start with.
TAMPER = [
    ("edit data", "UPDATE cs_event SET data = '{\"gpus\":1}' WHERE seq = 3", 3, "event 3 (submitted p2@0123456789ab) was altered"),
    ("edit kind", "UPDATE cs_event SET kind = 'cancelled' WHERE seq = 2", 2, "event 2 (cancelled p1@0123456789ab) was altered"),
    ("edit time", "UPDATE cs_event SET at = at + 1 WHERE seq = 4", 4, "was altered"),
    ("edit actor", "UPDATE cs_event SET actor = 'mallory' WHERE seq = 1", 1, "was altered"),
    ("edit newest", "UPDATE cs_event SET subject = 'x' WHERE seq = 5", 5, "was altered"),
    ("edit a hash", "UPDATE cs_event SET hash = prev_hash WHERE seq = 3", 3, "was altered"),
    ("edit a link", f"UPDATE cs_event SET prev_hash = '{'0' * 64}' WHERE seq = 3", 3, "event 3 does not follow event 2"),
    ("delete middle", "DELETE FROM cs_event WHERE seq = 3", 3, "event 3 is missing (next is 4)"),
    ("delete first", "DELETE FROM cs_event WHERE seq = 1", 1, "event 1 is missing (next is 2)"),
    ("delete newest", "DELETE FROM cs_event WHERE seq = 5", 5, "events 5 to 5 were removed"),
    ("delete two newest", "DELETE FROM cs_event WHERE seq >= 4", 4, "events 4 to 5 were removed"),
    ("delete all", "DELETE FROM cs_event", 1, "events 1 to 5 were removed"),
    ("renumber", "UPDATE cs_event SET seq = 6 WHERE seq = 5", 5, "event 5 is missing (next is 6)"),
]


@pytest.mark.parametrize(("what", "statement", "first_bad", "words"), TAMPER, ids=[t[0] for t in TAMPER])
def test_audit_names_the_first_bad_event(ledger: Ledger, what: str, statement: str, first_bad: int,
                                         words: str) -> None:
    fill(ledger, 5)
    assert audit(ledger).ok
    sql(ledger, statement)
    result = audit(ledger)
    assert not result.ok
    assert result.first_bad == first_bad, result
    assert words in (result.problem or ""), result.problem


def test_rewriting_one_event_with_a_fresh_hash_breaks_the_next_link(ledger: Ledger) -> None:
    fill(ledger, 5)
    r = rows(ledger)[2]
    forged = events._event_hash(r.prev_hash, r.seq, r.at, r.kind, r.subject, r.actor, '{"gpus":1}')
    sql(ledger, f"UPDATE cs_event SET data = '{{\"gpus\":1}}', hash = '{forged}' WHERE seq = 3")
    result = audit(ledger)
    assert (result.ok, result.first_bad, result.problem) == (False, 4, "event 4 does not follow event 3")


@pytest.mark.parametrize("statement", ["DELETE FROM cs_event WHERE seq = 5", "DELETE FROM cs_event WHERE seq >= 3",
                                       "DELETE FROM cs_event WHERE seq = 2"])
def test_a_deletion_stays_visible_after_later_appends(ledger: Ledger, statement: str) -> None:
    """The next event chains from the recorded head, not from whatever row is newest now,
    so a write after the deletion cannot paper over it."""
    fill(ledger, 5)
    sql(ledger, statement)
    fill(ledger, 2, start=5)
    result = audit(ledger)
    assert not result.ok and result.first_bad is not None and result.first_bad <= 5, result


# -- through the command line ----------------------------------------------------------

def run(args: list[str]):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, args)


def test_cellsched_audit(ledger: Ledger, ledger_url: str, cluster_file: Path,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELLSCHED_DB", raising=False)
    fill(ledger, 5)
    ok = run(["--cluster", str(cluster_file), "--db", ledger_url, "audit"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith(f"ok  5 events, chain head sha256:{rows(ledger)[-1].hash}")
    as_json = json.loads(run(["--cluster", str(cluster_file), "--db", ledger_url, "audit", "--json"]).stdout)
    assert as_json == {"ok": True, "events": 5, "first_bad": None, "problem": None, "head": rows(ledger)[-1].hash,
                       "table": None, "row": None, "rows": as_json["rows"]}

    sql(ledger, "DELETE FROM cs_event WHERE seq = 3")
    bad = run(["--cluster", str(cluster_file), "--db", ledger_url, "audit"])
    assert bad.exit_code == 1
    assert bad.stderr == "cellsched: audit failed: event 3 is missing (next is 4)\n"
    monkeypatch.setenv("CELLSCHED_DB", ledger_url)  # the URL from the environment works too
    bad_json = run(["--cluster", str(cluster_file), "audit", "--json"])
    assert bad_json.exit_code == 1
    assert json.loads(bad_json.stdout)["first_bad"] == 3


def test_cellsched_audit_names_an_edited_event(ledger: Ledger, ledger_url: str, cluster_file: Path) -> None:
    fill(ledger, 5)
    sql(ledger, "UPDATE cs_event SET data = '{}' WHERE seq = 2")
    bad = run(["--cluster", str(cluster_file), "--db", ledger_url, "audit"])
    assert (bad.exit_code, bad.stderr) == (1, "cellsched: audit failed: event 2 (submitted p1@0123456789ab) was altered\n")


# -- where the ledger is ---------------------------------------------------------------

def test_default_ledger_is_a_sqlite_file_beside_the_cluster_config(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELLSCHED_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "etc").mkdir()
    assert default_url(Path("etc/cluster.toml")) == f"sqlite:///{(tmp_path / 'etc' / 'cellsched.db').resolve().as_posix()}"
    monkeypatch.setenv("CELLSCHED_DB", "postgresql+psycopg://u@h/db")
    assert default_url(Path("etc/cluster.toml")) == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "ledger.db", ""])
def test_unsupported_urls_are_bad_input(url: str) -> None:
    with pytest.raises(BadInput, match=r"^--db .*: unsupported database URL"):
        make_engine(url)


def test_a_version_1_ledger_is_migrated_at_first_use(ledger_url: str) -> None:
    """A ledger made before cs_grant.nodes and cs_lease.pass_ms existed gains both columns
    (and the current version) once, keeps its rows, and a second opening changes nothing."""
    from cellsched.ledger.tables import GrantRow, LeaseRow

    led = Ledger(ledger_url)
    led.ensure_schema()
    with led.engine.begin() as conn:  # make it look like version 1
        conn.exec_driver_sql("ALTER TABLE cs_grant DROP COLUMN nodes")
        conn.exec_driver_sql("ALTER TABLE cs_lease DROP COLUMN pass_ms")
        conn.exec_driver_sql("ALTER TABLE cs_lease DROP COLUMN pool_gpus")
        conn.exec_driver_sql("UPDATE cs_schema SET version = 1")
    led.dispose()
    again = Ledger(ledger_url)
    again.ensure_schema()
    with again.read() as s:
        assert schema_version(s) == SCHEMA_VERSION == 4
        assert s.exec(select(GrantRow)).all() == []  # the column is there to read
        assert s.exec(select(LeaseRow)).all() == []
    again.dispose()
    third = Ledger(ledger_url)
    third.ensure_schema()
    with third.read() as s:
        assert schema_version(s) == 4
    third.dispose()


def test_a_version_3_ledger_gives_each_team_the_code_its_specs_named(cluster_file: Path, ledger_url: str,
                                                                      tmp_path: Path) -> None:
    """Schema 4 lets a team name only code it holds. A ledger from before keeps working: each
    team whose sealed spec named a stored snapshot holds it, and no other team does. A local
    submit from the spec file makes its team a holder as it stores the code."""
    from cellsched import service
    from cellsched.ledger.tables import CodeHolderRow

    t0 = 1_796_083_200
    for name, team, owner in (("probe", "interp", "alice"), ("sweep", "evals", "carol")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "job.py").write_text(f"print({name!r})\n")
        (tmp_path / name / f"{name}.toml").write_text(
            f'name = "{name}"\nteam = "{team}"\nowner = "{owner}"\nproblem = "p"\n[code]\n'
            '[budget]\ngpu_hours = 1\ngpus = 1\n[[jobs]]\nname = "j"\nrun = ["python", "job.py"]\ngpus = 1\n')
    env = service.open_env(cluster_file, ledger_url)
    assert service.submit(env, tmp_path / "probe" / "probe.toml", "alice", t0).granted
    assert service.submit(env, tmp_path / "sweep" / "sweep.toml", "carol", t0).granted

    def holders() -> set[tuple[str, str]]:
        with env.ledger.read() as s:
            return {(r.team, r.digest[:8]) for r in s.exec(select(CodeHolderRow))}

    before = holders()
    assert {team for team, _ in before} == {"interp", "evals"} and len({d for _, d in before}) == 2
    with env.ledger.engine.begin() as conn:  # make it look like version 3
        conn.exec_driver_sql("DROP TABLE cs_code_holder")
        conn.exec_driver_sql("UPDATE cs_schema SET version = 3")
    env.ledger.dispose()
    env = service.open_env(cluster_file, ledger_url)
    env.ledger.ensure_schema()
    assert holders() == before
    env.ledger.dispose()
