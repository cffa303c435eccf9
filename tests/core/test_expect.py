"""The expected start (core/expect.py): the estimator on hand-worked calendars, the ratios
on a ledger with known history (ledger/history.py), and the fallback when there is none."""

from __future__ import annotations


import pytest
from sqlmodel import Session, SQLModel, create_engine

from cellsched.core.admission import Grant
from cellsched.core.expect import (
    PlainWaiting,
    Ratios,
    expected_starts,
    held_share,
    ratios_from,
    ratios_of,
)
from cellsched.ledger.history import expected_for, ratios
from cellsched.ledger.tables import GrantRow, ProjectRow

H = 3600
DAY = 86400


def g(team: str, width: int, start: int, end: int, project: str = "p") -> Grant:
    return Grant(project, team, "main", width, start, end)


def test_ratios_are_the_median_grant_per_team_then_the_cluster():
    hist = [("a", 50, 100), ("a", 30, 100), ("a", 180, 200),  # a: 0.3, 0.5, 0.9
            ("b", 10, 10),  # b: one grant only (1.0): too few for its own ratio
            ("c", 20, 100), ("c", 40, 100), ("c", 60, 100), ("c", 80, 100)]  # c: 0.2 .. 0.8
    r = ratios_from(hist)
    # The ratio of rank floor(n / 2) from 0: a's middle one, 0.5 (the GPU-seconds sum would be
    # 260 / 400 = 0.65); c's third, 0.6; the cluster's eight ratios
    # 0.2 0.3 0.4 0.5 0.6 0.8 0.9 1.0: rank 4, 0.6.
    assert r.teams == {"a": 0.5, "c": 0.6}
    assert r.cluster == 0.6
    assert r.grants == {"a": 3, "b": 1, "c": 4} and r.cluster_grants == 8
    assert (r.of("a"), r.basis("a")) == (0.5, "team")
    assert (r.of("b"), r.basis("b")) == (0.6, "cluster")
    # Every team has fewer than 20 grants: all of them are the nearest, for any window.
    assert r.sentence("c") == r.sentence("c", 100) == (
        "team c's last 30 days: half the grants held at most 60% of their window (4 grants); "
        "later work arrives as in the last 24 h")
    assert r.sentence("b", 10) == ("the cluster's last 30 days (team b has fewer than 3 ended grants): half the "
                                   "grants held at most 60% of their window (8 grants); later work arrives as in "
                                   "the last 24 h")
    empty = ratios_from([])
    assert (empty.of("a"), empty.basis("a"), empty.cluster) == (1.0, "none", None)
    assert empty.sentence("a") == "no grant ended in the last 30 days: every window is taken to run to its end"


def test_a_running_grant_holds_the_median_of_the_ratios_above_what_it_has_run():
    r = ratios_from([("a", 50, 100), ("a", 30, 100), ("a", 180, 200), ("b", 10, 10),
                     ("c", 20, 100), ("c", 40, 100), ("c", 60, 100), ("c", 80, 100)])
    # Team a's ratios 0.3, 0.5, 0.9; a window of 100 s.
    assert r.held("a", 100) == 50  # not started: rank 1 of 3
    assert r.held("a", 100, 20) == 50  # ran 0.2: all three are above, rank 1: 0.5
    assert r.held("a", 100, 40) == 90  # ran 0.4: 0.5 and 0.9 are above, rank 1: 0.9
    assert r.held("a", 100, 60) == 90  # ran 0.6: only 0.9
    assert r.held("a", 100, 95) == 98  # past every one: 95 + 0.5 x the 5 s left, rounded up
    # Team c (0.2 0.4 0.6 0.8): rank 2, 0.6; having run 0.3, 0.4 0.6 0.8 are above: rank 1,
    # 0.6; having run 0.5, 0.6 and 0.8: 0.8.
    assert (r.held("c", 100), r.held("c", 100, 30), r.held("c", 100, 50)) == (60, 60, 80)
    # Team b has too few: the cluster's; having run 0.6, 0.8 0.9 1.0 are above: rank 1, 0.9.
    assert r.held("b", 100, 60) == 90
    # Ratios given by hand (no per-grant distribution): the ratio, or of what is left.
    hand = Ratios({"a": 0.5}, 0.5)
    assert (hand.held("a", 100), hand.held("a", 100, 40), hand.held("a", 100, 60)) == (50, 50, 80)


def test_a_grant_holds_the_median_of_the_grants_with_the_nearest_windows():
    # Team a's five grants as (window s, ratio), three nearest taken (ratios_from takes 20).
    a = [(100, 0.9), (200, 0.8), (400, 0.5), (800, 0.3), (1600, 0.2)]
    r = ratios_of({"a": a}, a, nearest=3)
    assert r.teams == {"a": 0.5}  # all five, sorted 0.2 .. 0.9: rank floor(5 / 2) = 2
    # 400 s: 400 itself, then 200 and 800 as near (400/200 = 800/400): the shorter, 200;
    # 0.3 0.5 0.8, rank 1: 0.5.
    assert r.like("a", 400) == (0.3, 0.5, 0.8) and r.held("a", 400) == 200
    # 1,000 s: 800 (x 1.25), then 1600 (x 1.6) before 400 (x 2.5): 0.2 0.3 0.5 -> 0.3.
    assert r.held("a", 1000) == 300
    # 50 s: the three shortest, 0.5 0.8 0.9 -> 0.8.
    assert r.held("a", 50) == 40
    # Running, 400 s window: having run 0.55 only 0.8 is above (320 s); past 0.8, the
    # 60 s left at 0.5.
    assert (r.held("a", 400, 220), r.held("a", 400, 340)) == (320, 370)
    assert r.sentence("a", 400) == ("team a's last 30 days: of the 3 grants (of 5) with windows nearest this one's in "
                                    "length, half held at most 50% of their window; later work arrives as in the "
                                    "last 24 h")
    assert r.sentence("a", 1000).startswith("team a's last 30 days: of the 3 grants (of 5) with windows nearest "
                                            "this one's in length, half held at most 30% of their window")
    # Another number of nearest grants is another answer: the memo of like() is not shared.
    from dataclasses import replace as dc_replace
    assert dc_replace(r, nearest=5).like("a", 400) == (0.2, 0.3, 0.5, 0.8, 0.9) and r.like("a", 400) == (0.3, 0.5, 0.8)
    # Without a window: the team's over all of them.
    assert r.sentence("a").startswith("team a's last 30 days: half the grants held at most 50% of their window "
                                      "(5 grants)")
    # The cluster's the same way for a team with too few (here the cluster is team a).
    assert r.held("b", 1000) == 300 and r.basis("b") == "cluster"


def test_held_share_rounds_up_and_never_exceeds_the_window():
    assert held_share(100, 0.333) == 34
    assert held_share(100, 1.0) == 100
    assert held_share(100, 1e-9) == 1


def test_a_running_grant_that_ends_early_brings_the_waiting_one_forward():
    # 4 GPUs. R (team a, 4 GPUs) runs [0, 100); W (team b, 4 GPUs) is promised [100, 200).
    # At now = 10, team a's grants hold half their window: R is expected to end at 50, and
    # W, the oldest waiting grant, moves there. With no history W is expected at its promise.
    live = [(1, g("a", 4, 0, 100)), (2, g("b", 4, 100, 200))]
    half = Ratios({"a": 0.5}, 0.5, {"a": 5}, 5)
    assert expected_starts({"main": 4}, live, half, 10) == {2: 50}
    assert expected_starts({"main": 4}, live, Ratios(), 10) == {2: 100}


def test_replay_chain_and_the_rule_of_the_waiting_grants():
    # 4 GPUs. R (a, 4 GPUs) runs [0, 100). Waiting, in submission order: W1 (b, 2 GPUs)
    # [100, 200), W2 (b, 2 GPUs) [100, 160), W3 (c, 4 GPUs) [200, 300). Team a holds 0.4 of
    # its windows, b 0.5, c 1.0 (its own history). R ends at 40: W1 (oldest) moves to 40
    # (window [40, 140)), W2 moves to 40 too ([40, 100)); W2 ends at 40 + 30 = 70, W1 at
    # 40 + 50 = 90; at 70 W3 (the oldest waiting) is moved to its earliest window,
    # 140 (W1's window holds 2 GPUs until then); at 90 W1 gives its GPUs back: W3 moves to 90.
    live = [(1, g("a", 4, 0, 100)), (2, g("b", 2, 100, 200)), (3, g("b", 2, 100, 160)),
            (4, g("c", 4, 200, 300))]
    r = Ratios({"a": 0.4, "b": 0.5, "c": 1.0}, 0.6)
    assert expected_starts({"main": 4}, live, r, 0) == {2: 40, 3: 40, 4: 90}
    assert expected_starts({"main": 4}, live, r, 0, want=[3]) == {3: 40}


def test_an_overdue_running_grant_holds_the_ratio_of_what_is_left():
    # R (a) [0, 100), team a holds 0.2 of its windows: expected to end at 20. At 30 it still
    # runs: it ran longer than most, so it holds 0.2 of what is left, 70 s: it ends at 44,
    # and W moves there (not to 30: under noise, ending every overdue grant now started
    # everything behind them at once; docs/admission.md).
    live = [(1, g("a", 4, 0, 100)), (2, g("b", 4, 100, 200))]
    assert expected_starts({"main": 4}, live, Ratios({"a": 0.2}, 0.2), 10) == {2: 20}
    assert expected_starts({"main": 4}, live, Ratios({"a": 0.2}, 0.2), 30) == {2: 44}


def test_simulator_index_gives_the_plain_replay():
    import random

    from cellsched.sim.compress import Waiting

    rnd = random.Random(3)
    for _ in range(30):
        live, t = [], 0
        cal = {}
        for k in range(25):
            w = rnd.choice([1, 1, 2, 4])
            length = rnd.randint(5, 60)
            t = rnd.randint(0, 200)
            live.append((k, g(rnd.choice("abc"), w, t, t + length, f"p{k}")))
        # Only a feasible calendar counts: place them as admission would (earliest fit).
        from cellsched.core.admission import Request
        from cellsched.core.expect import replay_schedule

        sched = replay_schedule({"main": 6}, "abc")
        placed = []
        for k, x in live:
            got = sched.admit(Request(x.project, x.team, x.width, x.gpu_seconds), max(0, x.start - 50))
            placed.append((k, sched.commit(got)))
        r = Ratios({"a": 0.3, "b": 0.7}, 0.5)
        now = 40
        plain = expected_starts({"main": 6}, placed, r, now, waiting_set=PlainWaiting)
        fast = expected_starts({"main": 6}, placed, r, now, waiting_set=lambda s: Waiting(s, "start_now"))
        assert plain == fast
        for k, x in placed:
            if x.start > now:
                assert plain[k] <= x.start


@pytest.fixture()
def session(ledger_url: str):  # SQLite and PostgreSQL (tests/conftest.py)
    engine = create_engine(ledger_url)
    SQLModel.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def add(s: Session, i: int, team: str, width: int, start: int, end: int, promised_end: int,
        state: str, ended_at: int | None) -> None:
    s.add(ProjectRow(id=f"p{i}@x", name=f"p{i}", digest=f"d{i}", team=team, owner="o", submitted_by="o",
                     spec_json="{}", created_at=start))
    s.flush()  # the grant's project first (PostgreSQL checks the foreign key)
    s.add(GrantRow(id=i, project_id=f"p{i}@x", project=f"p{i}", digest="x", team=team, pool="main",
                   width=width, start=start, end=end, promised_start=start, promised_end=promised_end,
                   charged_gs=width * (promised_end - start), state=state, created_at=start, ended_at=ended_at))


def test_ratios_from_a_ledger_with_known_history(session):
    now = 100 * DAY
    # team a: three grants ended within 30 days (held 2 h of 4, 1 h of 4 on 2 GPUs, 4 of 4)
    add(session, 1, "a", 1, now - 10 * DAY, now - 10 * DAY + 2 * H, now - 10 * DAY + 4 * H, "completed", now - 10 * DAY + 2 * H)
    add(session, 2, "a", 2, now - 5 * DAY, now - 5 * DAY + 1 * H, now - 5 * DAY + 4 * H, "completed", now - 5 * DAY + H)
    add(session, 3, "a", 1, now - 2 * DAY, now - 2 * DAY + 4 * H, now - 2 * DAY + 4 * H, "expired", now - 2 * DAY + 4 * H)
    # not counted: ended 40 days ago, cancelled, still running
    add(session, 4, "a", 8, now - 40 * DAY, now - 40 * DAY + H, now - 40 * DAY + 9 * H, "completed", now - 40 * DAY + H)
    add(session, 5, "a", 8, now - 3 * DAY, now - 3 * DAY + H, now - 3 * DAY + 9 * H, "cancelled", now - 3 * DAY + H)
    add(session, 6, "b", 4, now - H, now + 3 * H, now + 3 * H, "active", None)
    # waiting: team b, 4 GPUs, promised [now + 3 h, now + 5 h)
    add(session, 7, "b", 4, now + 3 * H, now + 5 * H, now + 5 * H, "granted", None)
    session.commit()
    r = ratios(session, now)
    # a: per grant 2/4, 1/4, 4/4: rank floor(3 / 2) = 1, 0.5; b has none: the cluster's (a's)
    assert r.teams == {"a": 0.5} and r.cluster == 0.5 and r.grants == {"a": 3}
    assert r.basis("b") == "cluster"
    # Each with its window's length in seconds (grant 2's two GPUs do not count), sorted.
    assert r.near["a"] == ((4 * H, 4 * H, 4 * H), (0.25, 0.5, 1.0))
    # Half an hour earlier, grant 6 (b, running since now - 1 h, 4 h window) has held 1/8 of
    # its window: the cluster's ratios 0.25, 0.5, 1.0 are all above, rank 1: 0.5. It is
    # expected to hold 2 h and end at now + 1 h, and grant 7 moves there.
    got, _ = expected_for(session, {"main": 4}, now - H // 2, [7])
    assert got == {7: now + H}
    # At now it has held 1/4: 0.5 and 1.0 are above, rank 1: 1.0, it runs to its end (now +
    # 3 h); so too at now + 2 h (3/4 held: only 1.0 above).
    for t in (now, now + 2 * H):
        got, _ = expected_for(session, {"main": 4}, t, [7])
        assert got == {7: now + 3 * H}


def test_no_history_falls_back_and_says_so(session):
    now = 100 * DAY
    add(session, 6, "b", 4, now - H, now + 3 * H, now + 3 * H, "active", None)
    add(session, 7, "b", 4, now + 3 * H, now + 5 * H, now + 5 * H, "granted", None)
    session.commit()
    got, r = expected_for(session, {"main": 4}, now, [7])
    assert r.basis("b") == "none" and r.cluster is None
    assert got == {7: now + 3 * H}  # every window runs to its end: the promise
    assert "no grant ended in the last 30 days" in r.sentence("b")


def test_a_waiting_grant_is_not_expected_before_its_not_before():
    # 4 GPUs. R (a) runs [0, 100) and holds half its window: it ends at 50. W (b) is
    # promised [100, 200) but may not start before 80 (its spec's not_before): it is
    # expected at 80, not at 50 where the GPUs come free.
    live = [(1, g("a", 4, 0, 100)), (2, g("b", 4, 100, 200))]
    half = Ratios({"a": 0.5}, 0.5)
    assert expected_starts({"main": 4}, live, half, 10) == {2: 50}
    assert expected_starts({"main": 4}, live, half, 10, not_before={2: 80}) == {2: 80}
    assert expected_starts({"main": 4}, live, half, 10, want=[2], not_before={2: 80}) == {2: 80}
    # A not_before past its own start changes nothing: it starts at its window.
    assert expected_starts({"main": 4}, live, half, 10, not_before={2: 150}) == {2: 100}


def node_g(team: str, width: int, start: int, end: int, nodes: tuple[int, ...]) -> Grant:
    return Grant("p", team, "main", width, start, end, nodes)


def test_nothing_new_is_placed_on_a_lost_node():
    # Two nodes of 4. R (a, 4 GPUs) runs [0, 100) on node 0; W (b, 4 GPUs) is promised
    # [100, 200) on node 0 (admitted while node 1 was held by something else). Node 1 is
    # free, and lost: W cannot start there now; it waits for R, which ends at 50.
    live = [(1, node_g("a", 4, 0, 100, (0,))), (2, node_g("b", 4, 100, 200, (0,)))]
    half = Ratios({"a": 0.5}, 0.5)
    assert expected_starts({"main": (8, 4)}, live, half, 10) == {2: 10}  # node 1 free: now
    assert expected_starts({"main": (8, 4)}, live, half, 10, lost={"main": [1]}) == {2: 50}
    # R's node lost instead: R keeps its window there, W moves to node 1 at once.
    assert expected_starts({"main": (8, 4)}, live, half, 10, lost={"main": [0]}) == {2: 10}
    # Both lost: W keeps its own window on node 0 and starts there, at its promise (R's
    # early end frees nothing that a new window could take).
    assert expected_starts({"main": (8, 4)}, live, half, 10, lost={"main": [0, 1]}) == {2: 100}


def test_later_work_arrives_as_in_the_last_day():
    # 4 GPUs. R (a, 4 GPUs) runs [0, 100) and ends at 50 (ratio 0.5). W (b, 4 GPUs, window
    # 100) is promised [100, 200). With no later work W starts at 50. Yesterday one grant of
    # 2 GPUs and 40 s was admitted at offset 20 (of 86,400): it arrives again at 10 + 20 =
    # 30, is admitted at the earliest window that fits, [200, 240) after W's (R holds
    # [0, 100) and W [100, 200)), and at 50, when R ends, the longest waiting grant that fits
    # starts first: W (window 100 > 40). So W is still expected at 50; the newcomer then
    # starts at 50 + 50 = 100 when W ends (held half of 100).
    live = [(1, g("a", 4, 0, 100)), (2, g("b", 4, 100, 200))]
    half = Ratios({"a": 0.5, "b": 0.5}, 0.5)
    arr = [(20, "c", "main", 2, 40)]
    assert expected_starts({"main": 4}, live, half, 10, want=[2], arrivals=arr, period=86400) == {2: 50}
    # A newcomer that arrives after R has ended early and fits the hole W cannot use takes
    # it first: R (a, 2 GPUs) [0, 100) ends at 50; W (b, 4 GPUs) [100, 200) needs all four.
    # The newcomer (2 GPUs, 60 s) arrives at 40 and starts at once beside R, on [40, 100)
    # (2 GPUs free): held half, it ends at 70, R at 50: W starts at 70, not at 50.
    live = [(1, g("a", 2, 0, 100)), (2, g("b", 4, 100, 200))]
    assert expected_starts({"main": 4}, live, half, 10, want=[2]) == {2: 50}
    arr = [(30, "c", "main", 2, 60)]
    assert expected_starts({"main": 4}, live, half, 10, want=[2], arrivals=arr, period=86400) == {2: 70}


def test_lost_nodes_and_not_before_read_from_the_ledger(session):
    from cellsched.ledger.tables import NodeMapRow

    now = 100 * DAY
    for i in (1, 2, 3):  # history: team a holds half its windows
        add(session, i, "a", 1, now - i * DAY, now - i * DAY + 2 * H, now - i * DAY + 4 * H, "completed",
            now - i * DAY + 2 * H)
    # Two nodes of 4: R (a, 4 GPUs) runs on node 0 since now - 1 h for 4 h: it ends at now + 1 h.
    add(session, 6, "a", 4, now - H, now + 3 * H, now + 3 * H, "active", None)
    add(session, 7, "b", 4, now + 3 * H, now + 5 * H, now + 5 * H, "granted", None)
    for gid in (6, 7):
        row = session.get(GrantRow, gid)
        row.nodes = "[0]"
        session.add(row)
    session.commit()
    pools = {"main": (8, 4)}
    got, _ = expected_for(session, pools, now, [7])
    assert got == {7: now}  # node 1 is there and free: W starts now
    session.add(NodeMapRow(pool="main", index=1, node_id=None, since=now))
    session.commit()
    got, _ = expected_for(session, pools, now, [7])
    assert got == {7: now + H}  # node 1 lost: W waits for R
    # W's spec says not before now + 2 h: expected there, after R's end.
    import datetime as dt

    from cellsched.spec.models import ProjectSpec
    from cellsched.spec.seal import canonical_json

    nb = dt.datetime.fromtimestamp(now + 2 * H, dt.UTC).isoformat()
    sp = ProjectSpec.model_validate({
        "name": "p7", "team": "b", "owner": "o", "problem": "q",
        "budget": {"gpu_hours": 8, "gpus": 4, "not_before": nb},
        "jobs": [{"name": "j", "run": ["true"], "gpus": 4}]})
    project = session.get(ProjectRow, "p7@x")
    project.spec_json = canonical_json(sp)
    session.add(project)
    session.commit()
    got, _ = expected_for(session, pools, now, [7])
    assert got == {7: now + 2 * H}
