"""Best-effort submissions on a real ledger (SQLite and PostgreSQL): queued with one task per
job × count and an event, no window and nothing charged; refused (nothing written) without a
best-effort allowance or over what is left of it; the same digest again; cancel; budget and
status; audit still passes (docs/lending.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from cellsched import ops, service
from cellsched.errors import Denied, NotFound
from cellsched.ledger import events
from cellsched.ledger.tables import BestEffortRow, BestEffortTaskRow, EventRow, GrantRow, ProjectRow
from cellsched.spec.models import ProjectSpec
from service_specs import H, JAN, T0, spec

CLUSTER = """
admins = ["root-admin"]
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 16
gpus_per_node = 8
[[pools]]
name = "small"
gpu_type = "A100"
gpus = 4
gpus_per_node = 2
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


@pytest.fixture
def env(tmp_path: Path, ledger_url: str):  # type: ignore[no-untyped-def]
    from cellsched.receipt import create_keys, key_paths

    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    create_keys(*key_paths(path))
    e = service.open_env(path, ledger_url)
    yield e
    e.ledger.dispose()


def sweep(name: str = "lr-sweep", team: str = "evals", hours: float = 200, gpus: int = 1,
          jobs: list[dict[str, Any]] | None = None, **budget: Any) -> ProjectSpec:
    return ProjectSpec.model_validate({
        "name": name, "team": team, "owner": "carol", "problem": "which learning rate", "kind": "best-effort",
        "budget": {"gpu_hours": hours, "gpus": gpus, **budget},
        "jobs": jobs or [{"name": "trial", "run": "python sweep.py --resume", "gpus": 1, "count": 64}],
    })


def rows(env, table):  # type: ignore[no-untyped-def]
    with env.ledger.read() as s:
        return list(s.exec(select(table)).all())


def kinds(env) -> list[str]:  # type: ignore[no-untyped-def]
    with env.ledger.read() as s:
        return [e.kind for e in s.exec(select(EventRow).order_by(col(EventRow.seq)))]


def audit_ok(env) -> None:  # type: ignore[no-untyped-def]
    with env.ledger.read() as s:
        result = events.audit(s)
    assert result.ok, result.problem


def test_submit_queues_the_submission_and_a_task_per_job_and_count(env) -> None:  # type: ignore[no-untyped-def]
    spec2 = sweep(jobs=[{"name": "trial", "run": "x", "count": 3}, {"name": "eval", "run": "y", "gpus": 2}], gpus=2)
    out = service.submit(env, spec2, "carol", T0)
    data = out.to_json()
    assert (data["decision"], data["kind"], data["existing"]) == ("queued", "best-effort", False)
    assert not out.granted and out.grant is None and out.refusal is None
    be = data["best_effort"]
    assert (be["team"], be["pool"], be["state"], be["max_gpus"], be["budget_gpu_hours"], be["charged_gpu_hours"]) == (
        "evals", "h100", "queued", 2, 200, 0)
    assert be["tasks"] == {"queued": 4, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0, "total": 4}
    assert (data["best_effort_allowance_gpu_hours"], data["best_effort_remaining_gpu_hours"]) == (300, 100)
    (row,) = rows(env, BestEffortRow)
    assert (row.project_id, row.budget_gs, row.charged_gs, row.created_at, row.id) == (out.project_id, 200 * H, 0, T0,
                                                                                       be["id"])
    tasks = sorted(rows(env, BestEffortTaskRow), key=lambda t: t.id or 0)
    assert [(t.job, t.index, t.gpus, t.state, t.attempt, t.queued_at, t.team) for t in tasks] == [
        ("trial", 0, 1, "queued", 0, T0, "evals"), ("trial", 1, 1, "queued", 0, T0, "evals"),
        ("trial", 2, 1, "queued", 0, T0, "evals"), ("eval", 0, 2, "queued", 0, T0, "evals")]
    (proj,) = rows(env, ProjectRow)
    assert proj.id == out.project_id and '"kind":"best-effort"' in proj.spec_json
    assert rows(env, GrantRow) == [] and kinds(env) == ["be_queued"]
    with env.ledger.read() as s:
        ev = s.exec(select(EventRow)).one()
    assert (ev.subject, ev.actor) == (out.project_id, "carol")
    assert json.loads(ev.data) == {"be": row.id, "digest": out.digest, "team": "evals", "pool": "h100",
                                   "max_gpus": 2, "budget_gpu_seconds": 200 * H, "tasks": 4,
                                   "jobs": [["trial", 3, 1], ["eval", 1, 2]]}
    audit_ok(env)


def test_the_same_digest_again_is_its_submission(env) -> None:  # type: ignore[no-untyped-def]
    first = service.submit(env, sweep(), "carol", T0)
    again = service.submit(env, sweep(), "carol", T0 + 60).to_json()
    assert again["decision"] == "queued" and again["existing"] is True
    assert again["best_effort"]["id"] == first.to_json()["best_effort"]["id"]
    assert len(rows(env, BestEffortRow)) == 1 and len(rows(env, BestEffortTaskRow)) == 64
    assert kinds(env) == ["be_queued"]


def test_no_best_effort_allowance_is_a_refusal_and_nothing_is_written(env) -> None:  # type: ignore[no-untyped-def]
    out = service.submit(env, sweep(team="interp"), "alice", T0).to_json()
    assert out["decision"] == "refused" and out["kind"] == "best-effort"
    assert out["refusal"]["reason"] == "no_best_effort_allowance"
    assert out["refusal"]["message"] == ("team interp has no best-effort allowance "
                                         "(best_effort_gpu_hours in the cluster config)")
    assert kinds(env) == [] and rows(env, ProjectRow) == [] and rows(env, BestEffortRow) == []


def test_over_what_is_left_is_refused_live_submissions_reserve_their_budget(env) -> None:  # type: ignore[no-untyped-def]
    assert service.submit(env, sweep("a", hours=200), "carol", T0).to_json()["decision"] == "queued"
    out = service.submit(env, sweep("b", hours=101), "carol", T0).to_json()
    assert out["refusal"]["reason"] == "over_best_effort_allowance"
    assert out["refusal"]["needed"] == 101 * H and out["refusal"]["available"] == 100 * H
    assert "team evals has 100 of its 300 best-effort GPU-hours left this month" in out["refusal"]["message"]
    assert service.submit(env, sweep("b", hours=100), "carol", T0).to_json()["decision"] == "queued"
    # a new month: a new allowance (submissions count in the period they were submitted in)
    assert service.submit(env, sweep("c", hours=300), "carol", JAN).to_json()["decision"] == "queued"
    assert kinds(env) == ["be_queued"] * 3


def test_ended_submissions_count_what_they_were_charged(env) -> None:  # type: ignore[no-untyped-def]
    a = service.submit(env, sweep("a", hours=200), "carol", T0)
    with env.ledger.write() as s:  # as the daemon leaves it: 50 GPU-hours charged, every task done
        row = s.exec(select(BestEffortRow)).one()
        row.charged_gs, row.state, row.ended_at = 50 * H, "done", T0 + H
        s.add(row)
    b = service.budget(env, "evals", T0 + H).to_json()
    assert (b["best_effort_allowance_gpu_hours"], b["best_effort_charged_gpu_hours"],
            b["best_effort_reserved_gpu_hours"], b["best_effort_remaining_gpu_hours"]) == (300, 50, 0, 250)
    assert b["best_effort"] == [{"project": a.project_id, "state": "done", "budget_gpu_hours": 200,
                                 "charged_gpu_hours": 50}]
    assert service.submit(env, sweep("b", hours=250), "carol", T0 + H).to_json()["decision"] == "queued"
    b = service.budget(env, "evals", T0 + H).to_json()
    assert (b["best_effort_reserved_gpu_hours"], b["best_effort_remaining_gpu_hours"]) == (250, 0)
    # the guaranteed figures are untouched
    assert (b["allowance_gpu_hours"], b["committed_gpu_hours"], b["remaining_gpu_hours"]) == (100, 0, 100)


@pytest.mark.parametrize(("budget", "reason", "words"), [
    ({"pool": "nope"}, "unknown_pool", "no pool named 'nope' (pools: h100, small)."),
    ({"gpu_type": "TPU"}, "unknown_pool", "no pool has gpu_type 'TPU' (types: A100, H100)."),
    ({"pool": "small"}, "wider_than_node",
     "a best-effort task runs on one node: a job of 4 GPUs needs 4 GPUs on one node, pool small's nodes have 2."),
])
def test_where_it_cannot_run_is_a_refusal(env, budget: dict[str, Any], reason: str, words: str) -> None:  # type: ignore[no-untyped-def]
    wide = sweep(gpus=4, jobs=[{"name": "t", "run": "x", "gpus": 4}], **budget)
    out = service.submit(env, wide, "carol", T0).to_json()
    assert (out["decision"], out["refusal"]["reason"], out["refusal"]["message"]) == ("refused", reason, words)
    assert kinds(env) == []


def test_the_pool_is_budget_pool_or_the_largest_of_the_gpu_type_that_fits(env) -> None:  # type: ignore[no-untyped-def]
    assert service.submit(env, sweep("a", hours=1, pool="small"), "carol", T0).to_json()["best_effort"]["pool"] == "small"
    assert service.submit(env, sweep("b", hours=1, gpu_type="A100"), "carol", T0).to_json()["best_effort"]["pool"] == "small"
    assert service.submit(env, sweep("c", hours=1), "carol", T0).to_json()["best_effort"]["pool"] == "h100"


def test_only_members_submit_and_a_name_in_use_is_refused(env) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Denied):
        service.submit(env, sweep(), "alice", T0)
    service.submit(env, sweep("x", hours=10), "carol", T0)
    other = service.submit(env, sweep("x", hours=11), "carol", T0).to_json()
    assert other["refusal"]["reason"] == "name_in_use" and "cellsched cancel x@" in other["refusal"]["message"]
    # a guaranteed spec of the same name is refused too: names stay unambiguous
    g = service.submit(env, spec("x", team="evals", owner="carol", gpus=1, hours=1), "carol", T0)
    assert g.refusal is not None and g.refusal.reason == "name_in_use"
    assert "live best-effort submission" in g.refusal.message


def test_dry_run_writes_nothing(env) -> None:  # type: ignore[no-untyped-def]
    out = service.submit(env, sweep(), "carol", T0, dry_run=True).to_json()
    assert (out["decision"], out["dry_run"], out["best_effort"]["id"]) == ("queued", True, None)
    assert out["best_effort"]["tasks"]["queued"] == 64
    assert kinds(env) == [] and rows(env, BestEffortRow) == [] and rows(env, ProjectRow) == []


def test_cancel_cancels_queued_tasks_and_leaves_running_ones_to_the_daemon(env) -> None:  # type: ignore[no-untyped-def]
    out = service.submit(env, sweep(jobs=[{"name": "trial", "run": "x", "count": 3}]), "carol", T0)
    with env.ledger.write() as s:  # the daemon started one task
        t = s.exec(select(BestEffortTaskRow).order_by(col(BestEffortTaskRow.id))).first()
        assert t is not None
        t.state, t.attempt, t.started_at = "running", 1, T0 + 10
        s.add(t)
    with pytest.raises(Denied):
        service.cancel(env, "lr-sweep", "alice", T0 + 60)
    got = service.cancel(env, "lr-sweep", "carol", T0 + 60)
    assert (got["project"], got["state"], got["kind"], got["cancelled_tasks"], got["running_tasks"]) == (
        out.project_id, "cancelled", "best-effort", 2, 1)
    assert got["best_effort"]["tasks"] == {"queued": 0, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 2,
                                           "total": 3}
    (row,) = rows(env, BestEffortRow)
    assert (row.state, row.ended_at) == ("cancelled", T0 + 60)
    assert sorted(t.state for t in rows(env, BestEffortTaskRow)) == ["cancelled", "cancelled", "running"]
    assert kinds(env) == ["be_queued", "be_cancelled"]
    with pytest.raises(NotFound, match="no live grant for project 'lr-sweep'"):
        service.cancel(env, "lr-sweep", "carol", T0 + 70)
    # its running task is charged when it leaves: until then the budget stays reserved ...
    assert service.budget(env, "evals", T0 + 70).to_json()["best_effort_remaining_gpu_hours"] == 100
    with env.ledger.write() as s:  # ... the daemon stopped it (charged 50 GPU-seconds) ...
        t = s.exec(select(BestEffortTaskRow).where(BestEffortTaskRow.state == "running")).one()
        b = s.exec(select(BestEffortRow)).one()
        t.state, b.charged_gs = "cancelled", 50
        s.add(t)
        s.add(b)
    # ... and only what was charged counts
    assert service.budget(env, "evals", T0 + 70).to_json()["best_effort_remaining_gpu_hours"] == 300 - 50 / 3600
    # the same digest again after a cancel: queued anew
    again = service.submit(env, sweep(jobs=[{"name": "trial", "run": "x", "count": 3}]), "carol", T0 + 80).to_json()
    assert again["decision"] == "queued" and not again["existing"] and again["best_effort"]["id"] != row.id
    assert len(rows(env, ProjectRow)) == 1
    audit_ok(env)


def test_status_lists_best_effort_work_beside_grants(env) -> None:  # type: ignore[no-untyped-def]
    g = service.submit(env, spec("window", team="interp", gpus=8, hours=8), "alice", T0)
    b = service.submit(env, sweep(jobs=[{"name": "trial", "run": "x", "count": 2}]), "carol", T0)
    with env.ledger.write() as s:
        t = s.exec(select(BestEffortTaskRow).order_by(col(BestEffortTaskRow.id))).first()
        assert t is not None
        t.state, t.preemptions = "running", 2
        s.add(t)
    items = ops.status(env, "carol", None, T0 + 60)
    assert [(i["kind"], i["project"]) for i in items] == [("guaranteed", g.project_id), ("best-effort", b.project_id)]
    be = items[1]
    assert be["tasks"] == {"queued": 1, "running": 1, "succeeded": 0, "failed": 0, "cancelled": 0, "total": 2}
    assert (be["preemptions"], be["budget_gpu_hours"], be["charged_gpu_hours"]) == (2, 200, 0)
    assert be["created_at_utc"] == "2026-12-01T00:00:00Z" and be["daemon"]["alive"] is False
    assert be["note"] == "no daemon has ever served this ledger: best-effort work is not being run"
    assert "task_list" not in be
    (one,) = ops.status(env, "carol", "lr-sweep", T0 + 60)
    assert [(t["job"], t["index"], t["state"]) for t in one["task_list"]] == [("trial", 0, "running"),
                                                                             ("trial", 1, "queued")]
    assert one["task_list"][1]["queued_at_utc"] == "2026-12-01T00:00:00Z"
    with pytest.raises(NotFound, match="no grant for project 'nothing'"):
        ops.status(env, "carol", "nothing", T0)


def test_budget_of_a_best_effort_project_is_its_teams_with_its_line(env) -> None:  # type: ignore[no-untyped-def]
    service.submit(env, sweep("a", hours=10), "carol", T0)
    b = service.submit(env, sweep("b", hours=20), "carol", T0)
    data = service.budget(env, "b", T0).to_json()
    assert data["team"] == "evals" and data["projects"] == []
    assert [p["project"] for p in data["best_effort"]] == [b.project_id]
    assert data["best_effort_remaining_gpu_hours"] == 270  # the team's, not the line's


def test_a_guaranteed_budget_without_best_effort_work_shows_zeros(env) -> None:  # type: ignore[no-untyped-def]
    service.submit(env, spec("a", team="interp"), "alice", T0)
    data = service.budget(env, "interp", T0).to_json()
    assert (data["best_effort_allowance_gpu_hours"], data["best_effort_charged_gpu_hours"],
            data["best_effort_remaining_gpu_hours"], data["best_effort"]) == (0, 0, 0, [])


def _audit(env):  # type: ignore[no-untyped-def]
    with env.ledger.read() as s:
        return events.audit(s)


@pytest.mark.parametrize(("table", "edit", "words"), [
    (BestEffortRow, lambda r: setattr(r, "budget_gs", 1), "budget_gs is 1 in the table, 720000 by the events"),
    (BestEffortRow, lambda r: setattr(r, "state", "done"), "state is done in the table, queued by the events"),
    (BestEffortTaskRow, lambda r: setattr(r, "gpus", 8), "gpus is 8 in the table, 1 by the events"),
    (BestEffortTaskRow, lambda r: setattr(r, "queued_at", 0), f"queued_at is 0 in the table, {T0} by the events"),
    (BestEffortTaskRow, None, "is missing from the table"),
])
def test_audit_names_a_hand_edit_of_a_submission_or_its_tasks(env, table, edit, words: str) -> None:  # type: ignore[no-untyped-def]
    service.submit(env, sweep(jobs=[{"name": "trial", "run": "x", "count": 2}]), "carol", T0)
    assert _audit(env).ok
    with env.ledger.write() as s:
        row = s.exec(select(table)).first()
        if edit is None:
            s.delete(row)
        else:
            edit(row)
            s.add(row)
    result = _audit(env)
    assert not result.ok and result.table == table.__tablename__ and words in (result.problem or ""), result.problem
