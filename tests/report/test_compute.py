"""Report figures against a ledger built by hand, with the answers worked out on paper."""

from __future__ import annotations

import pytest
from report_builders import DAY, T0, H, LedgerBuilder

from cellsched import service
from cellsched.report import compute, snapshot
from cellsched.report.snapshot import EventFact, GrantFact, RunFact, Snapshot
from cellsched.spec.cluster import ClusterConfig

P0, P1, NOW = T0, T0 + 7 * DAY, T0 + 10 * DAY


def report(env, team=None, since=P0, until=P1, now=NOW):  # type: ignore[no-untyped-def]
    snap = snapshot.load(env.ledger, env.cluster, since, until)
    return compute.build(snap, env.cluster, since, until, now, team=team)


# Worked out from the fixture ``known`` (GPU-hours; granted = the window as it stands, after a
# release; granted + refunded = the window as booked):
#   a interp 4 GPUs [-10h, +10h): in P 40 granted/held; run [-9h50m, +6h) -> 24 used, 16 idle
#   b evals 2 GPUs [+24h, +48h) cut at +30h: 12 granted/held, 36 refunded, run 5h -> 10 used, 2 idle
#   c pretraining 8 GPUs [+6d, +9d): in P 8 x 24h = 192 granted/held, 0 used, 192 idle, breach 8
#   d interp 2 GPUs [+4d, +5d) cancelled before its start: 0 granted, 48 refunded, 0 held
#   e (October) and f (booked after P for Nov 21) are outside P.
KNOWN = {
    "capacity_gpu_hours": 16 * 168,
    "granted_gpu_hours": 40 + 12 + 192,
    "refunded_gpu_hours": 36 + 48,
    "reserved_gpu_hours": 40 + 12 + 192,
    "held_gpu_hours": 40 + 12 + 192,
    "committed_gpu_hours": 0,
    "used_gpu_hours": 24 + 10,
    "idle_reserved_gpu_hours": 16 + 2 + 192,
    "unreserved_gpu_hours": 16 * 168 - 244,
}


def test_headline_figures(known) -> None:  # type: ignore[no-untyped-def]
    r = report(known)
    for key, want in KNOWN.items():
        assert r[key] == pytest.approx(want), key
    assert r["utilisation"]["used_over_capacity"] == pytest.approx(34 / 2688)
    assert r["utilisation"]["used_over_held"] == pytest.approx(34 / 244)
    assert r["guarantee_breaches"]["count"] == 1
    assert r["guarantee_breaches"]["gpu_hours"] == pytest.approx(8)
    assert r["admissions"] == {"granted": 3, "refused": 3, "cancelled": 1, "replaced": 0}
    assert r["refusals"] == {"count": 3, "by_reason": {"no_capacity_in_window": 1, "over_allowance": 2}}
    # Waits of grants submitted in P: b measured 4 h; c by its window, 4 days; d never started.
    assert r["wait"]["count"] == 2
    assert (r["wait"]["p50_s"], r["wait"]["p95_s"]) == (4 * H, 4 * DAY)
    assert r["wait"]["sources"] == {"measured": 1, "granted_start": 1}
    assert r["empty"] is False


def test_teams(known) -> None:  # type: ignore[no-untyped-def]
    teams = {t["team"]: t for t in report(known)["teams"]}
    assert [t for t in teams] == ["interp", "evals", "pretraining"]
    want = {  # granted, used, refunded, remaining (November, booked by the period's end)
        "interp": (40, 24, 48, 1500 - 40),  # a's November half; d booked and refunded
        "evals": (12, 10, 36, 100 - 12),
        "pretraining": (192, 0, 0, 20000 - 576 + 8),  # c all in November; its 8 GPU-h breach refunded
    }
    for name, (granted, used, refunded, remaining) in want.items():
        t = teams[name]
        got = (t["granted_gpu_hours"], t["used_gpu_hours"], t["refunded_gpu_hours"], t["remaining_gpu_hours"])
        assert got == pytest.approx((granted, used, refunded, remaining)), name
    assert teams["interp"]["share_of_cluster"] == pytest.approx(40 / 244)
    assert teams["pretraining"]["share_of_cluster"] == pytest.approx(192 / 244)
    assert teams["evals"]["share_of_allowance"] == pytest.approx(100 / 21600)
    # with a period that reaches now, remaining is what `cellsched budget` says now
    # (f, booked after P for later in November, counts now but not at P's end)
    now_teams = {t["team"]: t for t in report(known, until=NOW + DAY)["teams"]}
    assert now_teams["interp"]["remaining_gpu_hours"] == pytest.approx(1500 - 40 - 24)
    for name in want:
        b = service.budget(known, name, NOW)
        assert now_teams[name]["remaining_gpu_hours"] == pytest.approx(b.remaining_gs / 3600), name
    # interp booked and refunded d within P: no net booking, no run-out
    assert teams["interp"]["forecast"]["rate_gpu_hours_per_day"] == 0
    assert teams["interp"]["forecast"]["runs_out_at"] is None
    bd = teams["evals"]["burndown"]
    assert bd["remaining_gpu_hours"][0] == 100 and bd["remaining_gpu_hours"][-1] == pytest.approx(88)
    assert min(bd["remaining_gpu_hours"]) == pytest.approx(52)  # booked 48, before the early release


def test_team_filter(known) -> None:  # type: ignore[no-untyped-def]
    r = report(known, team="evals")
    assert [t["team"] for t in r["teams"]] == ["evals"]
    assert (r["granted_gpu_hours"], r["held_gpu_hours"], r["used_gpu_hours"]) == pytest.approx((12, 12, 10))
    assert r["capacity_gpu_hours"] == 2688
    assert r["unreserved_gpu_hours"] == pytest.approx(2688 - 244)  # cluster-wide
    assert r["refusals"]["by_reason"] == {"over_allowance": 1}
    assert [p["project"].split("@")[0] for p in r["projects"]] == ["b"]


def test_pool_timeline_and_projects(known) -> None:  # type: ignore[no-untyped-def]
    r = report(known)
    (pool,) = r["pools"]
    tl = pool["timeline"]
    assert tl["bucket_s"] == H and len(tl["starts"]) == 168
    reserved = sum(sum(v) for v in tl["reserved_gpus"].values()) * tl["bucket_s"] / H
    used = sum(sum(x or 0 for x in v) for v in tl["used_gpus"].values()) * tl["bucket_s"] / H
    assert reserved == pytest.approx(244) and used == pytest.approx(34)
    assert tl["reserved_gpus"]["pretraining"][-1] == 8 and tl["reserved_gpus"]["interp"][0] == 4
    assert pool["utilisation"] == pytest.approx(34 / 2688)
    projects = {p["project"].split("@")[0]: p for p in r["projects"]}
    assert sorted(projects) == ["a", "b", "c", "d"]
    assert projects["a"]["start_delay_s"] == 600  # promised vs actual start
    assert projects["a"]["granted_gpu_hours"] == 80  # whole window, not just the part in P
    assert projects["b"]["used_over_granted"] == pytest.approx(10 / 12)  # of the window it kept
    assert projects["b"]["refunded_gpu_hours"] == 36
    # the calendar ahead of now (T0 + 10 d) holds f only
    assert [g["project"].split("@")[0] for g in pool["calendar"]["grants"]] == ["f"]


def test_period_running_past_now(known) -> None:  # type: ignore[no-untyped-def]
    """With now inside P, held and used stop at now and the rest is committed."""
    r = report(known, now=T0 + 7 * DAY - 12 * H)
    assert r["held_gpu_hours"] == pytest.approx(40 + 12 + 8 * 12)
    assert r["committed_gpu_hours"] == pytest.approx(8 * 12)
    assert r["elapsed_capacity_gpu_hours"] == 16 * (168 - 12)
    assert r["utilisation"]["used_over_capacity"] == pytest.approx(34 / (16 * 156))


def test_empty_period(env) -> None:  # type: ignore[no-untyped-def]
    r = report(env)
    assert r["empty"] is True and "nothing in this period" in r["message"]
    assert r["capacity_gpu_hours"] == 2688 and r["used_gpu_hours"] == 0
    assert r["utilisation"]["used_over_held"] is None
    assert r["wait"]["p50_s"] is None


def test_running_attempt_counts_until_now(env) -> None:  # type: ignore[no-untyped-def]
    b = LedgerBuilder(env.ledger)
    b.grant("g", "interp", 4, T0, T0 + 2 * DAY, created=T0 - H, started_at=T0)
    b.run("g", 4, T0, None)  # still running at now = T0 + 1 d
    r = report(env, since=T0, until=T0 + 2 * DAY, now=T0 + DAY)
    assert r["used_gpu_hours"] == pytest.approx(96)
    assert r["held_gpu_hours"] == pytest.approx(96) and r["committed_gpu_hours"] == pytest.approx(96)
    assert r["idle_reserved_gpu_hours"] == 0


def test_service_submit_and_cancel(env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Grants written by the service layer itself, with pinned times."""
    spec = tmp_path / "p.toml"
    spec.write_text('name = "p"\nteam = "interp"\nowner = "alice"\nproblem = "x"\n'
                    '[budget]\ngpu_hours = 96\ngpus = 8\npool = "h100"\n'
                    '[[jobs]]\nname = "j"\nrun = "true"\n')
    out = service.submit(env, spec, "alice", T0 + H)
    assert out.granted
    service.cancel(env, "p", "alice", T0 + 5 * H)  # 4 of 12 hours held: 32 held, 64 refunded
    r = report(env, since=T0, until=T0 + DAY, now=T0 + DAY)
    assert (r["granted_gpu_hours"], r["refunded_gpu_hours"], r["held_gpu_hours"]) == pytest.approx((32, 64, 32))
    assert r["admissions"]["granted"] == 1 and r["admissions"]["cancelled"] == 1
    (interp,) = [t for t in r["teams"] if t["team"] == "interp"]
    assert interp["remaining_gpu_hours"] == pytest.approx(service.budget(env, "interp", T0 + DAY).remaining_gs / 3600)


# -- pure tables, no database ----------------------------------------------------------

CLUSTER = ClusterConfig.model_validate({
    "pools": [{"name": "p", "gpu_type": "X", "gpus": 10, "gpus_per_node": 10}],
    "teams": [{"name": "t", "allowance_gpu_hours": 300, "period": "month"},
              {"name": "u", "allowance_gpu_hours": 100, "period": "none"}],
})


def g(id: int, team: str, width: int, start: int, end: int, created: int, **kw) -> GrantFact:  # type: ignore[no-untyped-def]
    return GrantFact(id=id, project_id=f"g{id}@x", team=team, pool="p", width=width, start=start, end=end,
                     promised_start=start, promised_end=end, charged_gs=width * (end - start), refunded_gs=0,
                     state="granted", created_at=created, **kw)


@pytest.mark.parametrize(("grants", "runs_out"), [
    # 100 GPU-h booked in the first 5 days of the period: 200 left at 20/day -> 10 more days
    ([g(1, "t", 10, T0 + 5 * DAY, T0 + 5 * DAY + 10 * H, T0 + 2 * DAY)], T0 + 15 * DAY),
    # nothing booked: never runs out
    ([], None),
    # booked everything: already out at the reference time
    ([g(1, "t", 10, T0 + 6 * DAY, T0 + 6 * DAY + 30 * H, T0 + DAY)], T0 + 5 * DAY),
])
def test_forecast(grants, runs_out) -> None:  # type: ignore[no-untyped-def]
    r = compute.build(Snapshot(tuple(grants), (), ()), CLUSTER, T0, T0 + 5 * DAY, T0 + 5 * DAY, team="t")
    (t,) = r["teams"]
    assert t["forecast"]["runs_out_at"] == runs_out


def test_run_prorated_across_the_boundary() -> None:
    grant = g(1, "u", 2, T0 - DAY, T0 + DAY, T0 - 2 * DAY)
    run = RunFact(1, 2, T0 - 12 * H, T0 + 12 * H, 2 * 24 * H)
    r = compute.build(Snapshot((grant,), (run,), ()), CLUSTER, T0, T0 + DAY, T0 + 2 * DAY)
    assert r["used_gpu_hours"] == 24 and r["held_gpu_hours"] == 48 and r["idle_reserved_gpu_hours"] == 24


def test_events_outside_period_and_unknown_reason() -> None:
    evs = (EventFact(T0 - 1, "refused", "a@x", "t", "over_allowance"), EventFact(T0, "refused", "b@x", "t", None))
    r = compute.build(Snapshot((), (), evs), CLUSTER, T0, T0 + DAY, T0 + DAY)
    assert r["refusals"]["by_reason"] == {"unknown": 1}
    assert r["empty"] is False


@pytest.mark.parametrize(("values", "p50", "p95"), [([], None, None), ([5], 5, 5), ([1, 2, 3, 4], 2, 4),
                                                    (list(range(1, 101)), 50, 95)])
def test_percentile(values, p50, p95) -> None:  # type: ignore[no-untyped-def]
    assert (compute.percentile(values, 50), compute.percentile(values, 95)) == (p50, p95)


# -- the classes of bug the identities caught (docs/report.md, "Identities") ---------------

def test_a_window_after_the_period_commits_nothing_in_it() -> None:
    """It used to count a negative "committed": the window was clipped to the period's end
    before its own start."""
    later = g(1, "t", 4, T0 + 2 * DAY, T0 + 3 * DAY, T0 + H)
    r = compute.build(Snapshot((later,), (), ()), CLUSTER, T0, T0 + DAY, T0 + 2 * H)
    assert (r["committed_gpu_hours"], r["granted_gpu_hours"], r["held_gpu_hours"]) == (0, 0, 0)
    assert r["projects"][0]["grant"] == 1  # it was submitted in the period: still listed


def test_a_window_released_early_and_granted_again_is_not_counted_twice() -> None:
    """The pool's 10 GPUs: g1 [0, 4h) released at 1h (refund 3h x 10), g2 holds [2h, 4h).
    Granted over [2h, 3h) is g2's 10 GPU-h, not 20 (which is more than capacity)."""
    first = g(1, "t", 10, T0, T0 + H, T0 - H)._replace(refunded_gs=10 * 3 * H, ended_at=T0 + H, state="completed")
    second = g(2, "t", 10, T0 + 2 * H, T0 + 4 * H, T0 + H)
    r = compute.build(Snapshot((first, second), (), ()), CLUSTER, T0 + 2 * H, T0 + 3 * H, T0 + 5 * H)
    assert r["capacity_gpu_hours"] == 10 and r["granted_gpu_hours"] == 10 and r["held_gpu_hours"] == 10
    assert r["refunded_gpu_hours"] == 10  # g1's cut-off part inside the period, given back


def test_breaches_and_use_count_only_inside_the_period_and_the_window() -> None:
    """A breach of 5 h x 2 GPUs, of which 1 h falls in a 1-hour period; a job that ran 10 min
    past its window's end (killed late) uses nothing beyond it."""
    grant = g(1, "t", 2, T0, T0 + 6 * H, T0 - H, breach_gs=2 * 5 * H)
    run = RunFact(1, 2, T0 + 5 * H, T0 + 6 * H + 600, 2 * (H + 600))
    snap = Snapshot((grant,), (run,), (), {1: [(T0, T0 + 5 * H, 2)]})
    r = compute.build(snap, CLUSTER, T0 + 4 * H, T0 + 5 * H, T0 + DAY)
    assert r["guarantee_breaches"]["gpu_hours"] == 2 and r["breach_gpu_hours"] == 2
    assert r["guarantee_breaches"]["grants"][0]["grant_breach_gpu_hours"] == 10
    r = compute.build(snap, CLUSTER, T0 + 5 * H, T0 + DAY, T0 + DAY)
    assert r["guarantee_breaches"]["count"] == 0
    assert r["used_gpu_hours"] == 2 and r["held_gpu_hours"] == 2 and r["idle_reserved_gpu_hours"] == 0


def test_started_early_is_its_own_figure_not_a_negative_delay() -> None:
    moved = g(1, "t", 2, T0, T0 + H, T0 - DAY, started_at=T0)._replace(promised_start=T0 + H, promised_end=T0 + 2 * H)
    (p,) = compute.build(Snapshot((moved,), (), ()), CLUSTER, T0, T0 + DAY, T0 + DAY)["projects"]
    assert (p["start_delay_s"], p["started_early_s"]) == (0, H)


@pytest.mark.parametrize(("gpu_h", "text", "fixed"), [
    (0, "0", "0.0"), (None, "-", "-"), (1 / 3600, "0.00028", "0.00028"), (10 / 3600, "0.0028", "0.0028"),
    (0.05, "0.05", "0.05"), (0.0949, "0.095", "0.095"), (0.096, "0.1", "0.1"), (0.14, "0.1", "0.1"),
    (12, "12", "12.0"), (1234.56, "1,234.6", "1,234.6"), (2688, "2,688", "2,688.0"),
])
def test_gpu_hours_text_never_reads_zero_for_a_figure_that_is_not(gpu_h, text, fixed) -> None:  # type: ignore[no-untyped-def]
    from cellsched.report.terminal import gpu_hours

    assert (gpu_hours(gpu_h), gpu_hours(gpu_h, fixed=True)) == (text, fixed)


def test_small_breaches_and_refunds_show_in_terminal_and_html(capsys) -> None:  # type: ignore[no-untyped-def]
    """A 10 GPU-second breach and a 36 GPU-second refund are not "0 GPU-h" anywhere."""
    from cellsched.report import render_html, terminal

    grant = g(1, "t", 2, T0, T0 + H, T0 - H, breach_gs=10)._replace(refunded_gs=36, state="completed")
    grant = grant._replace(end=T0 + H - 18)
    r = compute.build(Snapshot((grant,), (), (), {1: [(T0, T0 + 5, 2)]}), CLUSTER, T0, T0 + DAY, T0 + DAY)
    assert r["breach_gpu_hours"] == 10 / H and r["refunded_gpu_hours"] == 36 / H
    rows = {key: text for key, _label, text in terminal.headline_rows(r)}
    assert rows["refunded_gpu_hours"] == "0.01 GPU-h"
    assert rows["guarantee_breaches.count"] == "1 (0.0028 GPU-h)"
    terminal.print_report(r)
    out = capsys.readouterr().out
    assert "0.01" in out and "0.0028" in out
    page = render_html.report_page(r, charts=[])
    assert 'data-key="guarantee_breaches.gpu_hours"' in page and ">0.0028<" in page and ">0.01<" in page
