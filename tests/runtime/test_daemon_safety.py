"""No job ever runs twice: a daemon that dies (or stops) with its local Ray, on the twin.

The twin's ``crash_cluster`` is what a local Ray dying with ``serve`` looks like: every group
gone, nothing reported, and the jobs' processes maybe still alive for a while (orphans).
``MemoryExecutor.overlaps()`` lists every pair of attempts of one job that ran at the same
virtual time, over the whole history: it must stay empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellsched.executor import Behaviour, Fenced
from cellsched.service import Env

from runtime_builders import T0, Harness, job, project, submit

GRACE = 5  # tests/conftest.py's cluster


def test_a_restarted_daemon_waits_for_proof_that_the_orphan_is_dead(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("orphaned", [job("train", gpus=4, retries=0)], window_s=200))
    h = Harness(env, tmp_path, {"train": Behaviour(60)})
    h.run(T0 + 10)
    assert h.attempts(g.id) == [("train", 1, "running")]
    h.ex.crash_cluster(orphans_until=T0 + 40)  # serve was kill -9'd; its jobs linger 30 s
    h.rec = h.restart()
    h.rec.rules = h.rec.rules.__class__(**{**h.rec.rules.__dict__, "down_since": T0 + 10})
    h.run(T0 + 39)
    # The group is placed again, but the orphan may still run: no attempt 2.
    assert h.attempts(g.id) == [("train", 1, "running")]
    assert h.grant(g.id).state == "active"
    h.run(T0 + 41)
    assert h.attempts(g.id) == [("train", 1, "interrupted"), ("train", 2, "running")]
    done = h.run_until_done(g.id)
    assert h.ex.overlaps() == []
    assert h.attempts(g.id) == [("train", 1, "interrupted"), ("train", 2, "succeeded")]
    assert done.state == "completed" and h.report(g.id)["succeeded"]
    # From the last heartbeat (T0+10) until the group was placed again (T0+11) the window
    # was not provided; the orphan ran the job meanwhile, so the wait for it is no breach.
    assert done.breach_gs == 4 * 1


def test_orphans_that_never_die_block_the_job_until_the_window_ends(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("stuck", [job("train", gpus=2)], gpus=2, window_s=60))
    h = Harness(env, tmp_path, {"train": Behaviour(None, ignores_sigterm=True)})
    h.run(T0 + 5)
    h.ex.crash_cluster(orphans_until=None)  # alive until the rank's own kill_at (the window's end)
    h.restart()
    done = h.run_until_done(g.id)
    assert h.ex.overlaps() == []
    assert [a[:2] for a in h.attempts(g.id)] == [("train", 1)]
    assert done.state == "expired"


def test_stopping_serve_with_its_local_ray_interrupts_jobs_which_resume_on_restart(
        env: Env, tmp_path: Path) -> None:
    g = submit(env, project("paused", [job("train", gpus=4, retries=0), job("eval", after=("train",))],
                            window_s=300))
    h = Harness(env, tmp_path, {"train": Behaviour(30, term_delay=1), "eval": Behaviour(5)})
    h.run(T0 + 10)
    out = h.rec.shutdown(local_ray=True, grace_s=0)
    assert any(a.startswith("interrupted") for a in out.actions)
    assert h.attempts(g.id) == [("train", 1, "interrupted")]  # not failed, not lost
    assert h.ex.reservations() == []
    h.ex.crash_cluster()  # the local Ray goes with the process
    h.ex.advance(T0 + 70)  # a minute without a daemon
    h.restart()
    done = h.run_until_done(g.id)
    assert h.attempts(g.id) == [("train", 1, "interrupted"), ("train", 2, "succeeded"),
                                ("eval", 1, "succeeded")]
    assert done.state == "completed" and h.ex.overlaps() == []
    # The minute without a daemon is a breach, refunded: the outage opened at the stop (T0+10)
    # and closed when the new daemon's first tick (T0+71) placed the group again.
    assert done.breach_gs == 4 * 61
    (ev,) = h.events("interrupted")
    assert json.loads(ev.data)["grant"] == g.id


def test_an_external_ray_keeps_jobs_running_through_a_daemon_stop(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("steady", [job("train", gpus=4)]))
    h = Harness(env, tmp_path, {"train": Behaviour(20)})
    h.run(T0 + 5)
    h.rec.shutdown(local_ray=False)
    assert h.attempts(g.id) == [("train", 1, "running")] and not h.events("interrupted")
    h.restart()
    done = h.run_until_done(g.id)
    assert h.attempts(g.id) == [("train", 1, "succeeded")] and done.breach_gs == 0


def test_a_window_that_began_with_no_daemon_is_a_breach_until_placed(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("late", [job("t")], window_s=100))
    h = Harness(env, tmp_path, {"t": Behaviour(5)})
    h.ex.advance(T0 + 30)  # the window began 30 s ago; no daemon was up
    done = h.run_until_done(g.id)
    assert done.breach_gs == 4 * 30
    (ev,) = h.events("unserved")
    assert json.loads(ev.data)["since"] == T0


def test_ranks_stop_the_job_at_the_window_end_with_no_daemon(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("alone", [job("train", gpus=2)], gpus=2, window_s=50))
    h = Harness(env, tmp_path, {"train": Behaviour(None, ignores_sigterm=True)})
    h.run(T0 + 5)
    (name,) = h.ex.reservations()
    h.ex.advance(T0 + 50)  # nobody ticks: the ranks enforce the window themselves
    assert h.ex.running(name) == []
    (res,) = h.ex.poll(name)
    assert res.ended_at == T0 + 50 and res.exit_codes == (-9, -9)
    h.tick(T0 + 51)
    assert h.grant(g.id).state == "expired"


def test_a_deposed_daemon_is_refused_by_the_ranks(env: Env, tmp_path: Path) -> None:
    g = submit(env, project("contested", [job("a", gpus=2), job("b", gpus=2, after=("a",))]))
    h = Harness(env, tmp_path, {"a": Behaviour(5), "b": Behaviour(5)})
    old = h.ex.connect(epoch=1)
    h.restart(old)
    h.rec.epoch = 1
    h.tick(T0)
    assert h.attempts(g.id) == [("a", 1, "running")]
    new = h.ex.connect(epoch=2)
    new.fence(2)  # a newer daemon took over and fenced the ranks
    with pytest.raises(Fenced):
        h.tick(T0 + 6)  # the old one wakes up and would launch "b"
    assert h.ex.overlaps() == []


class _Crash(BaseException):
    """kill -9, as far as the reconciler can tell."""


@pytest.mark.parametrize("how", ["none", "db_error", "kill9"])
def test_a_failed_write_or_a_crash_at_a_windows_end_loses_no_gpu_second(env: Env, tmp_path: Path, how: str) -> None:
    """A job still running at its window's end is killed, and its result is stored before
    its group is released: if the write fails (the database drops the connection) or the
    daemon dies right then, the next pass still finds the result and meters the 4 GPUs x
    30 s, not a 'killed, result not collected' attempt with 0 GPU-seconds."""
    from sqlalchemy.exc import OperationalError

    g = submit(env, project("meter", [job("train", gpus=4)], window_s=30))
    h = Harness(env, tmp_path, {"train": Behaviour(None, ignores_sigterm=True)}, strict=False)
    h.run(T0 + 29)
    assert h.attempts(g.id) == [("train", 1, "running")]
    record, failed = h.rec.writer.record_results, []

    def flaky(gid, results, now, relabel=None):  # type: ignore[no-untyped-def]
        if how != "none" and results and not failed:
            failed.append(how)
            if how == "db_error":
                raise OperationalError("UPDATE", {}, Exception("server closed the connection"))
            raise _Crash()
        return record(gid, results, now, relabel)

    h.rec.writer.record_results = flaky  # type: ignore[method-assign]
    if how == "kill9":
        with pytest.raises(_Crash):
            h.tick(T0 + 30)
        h.restart()
    else:
        h.tick(T0 + 30)
    h.run_until_done(g.id)
    [run] = h.runs(g.id)
    assert run.state == "killed" and run.gpu_seconds == 4 * 30, (run.state, run.gpu_seconds, run.detail)
    assert h.report(g.id)["gpu_seconds"]["used"] == 4 * 30


def test_an_outage_dated_from_the_last_heartbeat_does_not_refund_a_closed_one_again(env: Env, tmp_path: Path) -> None:
    """A daemon with its own local Ray is killed (-9) after closing an outage that began
    after its last heartbeat; the next daemon finds the group gone and dates the new outage
    from that heartbeat. The seconds the closed outage already refunded are not refunded
    again: the grant's breach rows never overlap, and the second outage counts from T0+15."""
    from sqlmodel import col, select

    from cellsched.ledger.tables import BreachRow
    from cellsched.runtime.reconciler import Reconciler

    g = submit(env, project("breachy", [job("train", gpus=4)], window_s=100))
    h = Harness(env, tmp_path, {"train": Behaviour(None)})
    h.run(T0 + 10)
    name = h.runtime(g.id).reservation
    h.ex.lose_bundles(name, [0])  # a node lost at T0+10: an outage opens
    h.run(T0 + 14)
    h.ex.heal(name)
    h.tick(T0 + 15)  # the group is back: the outage closes at T0+15, refunded
    closed = h.grant(g.id).breach_gs
    assert closed > 0
    h.ex.advance(T0 + 16)
    h.ex.crash_cluster(orphans_until=T0 + 16)  # kill -9 at T0+16; its local Ray dies with it
    h.ex.advance(T0 + 18)
    h.rec = Reconciler(env, h.ex, clock=lambda: int(h.ex.now), settings=h.settings, down_since=T0 + 14)
    h.tick(T0 + 18)  # the next daemon: group missing, an outage from T0+15 (not T0+14)
    with env.ledger.read() as s:
        rows = sorted((b.start, b.end) for b in s.exec(select(BreachRow).where(BreachRow.grant_id == g.id)
                                                      .order_by(col(BreachRow.id))) if b.end > b.start)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(rows, rows[1:])), rows
    assert h.grant(g.id).breach_gs == closed + 4 * 3
