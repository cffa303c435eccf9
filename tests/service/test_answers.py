"""Answers that are right and useful, through the service layer on SQLite and PostgreSQL
(issue 14): name_in_use and every live grant in status and cancel; a delayed grant says
what delayed it; a dry run writes nothing and answers as the submit then does; budget of a
name that is neither a team nor a project; every figure of budget and status >= 0 over
random ledgers (built as tests/report/test_identities.py builds them)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from service_specs import H, T0, spec
from sqlmodel import select

from cellsched import ops, service
from cellsched.errors import BadInput, NotFound
from cellsched.ledger.tables import EventRow, GrantRow
from cellsched.service import Env, ledger_version


def head(env: Env) -> tuple[int, str]:
    with env.ledger.read() as s:
        return ledger_version(s)


def events(env: Env) -> list[tuple[str, str]]:
    with env.ledger.read() as s:
        return [(e.kind, e.subject) for e in s.exec(select(EventRow).order_by(EventRow.seq))]


# -- name_in_use ------------------------------------------------------------------------------


def test_another_version_of_a_live_name_is_refused_naming_it_and_how_to_replace_it(env: Env) -> None:
    v1 = service.submit(env, spec("abl", hours=16), "alice", T0)
    assert v1.granted
    v2 = service.submit(env, spec("abl", hours=24), "alice", T0)
    assert not v2.granted and v2.refusal is not None and v2.refusal.reason == "name_in_use"
    msg = v2.refusal.message
    assert v1.project_id in msg and f'replaces = "{v1.project_id}"' in msg and "--replace" in msg
    assert events(env)[-1] == ("refused", v2.project_id)
    # The old one is untouched (charged once), and the replacement goes through.
    assert service.budget(env, "interp", T0).total("committed_gs") == 16 * H
    v3 = service.submit(env, spec("abl", hours=24, replaces=v1.project_id), "alice", T0)
    assert v3.granted and v3.replaced == v1.project_id
    assert service.budget(env, "interp", T0).total("committed_gs") == 24 * H
    # Same digest again: idempotent, not name_in_use.
    assert service.submit(env, spec("abl", hours=24, replaces=v1.project_id), "alice", T0).existing


def test_submit_replace_takes_the_live_grant_and_is_idempotent(env: Env, tmp_path: Path) -> None:
    def spec_in(hours: int) -> ops.SpecIn:
        return ops.SpecIn(file="abl.json", text=spec("abl", hours=hours).model_dump_json(exclude_none=True))

    first = ops.submit(env, "alice", spec_in(16), T0)
    with pytest.raises(NotFound, match="no live grant to replace"):
        ops.submit(env, "alice", spec_in(8).model_copy(update={"text": spec_in(8).text.replace('"abl"', '"other"')}),
                   T0, replace=True)
    second = ops.submit(env, "alice", spec_in(24), T0, replace=True)
    assert second["decision"] == "granted" and second["replaced"] == first["project"]
    again = ops.submit(env, "alice", spec_in(24), T0, replace=True)
    assert again["existing"] and again["project"] == second["project"]


def test_status_lists_every_live_grant_and_cancel_says_which_it_ended(env: Env) -> None:
    a = service.submit(env, spec("abl", hours=16), "alice", T0)
    assert a.granted and a.grant is not None
    # A ledger from before name_in_use: two live versions of one name (a row as it was written then).
    from cellsched.ledger.tables import ProjectRow

    with env.ledger.write() as s:
        row = s.exec(select(GrantRow)).one()
        proj = s.exec(select(ProjectRow)).one()
        s.add(ProjectRow.model_validate({**proj.model_dump(), "id": "abl@ffffffffffff", "digest": "f" * 64}))
        s.flush()
        twin = GrantRow.model_validate({**row.model_dump(), "id": None, "digest": "f" * 64,
                                        "project_id": "abl@ffffffffffff", "start": T0 + 100 * H,
                                        "end": T0 + 102 * H})
        s.add(twin)
    items, _ = service.status(env, None, T0)
    assert sorted(i["project"] for i in items) == sorted([a.project_id, "abl@ffffffffffff"])
    with pytest.raises(BadInput, match=r"abl has 2 live grants \(abl@.*, abl@ffffffffffff\): cancel one by name@digest"):
        service.cancel(env, "abl", "alice", T0)
    out = service.cancel(env, a.project_id, "alice", T0)
    assert out["project"] == a.project_id and out["grant"]["id"] == a.grant.id
    assert service.cancel(env, "abl", "alice", T0)["project"] == "abl@ffffffffffff"


# -- delayed grants -----------------------------------------------------------------------------


def test_a_grant_delayed_by_the_allowance_says_so_and_what_starts_sooner(env: Env) -> None:
    """interp has 1,500 GPU-hours a month: 2,000 on 8 GPUs must put 500 in January."""
    out = service.submit(env, spec("big", hours=2000), "alice", T0).to_json()
    assert out["decision"] == "granted"
    d = out["delay"]
    assert d["reason"] == "allowance" and d["wanted_start"] == T0 and d["free_from"] == T0
    assert d["message"].startswith("earliest window your allowance allows: 2026-12-24 04:30 UTC")
    assert d["sooner"][0]["kind"] == "smaller" and d["sooner"][0]["start"] == T0
    plain = service.submit(env, spec("small", team="pretraining", hours=8), "dave", T0).to_json()
    assert "delay" not in plain


# -- dry run ------------------------------------------------------------------------------------


def _comparable(data: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in data.items() if k != "dry_run"}
    if "grant" in out:
        out["grant"] = {k: v for k, v in out["grant"].items() if k != "id"}
    return out


@pytest.mark.parametrize("case", ["granted", "delayed", "refused", "name_in_use", "existing", "replaces"])
def test_dry_run_writes_nothing_and_answers_as_the_submit_then_does(env: Env, case: str) -> None:
    service.submit(env, spec("busy", team="pretraining", gpus=16, hours=16 * 10), "dave", T0)
    service.submit(env, spec("mine", hours=16), "alice", T0)
    mine_id = service.status(env, "mine", T0)[0][0]["project"]
    s = {"granted": spec("new", hours=8),
         "delayed": spec("new", hours=2000),
         "refused": spec("new", gpus=12, hours=24),
         "name_in_use": spec("mine", hours=4),
         "existing": spec("mine", hours=16),
         "replaces": spec("mine", hours=4, replaces=mine_id)}[case]
    before = head(env)
    planned = service.submit(env, s, "alice", T0 + 60, dry_run=True).to_json()
    assert head(env) == before and planned["dry_run"] is True
    real = service.submit(env, s, "alice", T0 + 60).to_json()
    assert _comparable(planned) == _comparable(real), case


# -- budget -------------------------------------------------------------------------------------


def test_budget_of_a_name_that_is_neither_team_nor_project(env: Env) -> None:
    with pytest.raises(NotFound, match=r"^'nobody' is neither a team nor a project \(teams: interp, evals, pretraining\)$"):
        service.budget(env, "nobody", T0)


def test_an_allowance_lowered_below_what_is_granted_shows_as_overdrawn(env: Env, cluster_file: Path) -> None:
    """The grants stand; remaining reads 0, never negative, and the excess is named."""
    service.submit(env, spec("big", hours=1000), "alice", T0)
    cluster_file.write_text(cluster_file.read_text().replace("allowance_gpu_hours = 1500", "allowance_gpu_hours = 400"))
    lowered = service.open_env(cluster_file, env.ledger.url)
    try:
        data = service.budget(lowered, "interp", T0 + 60).to_json()
    finally:
        lowered.ledger.dispose()
    assert data["remaining_gpu_hours"] == 0 and data["overdrawn_gpu_hours"] == pytest.approx(600, abs=1)
    assert all(v >= 0 for k, v in data.items() if k.endswith("_gpu_hours"))


# -- every figure >= 0 over random ledgers ------------------------------------------------------

sys.path.insert(0, str(Path(__file__).parents[1] / "report"))
import test_identities as ident  # noqa: E402


@pytest.mark.timeout(900)
@settings(max_examples=max(1, ident.EXAMPLES // 5), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(plan=ident.ops, tail=ident.st.integers(0, 3000), later=ident.st.integers(0, 40 * 24 * 60))
def test_every_budget_and_status_figure_is_never_negative(fresh: Any, tmp_path: Path, plan: Any, tail: int,
                                                          later: int) -> None:
    env = fresh()
    w = ident.build_ledger(env, tmp_path / "logs", plan, capacity=None, tail_min=tail)
    for now in (w.t, w.t + 60 * later):
        for team in ("interp", "evals", "pretraining"):
            data = ops.budget(env, "root-admin", team, now)
            bad = [(p, v) for p, v in ident.numbers(data) if v < 0]
            assert not bad, (team, now, bad)
        data = ops.status(env, "root-admin", None, now)
        bad = [(p, v) for p, v in ident.numbers(data) if v < 0 and ".exit_codes[" not in p]  # a signal: -9
        assert not bad, (now, bad)


@pytest.fixture
def cluster_path(tmp_path: Path) -> Path:
    return ident.cluster_path.__wrapped__(tmp_path)  # type: ignore[attr-defined,no-any-return]


fresh = ident.fresh
