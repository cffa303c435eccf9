"""The expected start beside the promise (issue 15, point 2), through the service layer on
SQLite and PostgreSQL: on a ledger whose history was made by submitting and finishing grants
at chosen times, a waiting grant's ``expected_start`` is the hand-computed replay; with no
history it is the promise, and the basis says so; a dry run answers as the submit then
does; ``status`` carries both keys for every grant; the ratios are read once a minute."""

from __future__ import annotations

from service_specs import T0, H, spec

from cellsched import expected, ops, service
from cellsched.ledger.lifecycle import GrantWriter
from cellsched.service import Env

DAY = 86400


def finished(env: Env, name: str, team: str, user: str, at: int, hours: int, held_h: int) -> None:
    """An 8-GPU grant of ``hours`` submitted at ``at`` (it starts at once) whose jobs all
    ended ``held_h`` hours in: the daemon's writes, cut short as the reconciler cuts it."""
    out = service.submit(env, spec(name, team, gpus=8, hours=8 * hours, owner=user), user, at)
    assert out.granted and out.grant is not None and out.grant.start == at
    assert (out.expected_start, out.expected_basis) == (at, expected.STARTS_NOW)
    gid = out.grant.id
    assert gid is not None
    w = GrantWriter(env.ledger)
    assert w.begin(gid, f"r{gid}", "logs", at, None) and w.activate(gid, at)
    assert w.finish_early(gid, at + held_h * H, "completed", lambda s, now: []) is not None


def history(env: Env) -> None:
    """Team interp: three grants of 4 h that each held 2 h, ended 10, 6 and 2 days ago.
    Held over granted: 3 x 8 x 2 h / (3 x 8 x 4 h) = 0.5, for interp and for the cluster.
    Team pretraining has none: it takes the cluster's 0.5."""
    for i, days in enumerate((10, 6, 2)):
        finished(env, f"old{i}", "interp", "alice", T0 - days * DAY, hours=4, held_h=2)


def test_a_waiting_grant_is_expected_where_history_says_the_calendar_frees(env: Env) -> None:
    history(env)
    # 16 H100s (two nodes of 8). At T0: A (interp, 16 GPUs, 8 h) starts now; B (interp,
    # 8 GPUs, 4 h) is promised [T0 + 8 h, T0 + 12 h); C (pretraining, 16 GPUs, 2 h) is
    # promised [T0 + 12 h, T0 + 14 h), after B.
    a = service.submit(env, spec("a", "interp", gpus=16, hours=16 * 8), "alice", T0)
    b = service.submit(env, spec("b", "interp", gpus=8, hours=8 * 4, owner="bob"), "bob", T0)
    c = service.submit(env, spec("c", "pretraining", gpus=16, hours=16 * 2, owner="dave"), "dave", T0)
    assert a.grant is not None and b.grant is not None and c.grant is not None
    assert (a.grant.start, b.grant.start, c.grant.start) == (T0, T0 + 8 * H, T0 + 12 * H)
    # The replay: A holds 0.5 of its 8 h and ends at T0 + 4 h. B, the longest waiting grant
    # that fits then, starts at T0 + 4 h (C, 16 GPUs, does not fit beside it) and holds 0.5
    # of 4 h: it ends at T0 + 6 h, where C starts.
    assert (a.expected_start, a.expected_basis) == (T0, expected.STARTS_NOW)
    assert b.expected_start == T0 + 4 * H
    assert b.expected_basis == ("team interp's last 30 days: half the grants held at most 50% of their window (3 grants); "
                                "later work arrives as in the last 24 h")
    assert c.expected_start == T0 + 6 * H
    assert c.expected_basis == ("the cluster's last 30 days (team pretraining has fewer than 3 ended grants): "
                                "half the grants held at most 50% of their window (3 grants); "
                                "later work arrives as in the last 24 h")
    got = c.to_json()
    assert (got["expected_start"], got["expected_start_basis"]) == (T0 + 6 * H, c.expected_basis)
    assert got["grant"]["start"] == T0 + 12 * H  # the promise, unchanged

    # A dry run of C's twin answers as its submit would: it comes after C, which it does
    # not fit beside until C's expected end (T0 + 7 h).
    d = ops.submit(env, "dave", ops.SpecIn(file="d.json", text=spec(
        "d", "pretraining", gpus=16, hours=16 * 2, owner="dave").model_dump_json(exclude_none=True)), T0, dry_run=True)
    assert d["dry_run"] and d["grant"]["start"] == T0 + 14 * H
    assert d["expected_start"] == T0 + 7 * H and d["expected_start_utc"] == "2026-12-01T07:00:00Z"
    assert "team pretraining has fewer than 3" in d["expected_start_basis"]

    # status: the same figures, every grant with both keys.
    items = {it["project"].split("@")[0]: it for it in ops.status(env, "alice", None, T0, everything=True)}
    assert {k: (v["expected_start"], v["expected_start_basis"]) for k, v in items.items()} == {
        "old0": (None, None), "old1": (None, None), "old2": (None, None),  # ended: nothing to expect
        "a": (T0, expected.STARTED),
        "b": (T0 + 4 * H, b.expected_basis),
        "c": (T0 + 6 * H, c.expected_basis),
    }
    assert items["b"]["expected_start_utc"] == "2026-12-01T04:00:00Z"
    one = ops.status(env, "alice", "c", T0)
    assert [(it["expected_start"], it["expected_start_basis"]) for it in one] == [(T0 + 6 * H, c.expected_basis)]


def test_with_no_history_the_expected_start_is_the_promise_and_says_so(env: Env) -> None:
    a = service.submit(env, spec("a", "interp", gpus=16, hours=16 * 8), "alice", T0)
    b = service.submit(env, spec("b", "interp", gpus=8, hours=8 * 4, owner="bob"), "bob", T0 + 60)
    assert a.grant is not None and b.grant is not None and b.grant.start == T0 + 8 * H
    assert a.expected_start == T0 and a.expected_basis == expected.STARTS_NOW
    assert b.expected_start == b.grant.start
    assert b.expected_basis == "no grant ended in the last 30 days: every window is taken to run to its end"
    again = service.submit(env, spec("b", "interp", gpus=8, hours=8 * 4, owner="bob"), "bob", T0 + 90)
    assert again.existing and again.expected_start == b.grant.start and again.expected_basis == b.expected_basis
    # Two waiting submits within a minute: the ratios were read from the ledger once.
    assert env.ratios.reads == 1
    item = ops.status(env, "bob", "b", T0 + 120)[0]
    assert (item["expected_start"], item["expected_start_basis"]) == (b.grant.start, b.expected_basis)


def test_a_submit_over_the_live_limit_says_so_and_status_still_replays(env: Env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(expected, "SUBMIT_MAX_LIVE", 1)  # a and b are live: more than 1
    history(env)
    service.submit(env, spec("a", "interp", gpus=16, hours=16 * 8), "alice", T0)
    b = service.submit(env, spec("b", "interp", gpus=8, hours=8 * 4, owner="bob"), "bob", T0)
    assert b.grant is not None and b.expected_start == b.grant.start == T0 + 8 * H
    assert b.expected_basis == ("not estimated at submit: 2 grants are live, more than a submit replays (1); "
                                "`cellsched status` estimates it")
    item = ops.status(env, "bob", "b", T0)[0]
    assert (item["expected_start"], item["expected_start_basis"][:5]) == (T0 + 4 * H, "team ")


def test_a_grant_is_not_expected_before_its_not_before(env: Env) -> None:
    # As the first test: A (16 GPUs) holds both nodes until its expected end, T0 + 4 h. B
    # (8 GPUs, 4 h) may not start before T0 + 5 h: promised [T0 + 8 h, T0 + 12 h) (after A's
    # window), expected at its not_before, T0 + 5 h, not where A is expected to end. The same
    # in a dry run, a submit and status (which reads the spec's not_before from the ledger).
    history(env)
    service.submit(env, spec("a", "interp", gpus=16, hours=16 * 8), "alice", T0)
    d = ops.submit(env, "bob", ops.SpecIn(file="b.json", text=spec(
        "b", "interp", gpus=8, hours=8 * 4, owner="bob", not_before=T0 + 5 * H).model_dump_json(exclude_none=True)),
        T0, dry_run=True)
    assert d["grant"]["start"] == T0 + 8 * H and d["expected_start"] == T0 + 5 * H
    b = service.submit(env, spec("b", "interp", gpus=8, hours=8 * 4, owner="bob", not_before=T0 + 5 * H), "bob", T0)
    assert b.grant is not None and b.grant.start == T0 + 8 * H
    assert b.expected_start == T0 + 5 * H
    item = ops.status(env, "bob", "b", T0)[0]
    assert item["expected_start"] == T0 + 5 * H
    # Without a not_before it would have been expected where A ends.
    c = service.submit(env, spec("c", "interp", gpus=8, hours=8 * 4), "alice", T0)
    assert c.grant is not None and c.expected_start == T0 + 4 * H
