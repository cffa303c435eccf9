"""``audit`` checks derived state: grants, charges, refunds, breaches, job runs and projects
rebuilt from the event chain and compared with the tables (ledger/audit.py). The ledger is
written by the service layer and the real reconciler over the in-memory executor; every
hand edit to a derived column is caught and the row named. On SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlmodel import col, select
from typer.testing import CliRunner

from cellsched import service
from cellsched.cli.app import app
from cellsched.executor import Behaviour, MemoryExecutor
from cellsched.ledger import events
from cellsched.ledger.tables import BreachRow, GrantRow, JobRunRow
from cellsched.runtime.reconciler import Reconciler, Settings
from cellsched.service import Env
from cellsched.spec.models import ProjectSpec

H = 3600
T0 = 1_800_000_000


def spec(name: str, team: str, gpus: int, hours: float, job: str, **extra: Any) -> ProjectSpec:
    budget: dict[str, Any] = {"gpu_hours": gpus * hours, "gpus": gpus, "pool": "h100"}
    for k in ("not_before",):
        if k in extra:
            budget[k] = dt.datetime.fromtimestamp(extra.pop(k), dt.timezone.utc).isoformat()
    return ProjectSpec.model_validate({
        "name": name, "team": team, "owner": "o", "problem": "audit me",
        "budget": budget, "jobs": [{"name": job, "gpus": gpus, "run": "true"}], **extra})


def lifecycle(env: Env, tmp_path: Path) -> dict[str, GrantRow]:
    """Submit, replace, cancel, a daemon run with an early finish (refund), a breach (the fake
    cluster has 12 of the 16 GPUs declared) and a window that runs out."""
    out = {}
    out["alpha"] = service.submit(env, spec("alpha", "interp", 8, 2, "a"), "alice", T0).grant
    beta = service.submit(env, spec("beta", "evals", 8, 1, "b"), "carol", T0).grant
    assert beta is not None
    out["beta2"] = service.submit(env, spec("beta", "evals", 4, 1, "b2", replaces=beta.project_id), "carol", T0).grant
    service.submit(env, spec("gamma", "pretraining", 8, 2, "g", not_before=T0 + 5 * H), "dave", T0)
    service.cancel(env, "gamma", "dave", T0 + 600)
    out["delta"] = service.submit(env, spec("delta", "pretraining", 4, 1, "d"), "dave", T0 + 60).grant
    jobs = {"a": Behaviour(1800), "b2": Behaviour(None), "d": Behaviour(600)}
    ex = MemoryExecutor(lambda gang: jobs[gang.job], capacity=12, now=T0)
    rec = Reconciler(env, ex, clock=lambda: int(ex.now), settings=Settings(
        strict=True, notify_in_background=False, placement_timeout_s=10, breach_update_s=60,
        logs_root=tmp_path / "logs"))
    for t in range(T0, T0 + 3 * H, 300):
        ex.advance(t)
        rec.tick(t)
    with env.ledger.read() as s:
        rows = {r.project: r for r in s.exec(select(GrantRow).order_by(col(GrantRow.id)))}
        assert s.exec(select(BreachRow)).first() is not None
        assert s.exec(select(JobRunRow)).first() is not None
    states = {name: (r.state, r.refunded_gs > 0, r.breach_gs > 0) for name, r in rows.items()}
    assert states["alpha"] == ("completed", True, False)  # finished early, refunded
    assert states["gamma"] == ("cancelled", True, False)
    assert states["delta"][2]  # not placed in time: a breach
    with env.ledger.read() as s:
        replaced = s.get(GrantRow, beta.id)
        assert replaced is not None and replaced.state == "replaced"
        assert rows["beta"].state in ("completed", "expired")
    return rows


def audit(env: Env) -> events.AuditResult:
    with env.ledger.read() as s:
        return events.audit(s)


def sql(env: Env, statement: str, **params: Any) -> None:
    with env.ledger.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_a_full_lifecycle_audits_ok_and_each_hand_edit_is_named(env: Env, tmp_path: Path) -> None:
    rows = lifecycle(env, tmp_path)
    clean = audit(env)
    assert clean.ok, clean.problem
    assert clean.rows >= len(rows) + 4  # grants, runs, breach spans and projects were compared

    alpha, delta = rows["alpha"], rows["delta"]
    with env.ledger.read() as s:
        run = s.exec(select(JobRunRow).where(JobRunRow.grant_id == alpha.id)).first()
        breach = s.exec(select(BreachRow).where(BreachRow.grant_id == delta.id)).first()
    assert run is not None and breach is not None
    g = f"cs_grant {alpha.id} ({alpha.project_id}): "
    edits: list[tuple[str, str, str, Any, Any, str]] = [
        # (table, column, key column, key, new value, what audit must say)
        *[("cs_grant", c, "id", alpha.id, v, f"{g}{c} is {v} in the table") for c, v in (
            ("width", 4, ), ("pool", "a100"), ("team", "evals"), ("start", alpha.start - 60), ("end", alpha.end + 60),
            ("promised_start", alpha.promised_start + 1), ("promised_end", alpha.promised_end - 1),
            ("charged_gs", alpha.charged_gs * 2), ("refunded_gs", 0), ("state", "active"),
            ("created_at", alpha.created_at - 1), ("started_at", (alpha.started_at or 0) + 1),
            ("ended_at", (alpha.ended_at or 0) + 1), ("breach_gs", 99), ("digest", "0" * 64))],
        ("cs_grant", "nodes", "id", alpha.id, "[1]", f"{g}nodes is [1] in the table"),
        ("cs_grant", "receipt", "id", alpha.id, '{"payload": {"width": 4}, "signature": ""}', f"{g}the receipt's"),
        ("cs_grant", "breach_gs", "id", delta.id, delta.breach_gs + 1, f"cs_grant {delta.id} ({delta.project_id}): breach_gs"),
        *[("cs_job_run", c, "id", run.id, v, f"cs_job_run {run.id} (grant {alpha.id} a#1): {c} is") for c, v in (
            ("state", "failed"), ("gpus", 1), ("gpu_seconds", 1), ("exit_codes", "[1]"))],
        ("cs_breach", "gpu_seconds", "id", breach.id, breach.gpu_seconds + 4, f"cs_breach {breach.id} (grant {delta.id})"),
        ("cs_breach", "width", "id", breach.id, 1, f"cs_breach {breach.id} (grant {delta.id}): is for team"),
        ("cs_project", "spec_json", "id", alpha.project_id, '{"name":"alpha"}',
         f"cs_project {alpha.project_id}: the stored spec's SHA-256"),
        ("cs_project", "team", "id", alpha.project_id, "evals", f"cs_project {alpha.project_id}: team is evals"),
    ]
    for table, column, key, value, new, said in edits:
        with env.ledger.read() as s:
            old = s.connection().execute(text(f'SELECT "{column}" FROM {table} WHERE {key} = :k'), {"k": value}).scalar()
        sql(env, f'UPDATE {table} SET "{column}" = :v WHERE {key} = :k', v=new, k=value)
        try:
            bad = audit(env)
            assert not bad.ok, (table, column)
            assert bad.problem is not None and bad.problem.startswith(said), (said, bad.problem)
            assert bad.table == table and bad.first_bad is None  # the chain itself is intact
        finally:
            sql(env, f'UPDATE {table} SET "{column}" = :v WHERE {key} = :k', v=old, k=value)
    assert audit(env).ok  # every edit undone

    # a row the events never made, and one they made that is gone
    with env.ledger.read() as s:
        n = s.connection().execute(text("SELECT count(*) FROM cs_breach")).scalar()
    sql(env, "DELETE FROM cs_breach WHERE id = :k", k=breach.id)
    bad = audit(env)
    assert not bad.ok and bad.problem is not None and (n == 1 or "the spans add up to" in bad.problem), bad.problem
    sql(env, "INSERT INTO cs_job_run (grant_id, job, attempt, state, gpus, gpu_seconds, exit_codes, detail, gpu_ids) "
             "VALUES (:g, 'ghost', 1, 'succeeded', 8, 100, '[0]', '', '[]')", g=alpha.id)
    sql(env, "DELETE FROM cs_breach")  # so the ghost run is the first difference
    sql(env, "UPDATE cs_grant SET breach_gs = 0")
    bad = audit(env)
    assert not bad.ok and bad.problem is not None
    assert bad.problem.startswith(f"cs_grant {delta.id} ({delta.project_id}): breach_gs is 0 in the table")


def test_the_message_reads_as_the_issue_asks(env: Env, tmp_path: Path) -> None:
    g = service.submit(env, spec("pythia-ablation", "interp", 8, 2, "a"), "alice", T0).grant
    assert g is not None
    sql(env, "UPDATE cs_grant SET width = 4 WHERE id = :k", k=g.id)
    bad = audit(env)
    assert bad.problem == (f"cs_grant {g.id} ({g.project_id}): width is 4 in the table, 8 by the events "
                           "(event 1)")
    assert (bad.table, bad.row) == ("cs_grant", f"{g.id} ({g.project_id})")


def test_cellsched_audit_names_the_row(env: Env, cluster_file: Path, ledger_url: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELLSCHED_DB", raising=False)
    g = service.submit(env, spec("p", "interp", 8, 2, "a"), "alice", T0).grant
    assert g is not None
    runner = CliRunner()
    ok = runner.invoke(app, ["--cluster", str(cluster_file), "--db", ledger_url, "audit"])
    assert ok.exit_code == 0 and ok.stdout.startswith("ok  1 event,"), ok.output
    sql(env, "UPDATE cs_grant SET refunded_gs = 3600 WHERE id = :k", k=g.id)
    bad = runner.invoke(app, ["--cluster", str(cluster_file), "--db", ledger_url, "audit"])
    assert bad.exit_code == 1
    assert bad.stderr == (f"cellsched: audit failed: cs_grant {g.id} ({g.project_id}): refunded_gs is 3600 in the "
                          "table, 0 by the events (event 1)\n")


@pytest.mark.parametrize("ledger_url", ["sqlite"], indirect=True)
def test_audit_time_on_a_large_ledger(env: Env) -> None:
    """Grants written as the service writes them, half cancelled (1.5 events a grant): the
    audit (chain and derived state) takes at most 2 ms a grant. 1,000 grants here (building
    them is the slow part); ``CELLSCHED_AUDIT_GRANTS=10000`` for the figure in docs/ledger.md."""
    import os

    from cellsched.ledger.snapshot import nodes_json
    from cellsched.receipt import sign

    n = int(os.environ.get("CELLSCHED_AUDIT_GRANTS", "1000"))
    with env.ledger.write() as s:  # the service's writes, in bulk (submit takes ~5 ms each)
        from cellsched.ledger.lifecycle import end_grant
        from cellsched.ledger.tables import ProjectRow
        from cellsched.spec.seal import canonical_json, digest, project_id

        for i in range(n):
            sp = spec(f"p{i}", "pretraining", 1, 1, "a")
            d = digest(sp)
            pid = project_id(sp, d)
            start = T0 + (i // 16) * H
            s.add(ProjectRow(id=pid, name=sp.name, digest=d, team="pretraining", owner="o", submitted_by="dave",
                             spec_json=canonical_json(sp), created_at=T0))
            s.flush()
            row = GrantRow(project_id=pid, project=sp.name, digest=d, team="pretraining", pool="h100", width=1,
                           start=start, end=start + H, promised_start=start, promised_end=start + H, charged_gs=H,
                           created_at=T0, nodes=nodes_json([i % 2]))
            s.add(row)
            s.flush()
            payload = {"grant": row.id, "project": pid, "digest": d, "team": "pretraining", "pool": "h100",
                       "width": 1, "start": start, "end": start + H, "gpu_seconds": H, "issued_at": T0}
            row.receipt = sign(payload, env.private_key)
            events.append(s, T0, "granted", pid, "dave", {**{k: v for k, v in payload.items() if k != "project"},
                                                         "nodes": [i % 2]})
            if i % 2:
                end_grant(s, row, T0 + 1, "cancelled", "dave", {})
    t = time.perf_counter()
    result = audit(env)
    took = time.perf_counter() - t
    assert result.ok, result.problem
    assert result.events == n + n // 2 and result.rows == 2 * n
    print(f"audit of {n} grants, {result.events} events: {took:.2f} s")
    assert took < 0.5 + n * 0.002
