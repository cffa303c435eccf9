"""Admission decisions as a table of cases: a cluster, what is already granted, one request,
``now``, and the decision expected (window or reason)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest

from cellsched.core.admission import REASONS, Grant, Refusal, Request, Schedule
from admission_builders import DAY, H, JAN, T0, at, cluster, decide, grant, req


@dataclass(frozen=True)
class Granted:
    start: int
    end: int
    pool: str = "h100"


@dataclass(frozen=True)
class Refused:
    reason: str
    fields: tuple[tuple[str, Any], ...] = ()


def base() -> Schedule:
    """16 H100s; interp: 100 GPU-hours a month, at most 8 GPUs at once; other: unlimited."""
    return (cluster().pool("h100", 16)
            .team("interp", hours=100, max_gpus=8).team("other").schedule())


def busy(*grants: tuple[str, int, int, int]) -> Callable[[], Schedule]:
    """``base()`` with team ``other`` holding (pool, width, start, end) windows."""
    def make() -> Schedule:
        s = base()
        for i, (pool, w, a, b) in enumerate(grants):
            s.commit(grant(f"busy{i}", "other", pool, w, a, b))
        return s
    return make


def book_used(gs: int, team: str = "interp", start: int = T0) -> Callable[[Schedule], None]:
    """Charge ``gs`` GPU-seconds to ``team`` on one GPU from ``start`` (in another pool-less way:
    a real grant of the pool, so the calendar and the book agree)."""
    def apply(s: Schedule) -> None:
        s.commit(grant("spent", team, "h100", 1, start, start + gs))
    return apply


CASES: list[tuple[str, Callable[[], Schedule], Request, int, Granted | Refused]] = [
    ("fits now",
     base, req("p").gpus(8).hours(16).build(), T0, Granted(T0, T0 + 2 * H)),
    ("fits later: 12 of 16 busy for 10 h",
     busy(("h100", 12, T0, T0 + 10 * H)), req("p").gpus(8).hours(16).build(), T0,
     Granted(T0 + 10 * H, T0 + 12 * H)),
    ("fits in a gap between two busy windows",
     busy(("h100", 12, T0, T0 + 2 * H), ("h100", 12, T0 + 5 * H, T0 + 9 * H)),
     req("p").gpus(8).hours(24).build(), T0, Granted(T0 + 2 * H, T0 + 5 * H)),
    ("a gap one second too short is skipped",
     busy(("h100", 12, T0, T0 + 2 * H), ("h100", 12, T0 + 5 * H - 1, T0 + 9 * H)),
     req("p").gpus(8).hours(24).build(), T0, Granted(T0 + 9 * H, T0 + 12 * H)),
    ("ends exactly at the deadline",
     busy(("h100", 12, T0, T0 + 10 * H)), req("p").gpus(8).hours(16).deadline(T0 + 12 * H).build(), T0,
     Granted(T0 + 10 * H, T0 + 12 * H)),
    ("one second past the deadline",
     busy(("h100", 12, T0, T0 + 10 * H)), req("p").gpus(8).hours(16).deadline(T0 + 12 * H - 1).build(), T0,
     Refused("no_capacity_in_window", (("earliest_start", T0 + 10 * H), ("needed", 8), ("available", 4)))),
    ("the whole pool",
     base, req("p", "other").gpus(16).hours(16).build(), T0, Granted(T0, T0 + H)),
    ("one GPU too wide",
     base, req("p", "other").gpus(17).hours(17).build(), T0,
     Refused("wider_than_pool", (("needed", 17), ("available", 16)))),
    ("max_gpus: one over",
     base, req("p").gpus(9).hours(9).build(), T0, Refused("over_max_gpus", (("needed", 9), ("available", 8)))),
    ("max_gpus at every instant: the team's own 6 GPUs push 4 more back",
     lambda: _with(base(), grant("mine", "interp", "h100", 6, T0, T0 + 4 * H)),
     req("p").gpus(4).hours(4).build(), T0, Granted(T0 + 4 * H, T0 + 5 * H)),
    ("max_gpus: 2 more fit beside the team's 6",
     lambda: _with(base(), grant("mine", "interp", "h100", 6, T0, T0 + 4 * H)),
     req("p").gpus(2).hours(2).build(), T0, Granted(T0, T0 + H)),
    ("max_gpus does not bind another team",
     lambda: _with(base(), grant("mine", "interp", "h100", 6, T0, T0 + 4 * H)),
     req("p", "other").gpus(10).hours(10).build(), T0, Granted(T0, T0 + H)),
    ("unknown pool",
     base, req("p").pool("a100").build(), T0, Refused("unknown_pool")),
    ("unknown gpu_type",
     base, req("p").gpu_type("B200").build(), T0, Refused("unknown_pool")),
    ("unknown team",
     base, req("p", "nobody").build(), T0, Refused("unknown_team")),
    ("deadline already passed",
     base, req("p").deadline(T0 - 1).build(), T0, Refused("deadline_passed")),
    ("deadline too close for the window even on an empty pool",
     base, req("p").gpus(2).hours(4).deadline(T0 + 2 * H - 1).build(), T0,
     Refused("deadline_too_close", (("needed", 2 * H), ("available", 2 * H - 1)))),
    ("not_before in the future",
     base, req("p").not_before(T0 + DAY).build(), T0, Granted(T0 + DAY, T0 + DAY + H)),
    ("not_before in the past means now",
     base, req("p").not_before(T0 - DAY).build(), T0, Granted(T0, T0 + H)),
    ("GPU-seconds not divisible by width: the window rounds up",
     base, req("p").gpus(3).gpu_seconds(10).build(), T0, Granted(T0, T0 + 4)),
]


def _with(s: Schedule, *grants: Grant) -> Schedule:
    for g in grants:
        s.commit(g)
    return s


@pytest.mark.parametrize(("name", "make", "request_", "now", "want"), CASES, ids=[c[0] for c in CASES])
def test_decision(name: str, make: Callable[[], Schedule], request_: Request, now: int,
                  want: Granted | Refused) -> None:
    out = make().admit(request_, now)
    if isinstance(want, Granted):
        assert isinstance(out, Grant), out
        assert (out.pool, out.start, out.end, out.width) == (want.pool, want.start, want.end, request_.width)
    else:
        assert isinstance(out, Refusal), out
        assert out.reason == want.reason, out.message
        assert out.reason in REASONS
        assert out.message and out.message.endswith((".", ")")), out.message
        for key, value in want.fields:
            assert getattr(out, key) == value, (key, out)


# -- allowance --------------------------------------------------------------------------


def test_allowance_exact_fits_and_one_gpu_second_more_is_refused() -> None:
    """period = none: 100 GPU-hours in all; 40 spent; 60 h fit, 60 h + 1 s do not."""
    c = cluster().pool("h100", 16).team("interp", hours=100, period="none")
    s = c.schedule()
    s.commit(grant("spent", "interp", "h100", 4, T0, T0 + 10 * H))
    assert isinstance(s.admit(req("p").gpus(1).gpu_seconds(60 * H).build(), T0), Grant)
    out = s.admit(req("p").gpus(1).gpu_seconds(60 * H + 1).build(), T0)
    assert isinstance(out, Refusal)
    assert out.reason == "over_allowance"
    assert (out.needed, out.available) == (60 * H + 1, 60 * H)
    smaller = [a for a in out.alternatives if a.kind == "smaller"]
    assert smaller and smaller[0].gpu_seconds == 60 * H


def test_more_than_every_period_it_could_touch_is_refused_outright() -> None:
    """A 25 h window touches at most two months: 200 GPU-hours + 8 GPU-seconds cannot fit
    100 a month however it is placed; 100 h + 8 s can, straddling the new year."""
    s = cluster().pool("h100", 16).team("interp", hours=100).schedule()
    out = s.admit(req("p").gpus(8).gpu_seconds(200 * H + 8).build(), T0)
    assert isinstance(out, Refusal) and out.reason == "over_allowance"
    assert "whole allowance" in out.message
    assert out.needed == 200 * H + 8 and out.available == 100 * H
    over_one = s.admit(req("p").gpus(8).gpu_seconds(100 * H + 8).build(), T0)
    assert isinstance(over_one, Grant) and over_one.start < JAN < over_one.end
    assert s.admit(req("p").gpus(8).gpu_seconds(100 * H + 8).deadline(JAN).build(), T0).reason == "over_allowance"  # type: ignore[union-attr]


def test_allowance_short_by_one_second_within_the_deadline_is_refused() -> None:
    """Monthly: 90 of 100 spent in December; 10 h + 1 s cannot end by Dec 31."""
    s = cluster().pool("h100", 16).team("interp", hours=100).schedule()
    s.commit(grant("spent", "interp", "h100", 9, T0, T0 + 10 * H))
    ok = s.admit(req("p").gpu_seconds(10 * H).deadline(JAN).build(), T0)
    assert isinstance(ok, Grant) and ok.start == T0
    out = s.admit(req("p").gpu_seconds(10 * H + 1).deadline(JAN).build(), T0)
    assert isinstance(out, Refusal) and out.reason == "over_allowance", out
    assert out.needed == 10 * H + 1 and out.available == 10 * H


def test_short_this_month_starts_as_soon_as_the_december_part_fits() -> None:
    """10 GPU-hours left in December, 20 asked on one GPU, no deadline: the earliest feasible
    window straddles the new year with exactly 10 hours in December (charged by part)."""
    s = cluster().pool("h100", 16).team("interp", hours=100).schedule()
    s.commit(grant("spent", "interp", "h100", 9, T0, T0 + 10 * H))
    out = s.admit(req("p").hours(20).build(), T0)
    assert isinstance(out, Grant), out
    assert (out.start, out.end) == (JAN - 10 * H, JAN + 10 * H)
    s.commit(out)
    book = s.teams["interp"].book
    assert book.charged == {T0: 100 * H, JAN: 10 * H}


def test_period_boundary_charges_each_month_by_its_part() -> None:
    s = cluster().pool("h100", 16).team("interp", hours=100, max_gpus=8).schedule()
    start = at(2026, 12, 31, 20)
    out = s.admit(req("p").gpus(4).hours(32).not_before(start).build(), T0)
    assert isinstance(out, Grant) and (out.start, out.end) == (start, start + 8 * H)
    s.commit(out)
    assert s.teams["interp"].book.charged == {T0: 4 * 4 * H, JAN: 4 * 4 * H}
    # A refund from 02:00 on gives back only January's last two hours.
    s.release(out, JAN + 2 * H)
    assert s.teams["interp"].book.charged == {T0: 16 * H, JAN: 8 * H}


def test_a_window_fitting_neither_month_alone_but_both_by_part_is_granted() -> None:
    """80 GPU-hours in each month at most: 96 over the boundary is 48 + 48."""
    s = cluster().pool("h100", 16).team("interp", hours=80).schedule()
    out = s.admit(req("p").gpus(8).hours(96).not_before(JAN - 6 * H).deadline(JAN + 6 * H).build(), T0)
    assert isinstance(out, Grant), out
    s.commit(out)
    assert s.teams["interp"].book.charged == {T0: 48 * H, JAN: 48 * H}


def test_quarter_and_year_periods() -> None:
    s = cluster().pool("h100", 16).team("q", hours=10, period="quarter").team("y", hours=10, period="year").schedule()
    g = s.admit(req("a", "q").hours(10).not_before(at(2027, 3, 31, 19)).build(), T0)
    assert isinstance(g, Grant)
    s.commit(g)
    assert s.teams["q"].book.charged == {at(2027, 1, 1): 5 * H, at(2027, 4, 1): 5 * H}
    g = s.admit(req("b", "y").hours(10).not_before(at(2026, 12, 31, 19)).build(), T0)
    assert isinstance(g, Grant)
    s.commit(g)
    assert s.teams["y"].book.charged == {at(2026, 1, 1): 5 * H, at(2027, 1, 1): 5 * H}


# -- policy -----------------------------------------------------------------------------


def test_longest_grant_policy() -> None:
    s = cluster().pool("h100", 16).team("interp").policy(max_grant_hours=24).schedule()
    out = s.admit(req("p").gpus(1).hours(25).build(), T0)
    assert isinstance(out, Refusal) and out.reason == "longer_than_max_grant"
    assert "at least 2 GPUs" in out.message and (out.needed, out.available) == (25 * H, 24 * H)
    exact = s.admit(req("p").gpus(1).hours(24).build(), T0)
    assert isinstance(exact, Grant) and exact.end - exact.start == 24 * H
    two = s.admit(req("p").gpus(2).hours(25).build(), T0)
    assert isinstance(two, Grant) and two.end - two.start == 12.5 * H


def test_min_notice() -> None:
    s = cluster().pool("h100", 16).team("interp").policy(min_notice_s=600).schedule()
    out = s.admit(req("p").build(), T0)
    assert isinstance(out, Grant) and out.start == T0 + 600


def test_gpu_type_picks_the_earliest_pool_and_ties_go_to_config_order() -> None:
    s = (cluster().pool("h100a", 8, "H100").pool("h100b", 8, "H100").pool("a100", 64, "A100")
         .team("interp").schedule())
    first = s.admit(req("p").gpus(8).hours(8).gpu_type("H100").build(), T0)
    assert isinstance(first, Grant) and first.pool == "h100a"
    s.commit(first)
    second = s.admit(req("q").gpus(8).hours(8).gpu_type("H100").build(), T0)
    assert isinstance(second, Grant) and (second.pool, second.start) == ("h100b", T0)
    s.commit(second)
    third = s.admit(req("r").gpus(8).hours(8).gpu_type("H100").build(), T0)
    assert isinstance(third, Grant) and (third.pool, third.start) == ("h100a", T0 + H)
    wide = s.admit(req("w").gpus(9).gpu_type("H100").build(), T0)
    assert isinstance(wide, Refusal) and wide.reason == "wider_than_pool" and "any matching pool" in wide.message


def test_nothing_within_the_horizon() -> None:
    s = cluster().pool("h100", 16).team("interp").team("other").policy(horizon_days=7).schedule()
    s.commit(grant("long", "other", "h100", 16, T0, T0 + 30 * DAY))
    out = s.admit(req("p").build(), T0)
    assert isinstance(out, Refusal) and out.reason == "no_capacity_in_window"
    assert "horizon of 7 days" in out.message


def test_no_capacity_that_is_the_teams_max_gpus_names_the_team_not_the_pool() -> None:
    """The pool has 8 GPUs free; the team's own 8 GPUs (its max_gpus) are busy for 10 h, so
    4 more fit only after the deadline: the sentence names the team's limit, and what is
    available is what the team may still take (none), not the pool's free GPUs."""
    s = cluster().pool("h100", 16, per_node=8).team("interp", max_gpus=8).schedule()
    s.commit(grant("mine", "interp", "h100", 8, T0, T0 + 10 * H))
    out = s.admit(req("p").gpus(4).hours(80).deadline(T0 + 24 * H).build(), T0)  # 20 h on 4
    assert isinstance(out, Refusal) and out.reason == "no_capacity_in_window", out
    assert out.message == ("team interp may hold at most 8 GPUs at once: beside its other grants, 4 more "
                           "are free together for 20 h only from 2026-12-01 10:00 UTC, "
                           "too late to end by your deadline 2026-12-02 00:00 UTC."), out.message
    assert out.available == 0 and out.earliest_start == T0 + 10 * H
    # Without the deadline nor room in the horizon, the same limit is named.
    s2 = cluster().pool("h100", 16, per_node=8).team("interp", max_gpus=8).policy(horizon_days=3).schedule()
    s2.commit(grant("mine", "interp", "h100", 8, T0, T0 + 5 * DAY))
    out2 = s2.admit(req("p").gpus(4).hours(8).build(), T0)
    assert isinstance(out2, Refusal) and out2.reason == "no_capacity_in_window", out2
    assert "team interp may hold at most 8 GPUs at once" in out2.message and "horizon of 3 days" in out2.message


def test_not_before_past_the_horizon_is_named_not_called_no_free_gpus() -> None:
    s = cluster().pool("h100", 16, per_node=8).team("interp").policy(horizon_days=10).schedule()
    out = s.admit(req("p").gpus(2).hours(8).not_before(T0 + 11 * DAY).build(), T0)
    assert isinstance(out, Refusal) and out.reason == "no_capacity_in_window", out
    assert out.message == ("not_before 2026-12-12 00:00 UTC is past the horizon: admission looks for a "
                           "window starting by 2026-12-11 00:00 UTC (10 days ahead)."), out.message


def test_over_allowance_names_the_period_that_is_short() -> None:
    """On Dec 31 at noon, with January's 100 GPU-hours already granted, 20 GPU-hours on one
    GPU by Jan 10 cannot fit: the earliest window crosses into January. The sentence said
    "20 GPU-hours needed, team interp has 100 GPU-hours left this month": December's."""
    s = cluster().pool("h100", 8).team("interp", hours=100).schedule()
    s.commit(grant("jan", "interp", "h100", 1, JAN, JAN + 100 * H))
    now = at(2026, 12, 31, 12)
    out = s.admit(req("p").gpus(1).hours(20).deadline(JAN + 10 * DAY).build(), now)
    assert isinstance(out, Refusal) and out.reason == "over_allowance", out
    assert out.message == ("20 GPU-hours needed, team interp has 0 of its 100 GPU-hours left in January 2027, "
                           "where the earliest window with the GPUs free (2026-12-31 12:00 UTC) puts 8 of them "
                           "(windows are charged to each period by their part)."), out.message
    assert out.available == 0 and out.earliest_start == now
    # Within one period: that period, named.
    s2 = cluster().pool("h100", 8).team("interp", hours=100, period="none").schedule()
    s2.commit(grant("spent", "interp", "h100", 1, T0, T0 + 90 * H))
    out2 = s2.admit(req("p").gpus(1).hours(20).deadline(T0 + 10 * DAY).build(), T0)
    assert isinstance(out2, Refusal) and out2.reason == "over_allowance", out2
    assert out2.message == "20 GPU-hours needed, team interp has 10 of its 100 GPU-hours left in total.", out2.message


def test_not_before_in_the_last_month_of_year_9999_is_refused_without_an_exception() -> None:
    """A spec time may be as late as 9999-12-31. Period arithmetic there asked for the next
    period's start in year 10000 (ValueError, a traceback from submit): refused instead."""
    s = cluster().pool("h100", 16, per_node=8).team("interp", hours=1500).schedule()
    late = at(9999, 12, 31)
    for r, reason in ((req("p").gpus(8).hours(20000).not_before(late).build(), "over_allowance"),  # outright
                      (req("p").gpus(2).hours(8).not_before(late).build(), "no_capacity_in_window"),
                      (req("p").gpus(2).hours(8).not_before(at(9999, 12, 1)).deadline(late).build(),
                       "no_capacity_in_window")):
        out = s.admit(r, T0)
        assert isinstance(out, Refusal) and out.reason == reason, out
        assert out.alternatives == ()  # nothing with that not_before is within the horizon


# -- refusals carry alternatives that would be granted ----------------------------------


def _admit_alternative(s: Schedule, r: Request, alt: Any, now: int) -> Grant | Refusal:
    shape = Request(r.project, r.team, alt.width, alt.gpu_seconds, pool=alt.pool,
                    not_before=r.not_before, deadline=alt.end)
    return s.admit(shape, now)


def test_refusal_when_capacity_frees_before_the_deadline_but_too_late_to_finish() -> None:
    """The GPUs free up a day before the deadline, but the window needs two days."""
    s = cluster().pool("h100", 160).team("interp").team("other").schedule()
    s.commit(grant("big", "other", "h100", 64, T0, T0 + 6 * DAY))
    r = req("late").gpus(128).hours(128 * 48).deadline(T0 + 7 * DAY).build()
    out = s.admit(r, T0)
    assert isinstance(out, Refusal) and out.reason == "no_capacity_in_window", out
    assert out.message == ("128 GPUs are free together for 48 h only from 2026-12-07 00:00 UTC, "
                           "too late to end by your deadline 2026-12-08 00:00 UTC.")
    assert out.earliest_start == T0 + 6 * DAY


def test_refusal_from_the_issue_offers_a_later_start_and_a_narrower_width() -> None:
    """128 GPUs free together only after the deadline; 96 fit in the window."""
    s = cluster().pool("h100", 160).team("interp").team("other").schedule()
    s.commit(grant("big", "other", "h100", 64, T0, T0 + 8 * DAY))
    r = req("too-big").gpus(128).hours(128 * 36).deadline(T0 + 7 * DAY).build()
    out = s.admit(r, T0)
    assert isinstance(out, Refusal) and out.reason == "no_capacity_in_window", out
    assert out.message == ("128 GPUs are free together only from 2026-12-09 00:00 UTC, "
                           "after your deadline 2026-12-08 00:00 UTC.")
    kinds = {a.kind: a for a in out.alternatives}
    assert kinds["later_start"].start == T0 + 8 * DAY
    assert kinds["narrower"].width == 96
    for alt in out.alternatives:
        got = _admit_alternative(s, r, alt, T0)
        assert isinstance(got, Grant) and got.start == alt.start and got.width == alt.width, (alt, got)


def test_narrower_alternative_respects_the_longest_grant() -> None:
    """Asking for fewer GPUs makes the window longer: it must still be a grantable length."""
    s = cluster().pool("h100", 16).team("interp").team("other").policy(max_grant_hours=10).schedule()
    s.commit(grant("busy", "other", "h100", 12, T0, T0 + 25 * H))
    # 8 GPUs for 8 h fit only from T0 + 25 h, past the deadline; 4 GPUs would need 16 h.
    r = req("p").gpus(8).hours(64).deadline(T0 + 30 * H).build()
    out = s.admit(r, T0)
    assert isinstance(out, Refusal) and out.reason == "no_capacity_in_window"
    for alt in out.alternatives:
        got = _admit_alternative(s, r, alt, T0)
        assert isinstance(got, Grant), (alt, got)


def test_narrower_alternative_found_when_narrow_widths_are_too_long_for_the_window() -> None:
    """Feasibility is not monotone in width under a deadline: too narrow is too long for the
    window, too wide is not free. 128 asked, 56 free for the first 12 h and 64 after: every
    width from 48 (24 h) to 56 (20.6 h) fits; 56 is the widest."""
    s = cluster().pool("h100", 128).team("interp").team("other").schedule()
    s.commit(grant("a", "other", "h100", 8, T0, T0 + 12 * H))
    s.commit(grant("b", "other", "h100", 64, T0, T0 + 24 * H))
    r = req("too-big").gpus(128).hours(1152).deadline(T0 + 24 * H).build()
    out = s.admit(r, T0)
    assert isinstance(out, Refusal) and out.reason == "no_capacity_in_window"
    narrower = [a for a in out.alternatives if a.kind == "narrower"]
    assert narrower and narrower[0].width == 56 and narrower[0].start == T0, out.alternatives
    got = _admit_alternative(s, r, narrower[0], T0)
    assert isinstance(got, Grant) and got.width == 56


# -- pulling a waiting grant forward ------------------------------------------------------


def test_start_now_moves_a_grant_whose_whole_window_fits_now_and_nothing_else() -> None:
    s = cluster().pool("h100", 8).team("a", period="none").schedule()
    first = s.commit(Grant("first", "a", "h100", 8, T0, T0 + 10 * H))
    waiting = s.commit(Grant("second", "a", "h100", 4, T0 + 10 * H, T0 + 12 * H))
    assert s.start_now(waiting, T0 + H) == waiting  # first still holds all 8
    s.release(first, T0 + H)  # first ends early
    moved = s.start_now(waiting, T0 + H)
    assert (moved.start, moved.end) == (T0 + H, T0 + 3 * H)
    assert s.pools["h100"][1].free_at(T0 + H) == 4 and s.pools["h100"][1].free_at(T0 + 10 * H) == 8


def test_start_now_overlapping_its_own_window_and_blocked_by_another() -> None:
    s = cluster().pool("p", 4).team("a", period="none").schedule()
    waiting = Grant("w", "a", "p", 4, T0 + 2 * H, T0 + 6 * H)
    later = Grant("x", "a", "p", 4, T0 + 6 * H, T0 + 7 * H)
    s.commit(waiting)
    s.commit(later)
    # Free over [T0+H, T0+2H), then its own window: [T0+H, T0+5H) fits.
    assert s.start_now(waiting, T0 + H).start == T0 + H
    s2 = cluster().pool("p", 4).team("a", period="none").schedule()
    busy = Grant("b", "a", "p", 1, T0, T0 + 90 * 60)
    s2.commit(busy)
    w = s2.commit(Grant("w", "a", "p", 4, T0 + 2 * H, T0 + 6 * H))
    assert s2.start_now(w, T0 + H) == w  # one GPU is busy until T0+1.5h


def test_start_now_respects_max_gpus_and_the_allowance_of_the_period_it_moves_into() -> None:
    s = cluster().pool("p", 16).team("capped", max_gpus=4, period="none").schedule()
    s.commit(Grant("run", "capped", "p", 4, T0, T0 + 5 * H))
    w = s.commit(Grant("w", "capped", "p", 2, T0 + 5 * H, T0 + 6 * H))
    assert s.start_now(w, T0 + H) == w  # 12 GPUs idle, but the team may hold only 4
    # December is spent; the January window may not move back into it.
    s = cluster().pool("p", 16).team("m", hours=10).schedule()
    s.commit(Grant("dec", "m", "p", 10, JAN - H, JAN))
    w = s.commit(Grant("jan", "m", "p", 1, JAN, JAN + H))
    assert s.start_now(w, JAN - 2 * H) == w
    assert s.teams["m"].book.charged == {at(2026, 12, 1): 10 * H, JAN: H}


def test_free_until() -> None:
    from cellsched.core.calendar import FAR_FUTURE, CapacityCalendar

    c = CapacityCalendar(8)
    c.reserve(10, 20, 4)
    c.reserve(30, 40, 8)
    assert c.free_until(4, 0) == 30
    assert c.free_until(5, 0) == 10
    assert c.free_until(5, 10) == 10  # fewer than 5 free at 10 itself
    assert c.free_until(1, 40) == FAR_FUTURE
