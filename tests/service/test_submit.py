"""The service layer on a real ledger (SQLite and PostgreSQL): submit, cancel, budget,
status, verify, with the caller's identity passed in."""

from __future__ import annotations

import json

import pytest
from sqlmodel import col, select

from cellsched import service
from cellsched.errors import BadInput, Denied, Failed, NotFound
from cellsched.ledger.tables import EventRow, GrantRow, ProjectRow
from service_specs import H, JAN, T0, spec


def grants(env) -> list[GrantRow]:  # type: ignore[no-untyped-def]
    with env.ledger.read() as s:
        return list(s.exec(select(GrantRow).order_by(col(GrantRow.id))).all())


def test_granted_then_the_same_digest_returns_the_existing_grant(env) -> None:  # type: ignore[no-untyped-def]
    first = service.submit(env, spec("a"), "alice", T0)
    assert first.granted and not first.existing
    assert first.grant is not None and (first.grant.start, first.grant.end) == (T0, T0 + 2 * H)
    assert first.remaining_gs == 1500 * H - 16 * H and first.allowance_gs == 1500 * H
    again = service.submit(env, spec("a"), "bob", T0 + 60)
    assert again.granted and again.existing
    assert again.grant is not None and again.grant.id == first.grant.id
    assert (again.remaining_gs, again.allowance_gs) == (first.remaining_gs, first.allowance_gs)
    assert len(grants(env)) == 1
    with env.ledger.read() as s:
        kinds = [e.kind for e in s.exec(select(EventRow).order_by(col(EventRow.seq)))]
    assert kinds == ["granted"]


def test_refusal_is_recorded_and_writes_no_grant(env) -> None:  # type: ignore[no-untyped-def]
    out = service.submit(env, spec("wide", gpus=17, hours=17), "alice", T0)
    assert not out.granted and out.refusal is not None and out.refusal.reason == "wider_than_pool"
    assert grants(env) == []
    with env.ledger.read() as s:
        ev = s.exec(select(EventRow)).one()
        assert ev.kind == "refused" and json.loads(ev.data)["reason"] == "wider_than_pool"
        assert s.exec(select(ProjectRow)).first() is None


def test_cancel_frees_capacity_for_the_next_submit_at_once(env) -> None:  # type: ignore[no-untyped-def]
    whole = service.submit(env, spec("whole", "pretraining", gpus=16, hours=160, owner="dave"), "dave", T0)
    assert whole.grant is not None and whole.grant.end == T0 + 10 * H
    waits = service.submit(env, spec("next", gpus=8, hours=8), "alice", T0)
    assert waits.grant is not None and waits.grant.start == T0 + 10 * H
    out = service.cancel(env, "whole", "dave", T0 + H)
    assert out["state"] == "cancelled" and out["refunded_gpu_hours"] == 16 * 9
    now = service.submit(env, spec("after", gpus=8, hours=8), "alice", T0 + H)
    assert now.grant is not None and now.grant.start == T0 + H
    with pytest.raises(NotFound):
        service.cancel(env, "whole", "dave", T0 + 2 * H)  # no live grant any more


def test_resubmitting_a_cancelled_spec_admits_it_again(env) -> None:  # type: ignore[no-untyped-def]
    first = service.submit(env, spec("a"), "alice", T0)
    service.cancel(env, "a", "alice", T0)
    again = service.submit(env, spec("a"), "alice", T0 + 60)
    assert again.granted and not again.existing
    assert again.grant is not None and again.grant.id != first.grant.id  # type: ignore[union-attr]
    assert again.grant.state == "granted" and again.grant.start == T0 + 60


def test_only_team_members_submit(env) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Denied, match="carol is not a member of team interp"):
        service.submit(env, spec("a"), "carol", T0)
    with pytest.raises(Denied):
        service.submit(env, spec("a"), "root-admin", T0)  # admins cancel; they don't spend a team's hours
    assert grants(env) == []


def test_only_members_or_admins_cancel(env) -> None:  # type: ignore[no-untyped-def]
    service.submit(env, spec("a"), "alice", T0)
    service.submit(env, spec("b"), "alice", T0)
    with pytest.raises(Denied, match="only members of team interp or admins"):
        service.cancel(env, "a", "carol", T0)
    assert all(g.state == "granted" for g in grants(env))
    assert service.cancel(env, "a", "bob", T0)["state"] == "cancelled"  # another member
    assert service.cancel(env, "b", "root-admin", T0)["state"] == "cancelled"


def test_replacement_takes_the_capacity_freed_by_the_old_version(env) -> None:  # type: ignore[no-untyped-def]
    old = service.submit(env, spec("p", gpus=8, hours=80), "alice", T0)  # 8 GPUs, 10 h
    service.submit(env, spec("other", "pretraining", gpus=8, hours=160, owner="dave"), "dave", T0)
    assert old.grant is not None
    # The pool is full until T0 + 10 h: 8 GPUs fit at T0 + 1 h only if the old version's 8
    # are given back in the same transaction.
    new = service.submit(env, spec("p", gpus=8, hours=24, replaces=old.project_id), "alice", T0 + H)
    assert new.granted and new.grant is not None, new.refusal
    assert new.grant.start == T0 + H and new.replaced == old.project_id
    rows = {g.project_id: g for g in grants(env)}
    assert rows[old.project_id].state == "replaced" and rows[old.project_id].end == T0 + H
    assert rows[old.project_id].refunded_gs == 8 * 9 * H


def test_refused_replacement_leaves_the_old_grant_untouched(env) -> None:  # type: ignore[no-untyped-def]
    old = service.submit(env, spec("p", gpus=8, hours=80), "alice", T0)
    before = [(g.id, g.state, g.start, g.end, g.refunded_gs) for g in grants(env)]
    out = service.submit(env, spec("p", gpus=17, hours=17, replaces=old.project_id), "alice", T0 + H)
    assert not out.granted and out.refusal is not None and out.refusal.reason == "wider_than_pool"
    assert [(g.id, g.state, g.start, g.end, g.refunded_gs) for g in grants(env)] == before
    with pytest.raises(NotFound):
        service.submit(env, spec("p", hours=1, replaces="p@abcdef123456"), "alice", T0 + H)
    with pytest.raises(Denied):  # carol is not in interp: neither submit nor replace
        service.submit(env, spec("p", hours=1, replaces=old.project_id), "carol", T0 + H)


def test_budget_charges_each_month_by_its_part(env) -> None:  # type: ignore[no-untyped-def]
    """Worked example of docs/admission.md: 8 GPUs for 48 GPU-hours from Dec 31 21:00."""
    out = service.submit(env, spec("ny", gpus=8, hours=48, not_before=JAN - 3 * H), "alice", T0)
    assert out.grant is not None and (out.grant.start, out.grant.end) == (JAN - 3 * H, JAN + 3 * H)
    dec = service.budget(env, "interp", T0).to_json()
    assert dec["committed_gpu_hours"] == 24 and dec["held_gpu_hours"] == 0
    assert dec["remaining_gpu_hours"] == 1500 - 24
    # Cancelled at 00:30 on Jan 1: December held 24, January held 4, 20 refunded.
    service.cancel(env, "ny", "alice", JAN + 1800)
    dec = service.budget(env, "interp", JAN - 1).to_json()  # the last second of December
    jan = service.budget(env, "interp", JAN + H).to_json()
    assert dec["held_gpu_hours"] + dec["committed_gpu_hours"] == 24 and dec["remaining_gpu_hours"] == 1476
    assert (jan["held_gpu_hours"], jan["committed_gpu_hours"], jan["remaining_gpu_hours"]) == (4, 0, 1496)
    assert (dec["refunded_gpu_hours"], jan["refunded_gpu_hours"]) == (0, 20)  # refunds fall in January
    by_project = service.budget(env, "ny", JAN + H).to_json()
    assert [p["project"] for p in by_project["projects"]] == [out.project_id]
    with pytest.raises(NotFound):
        service.budget(env, "nobody", T0)


def test_status_lists_every_project(env) -> None:  # type: ignore[no-untyped-def]
    a = service.submit(env, spec("a", gpus=16, hours=32, team="pretraining", owner="dave"), "dave", T0)
    b = service.submit(env, spec("b", gpus=8, hours=8), "alice", T0)
    items, _ = service.status(env, None, T0 + H)
    assert [i["project"] for i in items] == [a.project_id, b.project_id]
    assert items[0]["progress"] == 0.5 and items[1]["progress"] == 0.0
    assert service.status(env, "b", T0)[0][0]["start"] == T0 + 2 * H


def test_status_lists_live_work_and_what_ended_in_the_last_week(env) -> None:  # type: ignore[no-untyped-def]
    """Without a project, a name whose newest grant is no longer live is listed only if it
    ended in the last 7 days (status of a ledger of years is its live work, not its
    history); ``everything`` (``--all``) lists every name, as before."""
    from cellsched import ops

    day = 24 * H
    service.submit(env, spec("old", gpus=8, hours=8), "alice", T0)
    service.cancel(env, "old", "alice", T0 + 1800)  # ended 8 days before now
    service.submit(env, spec("recent", gpus=8, hours=8), "alice", T0 + 2 * day)
    service.cancel(env, "recent", "alice", T0 + 2 * day + 600)  # 6 days before now
    again = service.submit(env, spec("again", gpus=8, hours=8), "alice", T0)
    service.cancel(env, "again", "alice", T0 + 600)
    again2 = service.submit(env, spec("again", gpus=8, hours=16), "alice", T0 + 8 * day)  # live again
    live = service.submit(env, spec("live", gpus=8, hours=8), "alice", T0 + 8 * day)
    now = T0 + 8 * day + 60

    items = ops.status(env, "alice", None, now)
    names = sorted(i["project"].split("@")[0] for i in items)
    assert names == ["again", "live", "recent"]
    assert {i["project"] for i in items if i["project"].startswith("again")} == {again2.project_id}
    assert again.project_id != again2.project_id and live.project_id in {i["project"] for i in items}
    assert all(i["listed_since"] == now - 7 * day and i["older_not_listed"] == 1 for i in items)
    assert items[0]["listed_since_utc"] == "2026-12-02T00:01:00Z"

    every = ops.status(env, "alice", None, now, everything=True)
    assert sorted(i["project"].split("@")[0] for i in every) == ["again", "live", "old", "recent"]
    assert all(i["listed_since"] is None and i["older_not_listed"] == 0 for i in every)
    # a project named is always found, however long ago it ended
    (one,) = ops.status(env, "alice", "old", now)
    assert one["state"] == "cancelled" and one["older_not_listed"] == 0
    # a week later nothing but the live work is listed
    later = ops.status(env, "alice", None, now + 7 * day)
    assert sorted(i["project"].split("@")[0] for i in later) == ["again", "live"]
    assert later[0]["older_not_listed"] == 2


def test_verify_accepts_a_true_receipt(env) -> None:  # type: ignore[no-untyped-def]
    out = service.submit(env, spec("a"), "alice", T0)
    v = service.verify(env, "a")
    assert v["valid"] and v["project"] == out.project_id and v["receipt"]["width"] == 8


def _tamper(env, **changes) -> None:  # type: ignore[no-untyped-def]
    with env.ledger.write() as s:
        row = s.exec(select(GrantRow)).one()
        for k, v in changes.items():
            setattr(row, k, v(row) if callable(v) else v)
        s.add(row)


@pytest.mark.parametrize("what", ["receipt width", "receipt signature", "row width", "row later start",
                                  "row later end", "row team", "sealed spec", "row digest"])
def test_verify_detects_tampering(env, what: str) -> None:  # type: ignore[no-untyped-def]
    service.submit(env, spec("a"), "alice", T0)

    def receipt(edit):  # type: ignore[no-untyped-def]
        def f(row: GrantRow) -> str:
            doc = json.loads(row.receipt)
            edit(doc)
            return json.dumps(doc)
        return f

    if what == "receipt width":
        _tamper(env, receipt=receipt(lambda d: d["payload"].update(width=16)))
    elif what == "receipt signature":
        _tamper(env, receipt=receipt(lambda d: d.update(signature="A" * 88)))
    elif what == "row width":
        _tamper(env, width=16)
    elif what == "row later start":
        _tamper(env, start=lambda r: r.start + H)
    elif what == "row later end":
        _tamper(env, end=lambda r: r.end + H)
    elif what == "row team":
        _tamper(env, team="pretraining")
    elif what == "row digest":
        _tamper(env, digest="0" * 64)
    else:
        with env.ledger.write() as s:
            p = s.exec(select(ProjectRow)).one()
            p.spec_json = p.spec_json.replace('"gpus":8', '"gpus":4')
            s.add(p)
    with pytest.raises(Failed):
        service.verify(env, "a")


def test_verify_against_a_spec_file(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cellsched.spec.seal import canonical_json

    service.submit(env, spec("a"), "alice", T0)
    same = tmp_path / "a.json"
    same.write_text(canonical_json(spec("a")).replace('"gpu_seconds":57600', '"gpu_hours":16'))
    assert service.verify(env, "a", same)["valid"]
    other = tmp_path / "b.json"
    other.write_text(canonical_json(spec("a", hours=17)).replace('"gpu_seconds":61200', '"gpu_hours":17'))
    with pytest.raises(Failed, match="is not the sealed spec"):
        service.verify(env, "a", other)


def test_a_config_read_again_during_a_submit_does_not_bring_back_the_old_snapshot(env) -> None:  # type: ignore[no-untyped-def]
    """The server reads an edited config between requests while a submit batch holds the
    admission snapshot; the batch then gives back a snapshot built on the old config. The
    next submit is decided on the new one: evals' max_gpus lowered from 8 to 4 refuses 8."""
    from cellsched.service import ledger_version

    assert service.submit(env, spec("a", gpus=8, hours=8), "alice", T0).granted
    path = env.cluster_path
    with env.ledger.write() as s:
        held = env.admission.take(s, env.cluster, T0)
        path.write_text(path.read_text().replace("max_gpus = 8", "max_gpus = 4"))
        assert env.refresh_cluster()
        env.admission.put(held, ledger_version(s))
    out = service.submit(env, spec("wide", "evals", gpus=8, hours=8, owner="carol"), "carol", T0)
    assert not out.granted and out.refusal is not None and out.refusal.reason == "over_max_gpus"


def test_a_team_taken_out_of_the_config_still_holds_its_gpus(env, cluster_file, ledger_url) -> None:  # type: ignore[no-untyped-def]
    """The daemon runs a live grant whatever the config now says of its team, so admission
    must still count its GPUs on the pool: taking team evals out of cluster.toml (or
    renaming it) while its 8-GPU grant holds a node gives nobody that node."""
    from cellsched.service import open_env

    held = service.submit(env, spec("held", team="evals", owner="carol", gpus=8, hours=8 * 12), "carol", T0)
    assert held.grant is not None and (held.grant.start, held.grant.end) == (T0, T0 + 12 * H)
    text = cluster_file.read_text()
    cut = text.index('[[teams]]\nname = "evals"')
    cluster_file.write_text(text[:cut] + text[text.index("[[teams]]", cut + 1):])
    later = open_env(cluster_file, ledger_url)
    try:
        assert later.cluster.team("evals") is None
        out = service.submit(later, spec("wide", gpus=16, hours=16 * 8), "alice", T0)
        assert out.grant is not None and out.grant.start == T0 + 12 * H, out  # not before evals' node is free
        assert out.expected_start == T0 + 12 * H and "not estimated" not in (out.expected_basis or ""), out
        narrow = service.submit(later, spec("narrow", gpus=8, hours=8 * 8), "alice", T0)
        assert narrow.grant is not None and narrow.grant.start == T0 and narrow.grant.nodes != held.grant.nodes
    finally:
        later.ledger.dispose()


@pytest.mark.parametrize("period", ["month", "none"])
def test_admission_reads_the_ledger_from_the_open_period_and_answers_as_from_all_of_it(
        env, cluster_file, ledger_url, period) -> None:  # type: ignore[no-untyped-def]
    """``load_schedule`` reads only grants ending after the open allowance period began (all
    of them with a period of ``none``): months of grants before it change nothing admission
    can ask (the team's charge of every period still open, the pool's free GPUs from now)."""
    from cellsched.core.admission import Schedule
    from cellsched.core.allowance import period_bounds
    from cellsched.ledger.snapshot import charged_from, grant_of
    from cellsched.service import load_schedule, open_env

    cluster_file.write_text(cluster_file.read_text().replace(
        "allowance_gpu_hours = 20000\n", f'allowance_gpu_hours = 200000\nperiod = "{period}"\n'))
    e = open_env(cluster_file, ledger_url)
    try:
        day, t = 24 * H, T0 - 70 * 24 * H  # from mid-September: grants ending in three earlier months
        while t < JAN + 10 * day:
            gpus = 8 if (t // H) % 3 else 16
            out = service.submit(e, spec(f"p{t}", team="pretraining", owner="dave", gpus=gpus, hours=gpus * 30),
                                 "dave", t)
            assert out.grant is not None
            t += 31 * H
        now = JAN + 5 * day + 7 * H
        with e.ledger.read() as s:
            got = load_schedule(s, e.cluster, now)
            rows = list(s.exec(select(GrantRow).order_by(col(GrantRow.id))))
        since = charged_from(got, now)
        assert since == {"interp": JAN, "evals": JAN, "pretraining": None if period == "none" else JAN}
        if period == "month":
            assert sum(r.end <= JAN for r in rows) > 40  # most of the ledger is left unread
        full = Schedule.empty(e.cluster)  # every grant, as before: the reference
        for r in rows:
            g = grant_of(r)
            full.teams[g.team].book.charge(g.start, g.end, g.width)
            if g.end > now:
                full.pools[g.pool][1].reserve(max(g.start, now), g.end, g.width, g.nodes)
        book, ref = got.teams["pretraining"].book, full.teams["pretraining"].book
        open_from = period_bounds(now, book.period)[0]
        assert {p: v for p, v in book.charged.items() if p >= open_from} == \
               {p: v for p, v in ref.charged.items() if p >= open_from}
        for k in range(0, 400):
            at = now + k * H
            assert got.pools["h100"][1].free_at(at) == full.pools["h100"][1].free_at(at), at
    finally:
        e.ledger.dispose()
