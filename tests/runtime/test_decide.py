"""``decide``: every grant state × observation gives the documented actions (docs/daemon.md,
"One tick"). Pure: no ledger, no executor, no clock."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from cellsched.executor.base import GangResult, RunningGang
from cellsched.runtime import decide as D

from runtime_builders import job, project

T = 1_000
SPEC = project("p", [job("prep"), job("train", gpus=2, after=("prep",), retries=1)], gpus=4, window_s=100)
RULES = D.Rules(grace_s=5, placement_timeout_s=10, breach_update_s=60)


def grant(state: str = "active", rt: Any = "default", attempts: tuple[D.AttemptRow, ...] = (),
          start: int = T, end: int = T + 100, started_at: int | None = T) -> D.GrantView:
    if rt == "default":
        rt = D.RuntimeView("cellsched/x/p/g1", "/logs/p", ever_placed=True)
    return D.GrantView(1, "p@abc", state, start, end, 4, started_at, SPEC, rt, attempts)


def rt(**kw: Any) -> D.RuntimeView:
    return replace(D.RuntimeView("cellsched/x/p/g1", "/logs/p", ever_placed=True), **kw)


def run(job_: str, attempt: int = 1, state: str = "running", gpus: int = 1) -> D.AttemptRow:
    return D.AttemptRow(job_, attempt, state, gpus, T)


def result(job_: str, attempt: int = 1, outcome: str = "succeeded") -> GangResult:
    return GangResult("n", job_, attempt, outcome, (0,), T, T + 5, 5, ("0",))  # type: ignore[arg-type]


def group(state: str = "ready", running: tuple[RunningGang, ...] = (), results: tuple[GangResult, ...] = (),
          fates: dict[tuple[str, int], str] | None = None, gone: bool = False) -> D.GroupView:
    return D.GroupView(state, running, results, fates or {}, gone_with_daemon=gone)  # type: ignore[arg-type]


def kinds(actions: list[D.Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


# (name, grant, group, now, rules, expected action kinds)
CASES: list[tuple[str, D.GrantView, D.GroupView | None, int, D.Rules, list[str]]] = [
    ("granted, start not come", grant("granted", rt=None), None, T - 1, RULES, ["Begin"]),
    ("granted, due", grant("granted", rt=None), None, T, RULES, ["Begin"]),
    ("granted, window passed unserved", grant("granted", rt=None), None, T + 100, RULES, ["Missed"]),
    ("cancelled before the daemon saw it", grant("cancelled", rt=None), None, T, RULES, []),
    ("finalized, not notified", grant("completed", rt=rt(finalized=True)), None, T, RULES, ["Notify"]),
    ("finalized and notified", grant("completed", rt=rt(finalized=True, notified=True)), None, T, RULES, []),
    ("cancelled while live", grant("cancelled"), group(), T + 1, RULES, ["Finalize"]),
    ("window over", grant("active"), group(), T + 100, RULES, ["Expire"]),
    ("reserving, pending, in time", grant("reserving", rt=rt(ever_placed=False), started_at=None),
     group("pending"), T + 9, RULES, []),
    ("reserving, pending, too long", grant("reserving", rt=rt(ever_placed=False), started_at=None),
     group("pending"), T + 10, RULES, ["OpenOutage"]),
    ("reserving, pending, placed before", grant("reserving"), group("pending"), T + 1, RULES, ["OpenOutage"]),
    ("reserving, outage on, breach due", grant("reserving", rt=rt(outage_since=T, breach_noted_at=T)),
     group("pending"), T + 60, RULES, ["UpdateBreach"]),
    ("reserving, placed, workers starting", grant("reserving", rt=rt(ever_placed=False), started_at=None),
     group("placed"), T + 1, RULES, ["Placed"]),
    ("reserving, ready: activate and launch", grant("reserving", rt=rt(ever_placed=False), started_at=None),
     group("ready"), T + 1, RULES, ["Placed", "Activate", "Launch"]),
    ("active, rescheduling", grant("active"), group("rescheduling"), T + 1, RULES, ["OpenOutage"]),
    ("active, ready again after outage", grant("active", rt=rt(outage_since=T)), group("ready"), T + 3, RULES,
     ["CloseOutage", "Launch"]),
    ("active, results: record, then next job", grant("active", attempts=(run("prep"),)),
     group(results=(result("prep"),)), T + 6, RULES, ["RecordResults", "Launch"]),
    ("active, running: nothing", grant("active", attempts=(run("prep"),)),
     group(running=(RunningGang("prep", 1, (0,), T),)), T + 2, RULES, []),
    ("active, unseen attempt proven dead: lost, retried", grant("active", attempts=(run("prep"),)),
     group(fates={("prep", 1): "dead"}), T + 2, RULES, ["EndAttempt", "Launch"]),
    ("active, unseen attempt of unknown fate: wait", grant("active", attempts=(run("prep"),)),
     group(fates={("prep", 1): "unknown"}), T + 2, RULES, []),
    ("end - grace: terminate", grant("active", attempts=(run("prep"),)),
     group(running=(RunningGang("prep", 1, (0,), T),)), T + 95, RULES, ["Terminate"]),
    ("terminated, all stopped", grant("active", rt=rt(term_sent_at=T + 95), attempts=(run("prep", state="killed"),)),
     group(), T + 97, RULES, ["FinishEarly"]),
    ("every job done", grant("active", attempts=(run("prep", state="succeeded"), run("train", state="succeeded", gpus=2))),
     group(), T + 50, RULES, ["FinishEarly"]),
    ("missing, reserving, nothing ran", grant("reserving", rt=rt(ever_placed=False), started_at=None),
     group("missing"), T + 1, RULES, ["Reserve"]),
    ("missing, active, attempt of unknown fate", grant("active", attempts=(run("prep"),)),
     group("missing", fates={("prep", 1): "unknown"}), T + 2, RULES, ["Regroup"]),
    ("missing, active, attempt proven dead", grant("active", attempts=(run("prep"),)),
     group("missing", fates={("prep", 1): "dead"}), T + 2, RULES, ["EndAttempt", "Regroup"]),
]


@pytest.mark.parametrize("name, g, grp, now, rules, expected", CASES, ids=[c[0] for c in CASES])
def test_decide_table(name: str, g: D.GrantView, grp: D.GroupView | None, now: int, rules: D.Rules,
                      expected: list[str]) -> None:
    assert kinds(D.decide(g, grp, now, rules)) == expected


def test_an_attempt_of_unknown_fate_blocks_the_next_attempt_of_its_job() -> None:
    g = grant("active", attempts=(run("prep"),))
    for fate in ("unknown", "alive"):
        acts = D.decide(g, group(fates={("prep", 1): fate}), T + 2, RULES)
        assert not [a for a in acts if isinstance(a, D.Launch)], fate
    acts = D.decide(g, group(fates={("prep", 1): "dead"}), T + 2, RULES)
    assert [(a.job, a.attempt) for a in acts if isinstance(a, D.Launch)] == [("prep", 2)]


def test_a_job_stopped_with_the_previous_daemon_is_interrupted_not_lost() -> None:
    g = grant("active", attempts=(run("prep"),))
    acts = D.decide(g, group("missing", fates={("prep", 1): "dead"}, gone=True), T + 30,
                    replace(RULES, down_since=T + 20))
    ended = [a for a in acts if isinstance(a, D.EndAttempt)]
    assert [e.state for e in ended] == ["interrupted"]
    regroup = [a for a in acts if isinstance(a, D.Regroup)]
    assert regroup == [D.Regroup(since=T + 20)]  # the outage began with the last heartbeat
    # A group that vanishes while this daemon runs: lost, outage from now.
    acts = D.decide(g, group("missing", fates={("prep", 1): "dead"}), T + 30, replace(RULES, down_since=T + 20))
    assert [a.state for a in acts if isinstance(a, D.EndAttempt)] == ["lost"]
    assert [a for a in acts if isinstance(a, D.Regroup)] == [D.Regroup(since=None)]


def test_a_late_begin_opens_an_unserved_outage_from_the_promised_start() -> None:
    g = grant("granted", rt=None)
    assert D.decide(g, None, T + 5, RULES) == [D.Begin(unserved_since=None)]  # within the timeout
    assert D.decide(g, None, T + 11, RULES) == [D.Begin(unserved_since=T)]


def test_interrupted_attempts_use_up_neither_retries_nor_the_lost_cap() -> None:
    attempts = tuple(run("prep", i, "interrupted") for i in range(1, 6))
    acts = D.decide(grant("active", attempts=attempts), group(), T + 2, RULES)
    assert [(a.job, a.attempt) for a in acts if isinstance(a, D.Launch)] == [("prep", 6)]
