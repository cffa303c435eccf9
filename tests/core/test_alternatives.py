"""Refusals that always offer a way in (issue 14): every alternative is granted as it stands
(the changed request admitted against the same snapshot starts where the alternative says),
one is offered whenever any pool, node-rule width or GPU-hours figure would be granted
(a brute-force search on small clusters), each reason by hand; and what delayed a grant."""

from __future__ import annotations

from typing import Any

from admission_builders import DAY, H, JAN, T0, at, cluster, grant, req
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellsched.core.admission import REASONS, Grant, Refusal, Request, Schedule
from cellsched.core.alternatives import TAKE_SLACK_S, apply, explain


def readmitted(s: Schedule, r: Request, out: Refusal, now: int) -> None:
    """Every alternative of ``out``, its changes made to ``r``, is granted at its start; and
    still granted when submitted a moment later (``submit --take`` submits seconds after it
    planned), up to ``TAKE_SLACK_S``."""
    for alt in out.alternatives:
        got = s.admit(apply(r, alt.changes), now)
        assert isinstance(got, Grant), (r, alt, got)
        assert (got.pool, got.width, got.start, got.end) == (alt.pool, alt.width, alt.start, alt.end), (alt, got)
        assert alt.message and "\n" not in alt.message
        for later in (1, TAKE_SLACK_S):
            got = s.admit(apply(r, alt.changes), now + later, alternatives=False)
            assert isinstance(got, Grant), (r, alt, later, got)


def some_variant_granted(s: Schedule, r: Request, now: int) -> bool:
    """Brute force: any pool, any width its node rule allows, the same GPU-hours or a
    one-hour window, no deadline: is any of them granted?"""
    if r.team not in s.teams:
        return False
    for pool, cal in s.pools.values():
        for w in range(1, pool.gpus + 1):
            if not cal.admits(w):
                continue
            for gs in (r.gpu_seconds, w * H):
                v = Request(r.project, r.team, w, gs, pool=pool.name, not_before=r.not_before)
                if isinstance(s.admit(v, now, alternatives=False), Grant):
                    return True
    return False


# -- generative ---------------------------------------------------------------------------------

pools_st = st.lists(st.tuples(st.sampled_from([4, 8, 12, 16]), st.sampled_from([4, 8, None])),
                    min_size=1, max_size=2)


@st.composite
def worlds(draw: Any) -> tuple[Schedule, Request, int]:
    c = cluster()
    for i, (gpus, per) in enumerate(draw(pools_st)):
        c.pool(f"p{i}", gpus, gpu_type="H100" if i == 0 else "A100", per_node=per if per and per < gpus else None)
    c.team("a", hours=draw(st.sampled_from([40, 200, 2000, 20000])), max_gpus=draw(st.sampled_from([None, None, 4, 8])))
    c.team("other", hours=1e6)
    if draw(st.booleans()):
        c.policy(max_grant_hours=draw(st.sampled_from([12, 48])))
    c.policy(horizon_days=draw(st.sampled_from([10, 60])))
    s = c.schedule()
    now = T0 + draw(st.integers(0, 40)) * DAY - draw(st.integers(0, 30)) * H  # near a month's end too
    for _ in range(draw(st.integers(1, 8))):  # what others (and the team) already hold
        w = draw(st.sampled_from([1, 2, 4, 8, 8, 16]))
        pre = Request("x", draw(st.sampled_from(["a", "other", "other"])), w,
                      w * draw(st.integers(1, 120)) * H, not_before=now + draw(st.sampled_from([0, 0, 6, 24, 72])) * H)
        got = s.admit(pre, now, alternatives=False)
        if isinstance(got, Grant):
            s.commit(got)
    names = [p for p in s.pools] + ["nowhere"]
    where = draw(st.sampled_from([None] * 4 + names[:-1] + ["type:H100", names[-1], "type:TPU"]))
    width = draw(st.sampled_from([1, 2, 3, 4, 4, 8, 8, 12, 16, 20]))
    r = Request(
        "r", draw(st.sampled_from(["a"] * 9 + ["nobody"])), width,
        width * draw(st.integers(1, 60)) * H + draw(st.sampled_from([0, 0, 7])),
        pool=where if where is not None and not where.startswith("type:") else None,
        gpu_type=where[5:] if where is not None and where.startswith("type:") else None,
        not_before=None if draw(st.booleans()) else now + draw(st.integers(-5, 100)) * H,
        deadline=None if draw(st.booleans()) else now + draw(st.sampled_from([48, 24, 72, 100, 6, 400, -5])) * H,
    )
    return s, r, now


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_every_alternative_is_granted_and_one_is_offered_when_any_exists(world: tuple[Schedule, Request, int]) -> None:
    s, r, now = world
    out = s.admit(r, now)
    if isinstance(out, Grant):
        return
    assert out.reason in REASONS and out.message
    readmitted(s, r, out, now)
    if some_variant_granted(s, r, now):
        assert out.alternatives, (r, out)


# -- by hand, one reason at a time ------------------------------------------------------------------


def kinds(out: Grant | Refusal) -> dict[str, Any]:
    assert isinstance(out, Refusal), out
    return {a.kind: a for a in out.alternatives}


def test_wider_than_pool_offers_the_widest_that_fits_and_another_pool() -> None:
    s = cluster().pool("small", 8, gpu_type="A100").pool("big", 32, per_node=8).team("interp").schedule()
    r = req("p").gpus(16).hours(160).pool("small").build()
    out = s.admit(r, T0)
    assert out.reason == "wider_than_pool"  # type: ignore[union-attr]
    k = kinds(out)
    assert k["other_pool"].pool == "big" and dict(k["other_pool"].changes) == {"pool": "big"}
    assert k["narrower"].width == 8 and k["narrower"].end - k["narrower"].start == 20 * H
    readmitted(s, r, out, T0)  # type: ignore[arg-type]


def test_wider_than_pool_names_the_widest_grant_when_the_node_rule_leaves_gpus_out() -> None:
    """A pool of 20 GPUs on nodes of 8 takes at most 16 in one grant (whole nodes): the
    refusal says so, and its ``available`` is what a grant can have, not the pool's size."""
    s = cluster().pool("a100", 20, per_node=8).team("interp").schedule()
    out = s.admit(req("p").gpus(24).hours(240).build(), T0)
    assert isinstance(out, Refusal) and out.reason == "wider_than_pool" and (out.needed, out.available) == (24, 16)
    assert out.message == ("24 GPUs requested, pool a100 has only 20 (the widest grant is 16: one wider than a "
                           "node takes whole nodes).")
    assert kinds(out)["narrower"].width == 16
    even = cluster().pool("h100", 16, per_node=8).team("interp").schedule().admit(req("p").gpus(24).build(), T0)
    assert isinstance(even, Refusal) and even.message == "24 GPUs requested, pool h100 has only 16."


def test_over_max_gpus_offers_the_teams_width() -> None:
    s = cluster().pool("h100", 16, per_node=8).team("interp", max_gpus=6).schedule()
    r = req("p").gpus(8).hours(48).build()
    k = kinds(out := s.admit(r, T0))
    assert k["team_width"].width == 6 and "holds at most 6" in k["team_width"].message
    readmitted(s, r, out, T0)  # type: ignore[arg-type]


def test_longer_than_max_grant_offers_the_fewest_gpus_short_enough() -> None:
    s = cluster().pool("h100", 32, per_node=8).team("interp").policy(max_grant_hours=24).schedule()
    r = req("p").gpus(4).hours(4 * 48).build()  # 48 h on 4: 8 GPUs make it 24 h
    k = kinds(out := s.admit(r, T0))
    assert k["wider"].width == 8 and k["wider"].end - k["wider"].start == 24 * H
    r = req("p").gpus(4).hours(12 * 24).build()  # 12 GPUs would do, but the node rule: 16
    k = kinds(out := s.admit(r, T0))
    assert k["wider"].width == 16
    # The sentence's hint follows the node rule too (it said "ask for at least 12 GPUs").
    assert out.message.endswith("the longest grant is 24.0 h (ask for at least 16 GPUs)."), out.message  # type: ignore[union-attr]
    readmitted(s, r, out, T0)  # type: ignore[arg-type]
    # 40 GPUs would do, but the pool has 32: no width makes it short enough (it said "ask
    # for at least 40 GPUs"); the widest grant's window is named instead.
    out = s.admit(req("p").gpus(4).hours(40 * 24).build(), T0)
    assert isinstance(out, Refusal) and out.reason == "longer_than_max_grant"
    assert out.message.endswith("the longest grant is 24.0 h (even the widest grant, 32 GPUs, would take "
                                "30.0 h: ask for fewer GPU-hours)."), out.message


def test_deadline_too_close_is_not_called_passed_and_offers_wider_or_a_later_deadline() -> None:
    s = cluster().pool("h100", 16, per_node=8).team("interp").schedule()
    r = req("p").gpus(2).hours(8).deadline(T0 + 3 * H).build()  # 4 h on 2 GPUs, 3 h of room
    out = s.admit(r, T0)
    assert isinstance(out, Refusal) and out.reason == "deadline_too_close"
    k = kinds(out)
    assert k["wider"].width == 3 and k["wider"].end <= T0 + 3 * H
    # The window starts now and moves with the clock: the deadline a minute past its end.
    assert k["later_start"].changes == (("deadline", T0 + 4 * H + 60),)
    readmitted(s, r, out, T0)
    passed = s.admit(req("p").deadline(T0 - 1).build(), T0)
    assert isinstance(passed, Refusal) and passed.reason == "deadline_passed" and "has passed" in passed.message
    assert kinds(passed)["later_start"].start == T0


def test_no_capacity_offers_a_later_deadline_a_narrower_width_and_another_pool() -> None:
    s = cluster().pool("h100", 16, per_node=8).pool("a100", 16, per_node=8).team("interp").team("other").schedule()
    s.commit(grant("busy", "other", "h100", 8, T0, T0 + 2 * DAY))
    s.commit(grant("half", "other", "h100", 4, T0, T0 + 2 * DAY))
    r = req("p").gpus(8).hours(64).pool("h100").deadline(T0 + DAY).build()
    out = s.admit(r, T0)
    k = kinds(out)
    assert out.reason == "no_capacity_in_window"  # type: ignore[union-attr]
    assert k["later_start"].start == T0 + 2 * DAY
    assert k["narrower"].width == 4 and k["narrower"].end <= T0 + DAY
    assert k["other_pool"].pool == "a100" and k["other_pool"].start == T0
    readmitted(s, r, out, T0)  # type: ignore[arg-type]


def test_narrower_is_the_widest_granted_when_feasibility_is_not_monotone_in_width() -> None:
    """8 GPUs for 24 GPU-hours by T0 + 10 h, with 6 GPUs free for the first 4.5 h and 2
    after: 6 GPUs (4 h) fit the window, 3 to 5 (8 h to 4.8 h) and 7 do not. A bisection over
    3..7 tries 5, then 3, and offers no narrower width at all; 6 is the one."""
    s = cluster().pool("h100", 8).team("interp").team("other").schedule()
    s.commit(grant("a", "other", "h100", 2, T0, T0 + 4 * H + 1800))
    s.commit(grant("b", "other", "h100", 6, T0 + 4 * H + 1800, T0 + 30 * H))
    r = req("p").gpus(8).hours(24).deadline(T0 + 10 * H).build()
    out = s.admit(r, T0)
    assert isinstance(out, Refusal) and out.reason == "no_capacity_in_window"
    k = kinds(out)
    assert "narrower" in k and k["narrower"].width == 6 and k["narrower"].end == T0 + 4 * H, out.alternatives
    readmitted(s, r, out, T0)


def test_alternatives_against_a_deadline_are_granted_when_taken_a_moment_later() -> None:
    """On an idle pool each alternative's window starts now. Offered exactly against the
    clock (a later deadline where the window ends, 4 GPUs filling 2 h of room, 6 GPU-hours
    ending at the deadline), each was refused deadline_too_close a second later, which is
    when ``submit --take`` submits it."""
    s = cluster().pool("h100", 16, per_node=8).team("interp").schedule()
    for r in (req("p").gpus(2).hours(8).deadline(T0 + 3 * H).build(),  # 4 h on 2 GPUs, 3 h of room
              req("p").gpus(2).hours(8).deadline(T0 + 2 * H).build(),  # 4 GPUs would fill the 2 h exactly
              req("p").gpus(2).hours(8).deadline(T0 - H).build()):  # deadline passed
        out = s.admit(r, T0)
        assert isinstance(out, Refusal) and out.alternatives, out
        readmitted(s, r, out, T0)
    k = kinds(s.admit(req("p").gpus(2).hours(8).deadline(T0 + 2 * H).build(), T0))
    assert k["wider"].width == 5 and k["smaller"].gpu_seconds == 3 * H, k
    assert k["later_start"].message == "start 2026-12-01 00:00 UTC (move the deadline to 2026-12-01 04:01 UTC)"


def test_last_resort_offers_what_the_allowance_takes_before_a_one_hour_window() -> None:
    """10 GPU-hours a month, windows of at most 12 h, a 3-day horizon (no window reaches
    January): 13 GPU-hours on 1 GPU is too long, 2 GPUs overdraw December. The last sweep
    offered 1 GPU-hour on 1 GPU (and, asked 12 GPUs, 8 GPU-hours on 8) although 10 GPU-hours
    would be granted at those widths."""
    s = cluster().pool("h100", 8).team("interp", hours=10).policy(max_grant_hours=12, horizon_days=3).schedule()
    for width, offered in ((1, 1), (12, 8)):
        r = req("p").gpus(width).hours(13).build()
        out = s.admit(r, T0)
        assert isinstance(out, Refusal), out
        assert [(a.kind, a.width, a.gpu_seconds) for a in out.alternatives] == [("smaller", offered, 10 * H)], out
        readmitted(s, r, out, T0)


def test_not_whole_nodes_and_unknown_pool() -> None:
    s = cluster().pool("h100", 32, per_node=8).team("interp").schedule()
    r = req("p").gpus(12).hours(48).build()
    out = s.admit(r, T0)
    assert sorted(a.width for a in out.alternatives) == [8, 16]  # type: ignore[union-attr]
    readmitted(s, r, out, T0)  # type: ignore[arg-type]
    r = req("p").pool("h10").build()
    out = s.admit(r, T0)
    assert out.reason == "unknown_pool"  # type: ignore[union-attr]
    assert kinds(out)["other_pool"].changes == (("pool", "h100"),)
    readmitted(s, r, out, T0)  # type: ignore[arg-type]


def test_unknown_team_offers_nothing() -> None:
    out = cluster().pool("h100", 8).team("interp").schedule().admit(req("p", "nobody").build(), T0)
    assert isinstance(out, Refusal) and out.reason == "unknown_team" and out.alternatives == ()


# -- windows over allowance periods: the issue's two specs -----------------------------------------


def issue_cluster() -> Schedule:
    return cluster().pool("h100", 16, per_node=8).team("interp", hours=1500).schedule()


def test_2000_gpu_hours_on_1500_a_month_is_granted_late_and_says_why() -> None:
    """8 GPUs for 2,000 GPU-hours (250 h) on Dec 1: December can take 1,500 of them, so the
    window starts when 500 fall in January: Dec 24 04:30. The grant says so, and what would
    start now (1,500 GPU-hours)."""
    s = issue_cluster()
    r = req("p").gpus(8).hours(2000).build()
    g = s.admit(r, T0)
    assert isinstance(g, Grant) and g.start == at(2026, 12, 24, 4, 30) and g.end == at(2027, 1, 3, 14, 30)
    d = explain(s, r, g, T0)
    assert d is not None and d.reason == "allowance" and d.free_from == T0
    assert d.message.startswith("earliest window your allowance allows: 2026-12-24 04:30 UTC (team interp has "
                                "1,500 of its 1,500 GPU-hours left in December 2026")
    assert [a.kind for a in d.sooner] == ["smaller"] and d.sooner[0].start == T0
    assert d.sooner[0].gpu_seconds == 1500 * H
    assert explain(s, req("q").gpus(8).hours(100).build(), s.admit(req("q").gpus(8).hours(100).build(), T0), T0) is None  # type: ignore[arg-type]


def test_3500_gpu_hours_on_1500_a_month_is_refused_with_answers_that_help() -> None:
    """8 GPUs for 3,500 GPU-hours is 18 days: two months at most, 3,000 GPU-hours: refused
    outright. Offered: 2 GPUs for 73 days from now (1,488 in December, 1,488 in January, 524
    in February), or 1,500 GPU-hours on 8 GPUs now."""
    s = issue_cluster()
    r = req("p").gpus(8).hours(3500).build()
    out = s.admit(r, T0)
    assert isinstance(out, Refusal) and out.reason == "over_allowance"
    k = kinds(out)
    assert k["narrower"].width == 2 and k["narrower"].start == T0 and k["narrower"].end > JAN + 31 * DAY
    assert k["smaller"].gpu_seconds == 1500 * H and k["smaller"].start == T0
    readmitted(s, r, out, T0)


def test_capacity_and_max_gpus_delays_say_so() -> None:
    s = cluster().pool("h100", 16, per_node=8).team("interp", max_gpus=8).team("other").schedule()
    s.commit(grant("theirs", "other", "h100", 16, T0, T0 + 5 * H))
    r = req("p").gpus(8).hours(8).build()
    g = s.admit(r, T0)
    d = explain(s, r, g, T0)  # type: ignore[arg-type]
    assert d is not None and d.reason == "capacity"
    assert d.message == "earliest window with 8 GPUs free together on one node in pool h100: 2026-12-01 05:00 UTC"
    s2 = cluster().pool("h100", 16, per_node=8).team("interp", max_gpus=8).schedule()
    s2.commit(grant("mine", "interp", "h100", 6, T0, T0 + 3 * H))
    r2 = req("p").gpus(4).hours(4).build()
    g2 = s2.admit(r2, T0)
    d2 = explain(s2, r2, g2, T0)  # type: ignore[arg-type]
    assert d2 is not None and d2.reason == "max_gpus" and "max_gpus (8)" in d2.message
