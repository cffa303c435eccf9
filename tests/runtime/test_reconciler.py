"""The reconciler on the in-memory twin (virtual clock), on SQLite and PostgreSQL."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from cellsched import service
from cellsched.executor import Behaviour, GangSpec, MemoryExecutor
from cellsched.ledger import events as ledger_events
from cellsched.service import Env

from runtime_builders import T0, Harness, job, project, submit

GRACE = 5  # tests/conftest.py's cluster: grace_s = 5, 16 H100s


# -- DAG order, retries, reports ----------------------------------------------------------


def test_jobs_run_in_dag_order_and_the_report_says_so(env: Env, tmp_path: Path) -> None:
    spec = project("dag", [
        job("prep"),
        job("train-a", gpus=2, after=("prep",)),
        job("train-b", gpus=2, after=("prep",)),
        job("merge", after=("train-a", "train-b")),
    ], gpus=4, window_s=100)
    g = submit(env, spec)
    h = Harness(env, tmp_path, {"prep": Behaviour(5), "train-a": Behaviour(7),
                                "train-b": Behaviour(5), "merge": Behaviour(3)})
    done = h.run_until_done(g.id)
    runs = {r.job: r for r in h.runs(g.id)}
    assert [r.state for r in runs.values()] == ["succeeded"] * 4
    assert runs["prep"].ended_at <= runs["train-a"].started_at  # type: ignore[operator]
    assert runs["train-a"].started_at == runs["train-b"].started_at  # both fit at once
    assert runs["merge"].started_at >= max(runs["train-a"].ended_at, runs["train-b"].ended_at)  # type: ignore[operator,type-var]
    assert runs["train-a"].gpu_seconds == 14 and runs["merge"].gpu_seconds == 3
    assert done.state == "completed"
    rep = h.report(g.id)
    assert rep["succeeded"] and [j["state"] for j in rep["jobs"]] == ["succeeded"] * 4
    assert rep["digest"] == g.digest and rep["receipt"]["signature"]
    assert rep["gpu_seconds"]["used"] == 5 + 14 + 10 + 3
    md = Path(rep["log_dir"]) / "report.md"
    assert md.exists() and "dag@" in md.read_text() and (Path(rep["log_dir"]) / "report.json").exists()
    with env.ledger.read() as s:
        assert ledger_events.audit(s).ok


def test_failing_job_is_retried_then_reported_and_its_dependants_never_run(env: Env, tmp_path: Path) -> None:
    spec = project("flaky", [job("train", retries=2), job("eval", after=("train",))])
    g = submit(env, spec)
    h = Harness(env, tmp_path, {"train": Behaviour(4, exit_code=3)})
    done = h.run_until_done(g.id)
    assert h.attempts(g.id) == [("train", 1, "failed"), ("train", 2, "failed"), ("train", 3, "failed")]
    assert [json.loads(r.exit_codes) for r in h.runs(g.id)] == [[3]] * 3
    assert done.state == "completed"  # every job ended: the window is released early
    rep = h.report(g.id)
    assert not rep["succeeded"]
    assert [(j["name"], j["state"]) for j in rep["jobs"]] == [("train", "failed"), ("eval", "blocked")]


def test_a_retry_that_succeeds_unblocks_the_rest(env: Env, tmp_path: Path) -> None:
    spec = project("second-time", [job("train", gpus=2, retries=1), job("eval", after=("train",))])
    g = submit(env, spec)

    def script(gang: GangSpec) -> Behaviour:
        return Behaviour(3, exit_code=1 if gang.job == "train" and gang.attempt == 1 else 0)

    h = Harness(env, tmp_path, script)
    h.run_until_done(g.id)
    assert h.attempts(g.id) == [("train", 1, "failed"), ("train", 2, "succeeded"), ("eval", 1, "succeeded")]
    assert h.report(g.id)["succeeded"]


# -- the window's end ---------------------------------------------------------------------


def test_window_end_terminates_then_kills_a_job_that_ignores_sigterm(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("stubborn", [job("train", gpus=4), job("eval", after=("train",))], window_s=60))
    h = Harness(env, tmp_path, {"train": Behaviour(None, ignores_sigterm=True)})
    h.run(T0 + 60 - GRACE - 1)
    assert not h.events("terminating")
    h.tick(T0 + 60 - GRACE)
    (term,) = h.events("terminating")
    assert term.at == T0 + 60 - GRACE
    h.run(T0 + 59)
    assert h.grant(g.id).state == "active" and h.attempts(g.id) == [("train", 1, "running")]
    h.tick(T0 + 60)
    done = h.grant(g.id)
    assert done.state == "expired" and done.end == T0 + 60 and done.refunded_gs == 0
    (run,) = h.runs(g.id)
    assert run.state == "killed" and json.loads(run.exit_codes) == [-9] * 4
    assert h.ex.reservations() == []
    rep = h.report(g.id)
    assert [(j["name"], j["state"]) for j in rep["jobs"]] == [("train", "killed"), ("eval", "blocked")]


def test_a_kill_at_the_window_end_seen_by_a_late_tick_is_not_refunded(env: Env, tmp_path: Path) -> None:
    # A tick reads its clock, then polls Ray: the kill at the window's end can arrive in a
    # tick whose clock says a second earlier. The grant held to the end; nothing is refunded.
    g = submit(env, project("stubborn", [job("train", gpus=4)], window_s=60))
    h = Harness(env, tmp_path, {"train": Behaviour(None, ignores_sigterm=True)})
    h.run(T0 + 59)
    h.ex.advance(T0 + 60)  # the executor kills at the window's end ...
    h.rec.tick(T0 + 59)    # ... and a tick that began just before sees it
    done = h.grant(g.id)
    assert done.state == "expired" and done.refunded_gs == 0 and done.ended_at == T0 + 60
    assert h.attempts(g.id) == [("train", 1, "killed")]


def test_a_job_that_checkpoints_on_sigterm_ends_the_window_early(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("polite", [job("train", gpus=4)], window_s=60))
    h = Harness(env, tmp_path, {"train": Behaviour(None, term_delay=2, term_exit_code=0)})
    done = h.run_until_done(g.id)
    assert done.state == "expired"  # its work was cut short by the window, not finished
    assert done.end == T0 + 60 - GRACE + 2
    assert done.refunded_gs == 4 * (GRACE - 2)
    assert h.attempts(g.id) == [("train", 1, "killed")]


# -- early finish -------------------------------------------------------------------------


def test_early_finish_refunds_exactly_and_a_waiting_grant_starts_early(env: Env, tmp_path: Path) -> None:
    a = submit(env, project("first", [job("train", gpus=16)], gpus=16, window_s=100))
    b = submit(env, project("second", [job("train", gpus=16)], gpus=16, window_s=50))
    assert b.start == a.end == T0 + 100
    h = Harness(env, tmp_path, {"train": Behaviour(10)})
    h.run(T0 + 10)  # first's job ran T0+0 .. T0+10 and was collected at T0+10
    a2, b2 = h.grant(a.id), h.grant(b.id)
    assert a2.state == "completed" and a2.end == a2.ended_at == T0 + 10
    assert a2.refunded_gs == 16 * 90 and a2.charged_gs == 16 * 100
    assert (b2.start, b2.end) == (T0 + 10, T0 + 60)  # moved up, same length
    assert (b2.promised_start, b2.promised_end) == (T0 + 100, T0 + 150)
    assert b2.state == "active"  # and started in the same tick
    (moved,) = h.events("moved_earlier")
    assert json.loads(moved.data)["from_start"] == T0 + 100
    h.run_until_done(b.id)
    assert h.grant(b.id).refunded_gs == 16 * 40
    # the capacity is visible to the next submit at once
    c = submit(env, project("third", [job("x", gpus=16)], gpus=16, window_s=10), now=h.now)
    assert c.start == h.now


@pytest.mark.parametrize("rule", ["start_now", "hold_oldest", "hold_when_busy"])
def test_waiting_grant_never_moves_before_its_not_before(rule: str, cluster_file: Path, ledger_url: str,
                                                         tmp_path: Path) -> None:
    """No grant's end announces that a not_before has passed: the daemon's periodic pull
    starts the grant, under every rule that starts grants now (``hold_oldest`` too)."""
    env = env_with_rule(cluster_file, ledger_url, rule)
    try:
        a = submit(env, project("first", [job("train", gpus=16)], gpus=16, window_s=100))
        nb = T0 + 30
        from datetime import datetime, timezone

        b = submit(env, project("later", [job("train", gpus=16)], gpus=16, window_s=50,
                                not_before=datetime.fromtimestamp(nb, timezone.utc)))
        assert b.start == a.end
        h = Harness(env, tmp_path, {"train": Behaviour(5)})
        h.run(T0 + 29)
        assert h.grant(b.id).start == T0 + 100  # free from T0+5, but not before its not_before
        h.run(T0 + 40)
        # it starts at the daemon's first look at or after not_before
        assert nb <= h.grant(b.id).start <= nb + 10 and h.grant(b.id).started_at == h.grant(b.id).start
    finally:
        env.ledger.dispose()


def env_with_rule(cluster_file: Path, ledger_url: str, rule: str) -> Env:
    """The test cluster with ``policy.pull_forward = rule``."""
    cluster_file.write_text(cluster_file.read_text().replace("[policy]\n", f'[policy]\npull_forward = "{rule}"\n'))
    return service.open_env(cluster_file, ledger_url)


@pytest.mark.parametrize("rule", ["start_now", "compact"])
def test_pull_forward_rules(rule: str, cluster_file: Path, ledger_url: str, tmp_path: Path) -> None:
    """a and a2 (8 GPUs each) hold T0..T0+100 and T0..T0+40, b (16) T0+100..T0+200, and c
    (16 GPUs, 50 s) waits behind b. a ends at T0+10: ``compact`` moves b to T0+40 (16 GPUs
    are free from there) and c behind it, at once; ``start_now`` moves nothing into the
    future. When a2 is stopped (T0+36, its grace), b's whole window fits now and it starts
    under both rules; c follows b under ``compact`` and keeps its window under ``start_now``."""
    e = env_with_rule(cluster_file, ledger_url, rule)
    try:
        a = submit(e, project("a", [job("t", gpus=8)], gpus=8, window_s=100))
        a2 = submit(e, project("a2", [job("u", gpus=8)], gpus=8, window_s=40))
        b = submit(e, project("b", [job("v", gpus=16)], gpus=16, window_s=100))
        c = submit(e, project("c", [job("w", gpus=16)], gpus=16, window_s=50))
        assert (a.start, a2.start, b.start, c.start) == (T0, T0, T0 + 100, T0 + 200)
        h = Harness(e, tmp_path, {"t": Behaviour(10), "u": Behaviour(None),
                                  "v": Behaviour(None), "w": Behaviour(None)})
        h.run(T0 + 12)
        if rule == "compact":
            assert [(h.grant(g.id).start - T0, h.grant(g.id).end - T0) for g in (b, c)] == [(40, 140), (140, 190)]
            assert [json.loads(m.data)["from_start"] - T0 for m in h.events("moved_earlier")] == [100, 200]
        else:
            assert (h.grant(b.id).start, h.grant(c.id).start) == (T0 + 100, T0 + 200)
            assert h.events("moved_earlier") == []
        h.run(T0 + 42)
        assert h.grant(b.id).start == T0 + 36 and h.grant(b.id).state == "active"
        assert h.grant(c.id).start == (T0 + 136 if rule == "compact" else T0 + 200)
    finally:
        e.ledger.dispose()


@pytest.mark.parametrize("rule, c_window, b_at", [
    ("hold_oldest", 50, 40), ("hold_when_busy", 50, 100), ("hold_when_busy", 11_000, 40)])
def test_the_oldest_holds_its_place_in_the_daemon(rule: str, c_window: int, b_at: int, cluster_file: Path,
                                                  ledger_url: str, tmp_path: Path) -> None:
    """The schedule of ``test_pull_forward_rules``. When a ends (T0+10), b, the oldest
    waiting grant, holds its place under ``hold_oldest``: it moves to T0+40, the earliest
    its 16 GPUs are free. ``hold_when_busy`` holds only with 3 h of work waiting in the
    pool: b and c hold 16 x 150 GPU-seconds (150 s of the pool's 16 GPUs), so nothing
    moves; with c's window 11,000 s long, 11,100 s wait and b moves as under ``hold_oldest``."""
    e = env_with_rule(cluster_file, ledger_url, rule)
    try:
        a = submit(e, project("a", [job("t", gpus=8)], gpus=8, window_s=100))
        submit(e, project("a2", [job("u", gpus=8)], gpus=8, window_s=40))
        b = submit(e, project("b", [job("v", gpus=16)], gpus=16, window_s=100))
        c = submit(e, project("c", [job("w", gpus=16)], gpus=16, window_s=c_window))
        assert (a.start, b.start, c.start) == (T0, T0 + 100, T0 + 200)
        h = Harness(e, tmp_path, {"t": Behaviour(10), "u": Behaviour(None),
                                  "v": Behaviour(None), "w": Behaviour(None)})
        h.run(T0 + 12)
        assert (h.grant(b.id).start - T0, h.grant(b.id).end - T0) == (b_at, b_at + 100)
        assert h.grant(c.id).start == T0 + 200  # start_now moves nothing else into the future
        moved = [json.loads(m.data)["from_start"] - T0 for m in h.events("moved_earlier")]
        assert moved == ([100] if b_at == 40 else [])
    finally:
        e.ledger.dispose()


# -- cancel ---------------------------------------------------------------------------------


def test_cancel_releases_the_group_and_reports(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("doomed", [job("train", gpus=4)]))
    h = Harness(env, tmp_path, {"train": Behaviour(None)})
    h.run(T0 + 3)
    assert h.ex.reservations() and h.attempts(g.id) == [("train", 1, "running")]
    service.cancel(env, "doomed", "root-admin", h.now)
    h.tick(T0 + 4)
    assert h.ex.reservations() == []
    assert h.attempts(g.id) == [("train", 1, "killed")]
    assert h.grant(g.id).state == "cancelled" and h.report(g.id)["state"] == "cancelled"


def test_cancel_before_start_needs_no_daemon_work(env: Env, tmp_path: Path) -> None:
    submit(env, project("busy", [job("t", gpus=16)], gpus=16, window_s=100))
    g = submit(env, project("never", [job("t", gpus=16)], gpus=16, window_s=100))
    service.cancel(env, "never", "root-admin", T0)
    h = Harness(env, tmp_path, {"t": Behaviour(None)})
    h.run(T0 + 150)
    assert h.runtime(g.id) is None and h.grant(g.id).state == "cancelled"


# -- crash safety ---------------------------------------------------------------------------


def test_restarted_daemon_reattaches_to_a_running_gang(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("steady", [job("train", gpus=4)]))
    h = Harness(env, tmp_path, {"train": Behaviour(20)})
    h.run(T0 + 5)
    n_events = len(h.events())
    h.restart()  # the old daemon is gone; the executor (Ray) kept running
    h.tick(T0 + 5)
    assert len(h.events()) == n_events  # idempotent: nothing new to say
    done = h.run_until_done(g.id)
    assert h.attempts(g.id) == [("train", 1, "succeeded")]
    assert len(h.events("reserving")) == 1 and done.charged_gs == 4 * 100
    assert done.refunded_gs == 4 * (100 - 20)


class Crash(Exception):
    """The daemon dies here (kill -9): nothing after this line of the tick happens."""


class CrashingExecutor:
    """The twin, except that calling ``at`` once kills the daemon before the call (or, with
    ``after``, right after a call that returned something)."""

    def __init__(self, inner: MemoryExecutor, at: str, after: bool = False) -> None:
        self.inner, self.at, self.after, self.prefix = inner, at, after, inner.prefix

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if name == self.at:
            def crash(*a: Any, **k: Any) -> Any:
                if self.after:
                    out = fn(*a, **k)
                    if not out:
                        return out
                self.at = ""
                raise Crash(name)
            return crash
        return fn


def _ended_events(h: Harness, job_name: str, attempt: int) -> list[dict[str, Any]]:
    return [d for d in (json.loads(e.data) for e in h.events("attempt_ended"))
            if (d["job"], d["attempt"]) == (job_name, attempt)]


@pytest.mark.parametrize("exit_code, outcome, codes", [(0, "succeeded", [0, 0]), (3, "failed", [3, -15])])
def test_daemon_killed_between_poll_and_commit_records_the_real_outcome(
        env: Env, tmp_path: Path, exit_code: int, outcome: str, codes: list[int]) -> None:
    g = submit(env, project("unlucky", [job("train", gpus=2, retries=1)]))
    h = Harness(env, tmp_path, {"train": Behaviour(10, exit_code=exit_code)})
    h.restart(CrashingExecutor(h.ex, "poll", after=True))
    with pytest.raises(Crash):  # poll showed the result; the daemon died before writing it
        h.run(T0 + 30)
    assert h.now == T0 + 10 and h.attempts(g.id) == [("train", 1, "running")]
    h.restart()
    h.tick(T0 + 11)  # the result is still there: recorded as it really ended
    run = h.runs(g.id)[0]  # (a failure's retry is launched in the same tick)
    assert (run.state, json.loads(run.exit_codes), run.gpu_seconds, run.ended_at) == (
        outcome, codes, 20, T0 + 10)
    assert h.ex.poll(h.runtime(g.id).reservation) == []  # type: ignore[union-attr]  # acked after the commit
    h.run_until_done(g.id)
    expected = [("train", 1, outcome)] + ([("train", 2, outcome)] if exit_code else [])
    assert h.attempts(g.id) == expected  # not lost, and a success is not re-run
    assert len(_ended_events(h, "train", 1)) == 1
    assert h.report(g.id)["succeeded"] == (exit_code == 0)


def test_daemon_killed_between_commit_and_ack_records_the_result_once(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("half-done", [job("train", gpus=2), job("eval", after=("train",))]))
    h = Harness(env, tmp_path, {"train": Behaviour(10), "eval": Behaviour(5)})
    h.restart(CrashingExecutor(h.ex, "ack"))
    with pytest.raises(Crash):
        h.run(T0 + 30)
    assert h.attempts(g.id) == [("train", 1, "succeeded")]  # committed, not acknowledged
    (name,) = h.ex.reservations()
    assert [r.job for r in h.ex.poll(name)] == ["train"]  # so the executor still shows it
    n_events = len(h.events())
    h.restart()
    h.tick(T0 + 10)  # sees it again: nothing new to write, acks it, launches eval
    assert len(_ended_events(h, "train", 1)) == 1
    assert h.ex.poll(name) == []
    assert [e.kind for e in h.events()[n_events:]] == ["attempt_started"]
    done = h.run_until_done(g.id)
    assert h.attempts(g.id) == [("train", 1, "succeeded"), ("eval", 1, "succeeded")]
    assert len(_ended_events(h, "train", 1)) == 1 and done.state == "completed"


@pytest.mark.parametrize("at", ["reserve", "launch", "release", "terminate", "ack"])
def test_kill_9_between_intent_and_action_is_repaired_on_restart(env: Env, tmp_path: Path, at: str) -> None:
    window = 30
    g = submit(env, project("crashy", [job("train", gpus=4)], window_s=window))
    script = {"train": Behaviour(None if at == "terminate" else 5, term_delay=1)}
    h = Harness(env, tmp_path, script)
    h.restart(CrashingExecutor(h.ex, at))
    with pytest.raises(Crash):
        h.run(T0 + window + 10)
    h.restart()
    done = h.run_until_done(g.id)
    assert h.ex.reservations() == []  # no leaked group
    assert len(h.events("reserving")) == 1 and done.charged_gs == 4 * window
    states = h.attempts(g.id)
    if at == "launch":
        assert states == [("train", 1, "lost"), ("train", 2, "succeeded")]
    elif at == "terminate":
        assert done.state == "expired" and states[-1][2] == "killed"
    else:
        assert states == [("train", 1, "succeeded")] and done.state == "completed"
    assert h.runtime(g.id).finalized  # type: ignore[union-attr]
    with env.ledger.read() as s:
        assert ledger_events.audit(s).ok


def test_orphan_groups_of_this_ledger_are_released_and_others_left_alone(env: Env, tmp_path: Path) -> None:
    h = Harness(env, tmp_path)
    mine, theirs = f"{h.rec.prefix}ghost/g99", "cellsched/otherledger/x/g1"
    h.ex.reserve(mine, 2)
    h.ex.reserve(theirs, 2)
    h.tick(T0)
    assert h.ex.reservations() == [theirs]
    (ev,) = h.events("orphan_released")
    assert ev.subject == mine


# -- guarantee breaches ---------------------------------------------------------------------


def test_unplaceable_group_is_recorded_as_a_breach_and_retried(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("too-wide", [job("train", gpus=16)], gpus=16, window_s=200))
    h = Harness(env, tmp_path, {"train": Behaviour(10)}, capacity=8, breach_update_s=30)
    h.run(T0 + 9)
    assert h.grant(g.id).state == "reserving" and not h.events("unplaceable")
    h.tick(T0 + 10)
    (ev,) = h.events("unplaceable")
    assert h.grant(g.id).breach_gs == 16 * 10
    h.run(T0 + 45)
    assert h.grant(g.id).breach_gs == 16 * 40  # brought up to date every 30 s
    st = service.status(env, "too-wide", h.now)[0][0]
    assert st["breach_gpu_hours"] == pytest.approx(16 * 40 / 3600)
    h.run(T0 + 200)
    done = h.grant(g.id)
    assert done.state == "expired" and done.breach_gs == 16 * 200
    rep = h.report(g.id)
    assert rep["gpu_seconds"]["breach"] == 16 * 200 and rep["jobs"][0]["state"] == "not run"
    assert h.ex.reservations() == []


@pytest.mark.parametrize("start_up", [0, 12])
def test_late_placement_breach_is_the_time_not_provided(env: Env, tmp_path: Path, start_up: int) -> None:
    g = submit(env, project("squeezed", [job("train", gpus=16)], gpus=16, window_s=200))
    h = Harness(env, tmp_path, {"train": Behaviour(10)}, capacity=16, ready_delay=start_up)
    h.ex.reserve("cellsched/intruder", 8)  # someone else's work on "our" GPUs
    h.run(T0 + 25)
    assert h.grant(g.id).state == "reserving" and h.events("unplaceable")
    h.ex.release("cellsched/intruder")
    h.tick(T0 + 26)
    # the outage ends when the group holds its GPUs, not when its workers answer
    assert h.grant(g.id).breach_gs == 16 * 26 and h.events("restored") and h.events("placed")
    ready_at = max(T0 + 26, T0 + 25 + start_up)  # placed at T0+25, seen at T0+26
    h.run(ready_at)
    g2 = h.grant(g.id)
    assert g2.state == "active" and g2.started_at == ready_at and g2.breach_gs == 16 * 26
    h.run_until_done(g.id)
    assert h.grant(g.id).breach_gs == 16 * 26


def test_slow_worker_start_up_is_not_a_breach(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("slow-start", [job("train", gpus=4)], window_s=100))
    # placement timeout 10 s; the rank workers take 25 s to answer
    h = Harness(env, tmp_path, {"train": Behaviour(10)}, ready_delay=25)
    h.tick(T0)
    (placed,) = h.events("placed")
    assert placed.at == T0 and json.loads(placed.data)["placement_delay_s"] == 0
    h.run(T0 + 24)
    assert h.grant(g.id).state == "reserving" and not h.attempts(g.id)  # placed: nothing to launch yet
    h.tick(T0 + 25)
    assert h.grant(g.id).state == "active" and h.attempts(g.id) == [("train", 1, "running")]
    done = h.run_until_done(g.id)
    assert done.breach_gs == 0 and not h.events("unplaceable") and len(h.events("placed")) == 1
    assert h.attempts(g.id) == [("train", 1, "succeeded")]


def test_node_loss_fails_the_gang_which_is_retried_after_rescheduling(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("fragile", [job("train", gpus=4, retries=0)]))
    h = Harness(env, tmp_path, {"train": Behaviour(20)})
    h.run(T0 + 5)
    (name,) = h.ex.reservations()
    h.ex.lose_bundles(name, [2, 3], back_at=T0 + 15)
    h.run(T0 + 14)
    assert h.attempts(g.id) == [("train", 1, "lost")]
    assert h.events("rescheduling")
    h.run_until_done(g.id)
    assert h.attempts(g.id) == [("train", 1, "lost"), ("train", 2, "succeeded")]
    done = h.grant(g.id)
    assert done.breach_gs == 4 * 9  # rescheduling from the tick that saw it (T0+6) to T0+15
    assert h.report(g.id)["succeeded"]


# -- notify ---------------------------------------------------------------------------------


def test_notify_command_gets_the_report(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "told.json"
    g = submit(env, project("chatty", [job("t")], notify=f"cat > {out}"))
    h = Harness(env, tmp_path, {"t": Behaviour(2)})
    h.run_until_done(g.id)
    h.tick(h.now + 1)
    assert json.loads(out.read_text())["project"] == g.project_id
    assert h.events("notified") and h.runtime(g.id).notified  # type: ignore[union-attr]


def test_notify_url_is_posted_and_a_failing_one_never_loses_the_report(env: Env, tmp_path: Path) -> None:
    got: list[dict[str, Any]] = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        ok = submit(env, project("hooked", [job("t")], notify=f"http://127.0.0.1:{srv.server_port}/hook?token=s3cret"))
        bad = submit(env, project("broken-hook", [job("t")], notify="http://127.0.0.1:9/nothing-listens"))
        h = Harness(env, tmp_path, {"t": Behaviour(2)})
        h.run_until_done(ok.id)
        h.run_until_done(bad.id)
        h.tick(h.now + 1)
    finally:
        srv.shutdown()
    assert [r["project"] for r in got] == [ok.project_id]
    (failed,) = h.events("notify_failed")
    assert "s3cret" not in "".join(e.data for e in h.events())  # no secrets in the ledger
    assert h.grant(bad.id).report_json and h.runtime(bad.id).notified  # type: ignore[union-attr]
    assert json.loads(failed.data)["error"]


# -- idempotence ----------------------------------------------------------------------------


def test_repeated_ticks_at_the_same_instant_write_nothing(env: Env, tmp_path: Path) -> None:
    submit(env, project("calm", [job("a", gpus=2), job("b", gpus=2, after=("a",))]))
    h = Harness(env, tmp_path, {"a": Behaviour(5), "b": Behaviour(5)})
    for t in range(T0, T0 + 15):
        h.tick(t)
        n = len(h.events())
        h.tick(t)
        h.tick(t)
        assert len(h.events()) == n, t


def test_a_window_missed_entirely_is_expired_with_a_full_breach(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("forgotten", [job("t")], window_s=50))
    h = Harness(env, tmp_path)
    h.tick(T0 + 500)  # no daemon ran during the whole window
    h.tick(T0 + 501)
    done = h.grant(g.id)
    assert done.state == "expired" and done.breach_gs == 4 * 50
    assert h.report(g.id)["jobs"][0]["state"] == "not run"


# -- logs -----------------------------------------------------------------------------------


def test_logs_of_a_job_before_any_attempt_say_so_in_one_sentence() -> None:
    from cellsched.errors import NotFound
    from cellsched.runtime import logs as L

    with pytest.raises(NotFound, match=r"^no attempts of job 'train': no job of this project has started yet$"):
        L.pick([], "train", None)
    with pytest.raises(NotFound, match=r"^no attempts of job 'eval' \(jobs with attempts: train\)$"):
        L.pick([L.Attempt("train", 1, "running", 2)], "eval", None)
    assert L.pick([], None, None) == []


def test_logs_show_the_newest_attempt_and_follow_stops_when_the_grant_ends(env: Env, tmp_path: Path) -> None:
    import io

    from cellsched.runtime import logs as L

    g = submit(env, project("chatty-logs", [job("train", gpus=2, retries=1)]))

    def script(gang: GangSpec) -> Behaviour:
        for r in range(gang.width):  # the twin runs nothing: write what a rank would print
            p = Path(gang.log_path(r))
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f"attempt {gang.attempt} rank {r}\n")
        return Behaviour(3, exit_code=1 if gang.attempt == 1 else 0)

    h = Harness(env, tmp_path, script)
    h.run_until_done(g.id)
    out = io.StringIO()
    assert L.show(env, "chatty-logs", "train", 1, None, out) == 1
    assert out.getvalue() == "attempt 2 rank 1\n"
    out = io.StringIO()
    L.show(env, "chatty-logs", "train", None, 1, out)
    assert "attempt 1 rank 0" in out.getvalue() and "attempt 1 rank 1" in out.getvalue()
    out = io.StringIO()
    L.follow(env, "chatty-logs", "train", 0, out=out, wait_s=5)  # returns: the grant is over
    assert out.getvalue() == "attempt 2 rank 0\n"


def test_a_window_spent_placed_waiting_for_workers_is_no_breach(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("never-warm", [job("train", gpus=4)], window_s=40))
    h = Harness(env, tmp_path, {"train": Behaviour(10)}, ready_delay=1000)  # workers never answer
    h.run(T0 + 41)
    done = h.grant(g.id)
    assert done.state == "expired" and done.breach_gs == 0  # the GPUs were held all along
    assert not h.events("unplaceable") and h.events("placed")
    assert h.report(g.id)["jobs"][0]["state"] == "not run"
