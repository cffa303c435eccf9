"""The in-memory twin: the Protocol's promises on a virtual clock (fast, no Ray)."""

from __future__ import annotations

import pytest

from cellsched.executor import (
    Behaviour,
    Executor,
    Fenced,
    GangSpec,
    InvalidGang,
    MemoryExecutor,
    NotReady,
    Overlap,
    ReservationConflict,
    UnknownReservation,
    job_environment,
)

R = "cellsched/proj/r1"


def gang(job: str = "train", bundles: tuple[int, ...] = (0,), attempt: int = 0,
         resv: str = R) -> GangSpec:
    return GangSpec(resv, "proj", job, attempt, ["true"], bundles, "/logs")


def ready(script: object = None, width: int = 4, **kw: object) -> MemoryExecutor:
    ex = MemoryExecutor(script, **kw)  # type: ignore[arg-type]
    ex.reserve(R, width)
    return ex


def test_is_an_executor() -> None:
    assert isinstance(MemoryExecutor(), Executor)


@pytest.mark.parametrize(
    "behaviour, stop, outcome, codes, ended_at, gpu_seconds",
    [
        # ends on its own
        (Behaviour(10), None, "succeeded", (0, 0), 10, 20),
        # rank 1 fails at 10; rank 0 gets SIGTERM then and exits
        (Behaviour(10, exit_code=3, failing_rank=1), None, "failed", (-15, 3), 10, 20),
        # peer ignores SIGTERM: SIGKILL after peer_grace (3)
        (Behaviour(10, exit_code=3, ignores_sigterm=True), None, "failed", (3, -9), 13, 23),
        # terminated at 4, cooperative, exits 2 s later
        (Behaviour(10, term_delay=2), "terminate", "killed", (-15, -15), 6, 12),
        # a job that checkpoints and exits 0 on SIGTERM was still stopped by us
        (Behaviour(10, term_exit_code=0), "terminate", "killed", (0, 0), 4, 8),
        # terminated but ignores it: runs to its natural end
        (Behaviour(10, ignores_sigterm=True), "terminate", "succeeded", (0, 0), 10, 20),
        # killed at 4
        (Behaviour(None, ignores_sigterm=True), "kill", "killed", (-9, -9), 4, 8),
    ],
)
def test_outcomes(behaviour: Behaviour, stop: str | None, outcome: str,
                  codes: tuple[int, ...], ended_at: float, gpu_seconds: int) -> None:
    ex = ready({"train": behaviour})
    ex.launch(gang(bundles=(2, 3)))
    ex.advance(4)
    if stop:
        getattr(ex, stop)(R)
    ex.advance(100)
    (res,) = ex.poll(R)
    assert (res.outcome, res.exit_codes, res.ended_at, res.gpu_seconds) == (
        outcome, codes, ended_at, gpu_seconds)
    assert res.gpu_ids == ("2", "3")
    assert ex.poll(R) == [res]  # shown again until acknowledged
    ex.ack(R, [res.key])
    assert ex.poll(R) == []


def test_running_then_poll_until_acked() -> None:
    ex = ready({"a": Behaviour(5), "b": Behaviour(7)})
    ex.launch(gang("a", (0,)))
    ex.launch(gang("b", (1, 2)))
    assert [(g.job, g.bundles) for g in ex.running(R)] == [("a", (0,)), ("b", (1, 2))]
    ex.advance(5)
    assert [r.job for r in ex.poll(R)] == ["a"]
    assert [r.job for r in ex.poll(R)] == ["a"]  # poll has no side effects
    assert [g.job for g in ex.running(R)] == ["b"]
    ex.ack(R, [("b", 0)])  # still running: ignored
    ex.ack(R, [("a", 0), ("nope", 3)])  # unknown keys: ignored
    ex.ack(R, [("a", 0)])  # idempotent
    ex.ack("cellsched/proj/gone", [("a", 0)])  # unknown group: ignored
    assert ex.poll(R) == []
    ex.advance(8)
    assert [r.job for r in ex.poll(R)] == ["b"]
    ex.ack(R, [("b", 0)])
    assert ex.running(R) == [] and ex.poll(R) == []


def test_launch_is_idempotent_and_checks_bundles() -> None:
    ex = ready({"a": Behaviour(5)}, width=2)
    ex.launch(gang("a", (0,)))
    ex.launch(gang("a", (0,)))  # repeated act after a crash: no-op
    assert len(ex.running(R)) == 1
    with pytest.raises(InvalidGang, match="busy"):
        ex.launch(gang("b", (0, 1)))
    for bad in [(2,), (1, 1), ()]:
        with pytest.raises(InvalidGang):
            ex.launch(gang("c", bad))
    ex.advance(5)
    ex.launch(gang("b", (0, 1)))  # free again once the rank exited, even before poll
    with pytest.raises(UnknownReservation):
        ex.launch(gang(resv="cellsched/proj/nope"))


def test_script_callable_sees_attempt() -> None:
    ex = ready(lambda g: Behaviour(1, exit_code=1 if g.attempt == 0 else 0))
    ex.launch(gang(attempt=0))
    ex.advance(1)
    ex.launch(gang(attempt=1))
    ex.advance(2)
    assert [(r.attempt, r.outcome) for r in ex.poll(R)] == [(0, "failed"), (1, "succeeded")]


def test_reserve_idempotent_conflict_and_names() -> None:
    ex = ready(width=2)
    ex.reserve(R, 2)
    with pytest.raises(ReservationConflict):
        ex.reserve(R, 3)
    with pytest.raises(ValueError):
        ex.reserve("someone-else/r", 1)
    assert ex.reservations() == [R]


def test_capacity_pending_until_release() -> None:
    ex = MemoryExecutor(capacity=8, ready_delay=1)
    ex.reserve("cellsched/a", 6)
    ex.reserve("cellsched/big", 4)
    ex.reserve("cellsched/small", 2)
    # no FIFO, like Ray: the small later group passes the big pending one; placed groups hold
    # their GPUs at once, their rank workers are ready ``ready_delay`` later
    assert [ex.reservation_state(n) for n in ("cellsched/a", "cellsched/big", "cellsched/small")] \
        == ["placed", "pending", "placed"]
    with pytest.raises(NotReady):
        ex.launch(gang(resv="cellsched/a"))
    ex.advance(1)
    assert ex.reservation_state("cellsched/a") == "ready"
    assert ex.reservation_state("cellsched/small") == "ready"
    assert ex.reservation_state("cellsched/big") == "pending"
    with pytest.raises(NotReady):
        ex.launch(gang(resv="cellsched/big"))
    ex.release("cellsched/a")
    assert ex.reservation_state("cellsched/big") == "placed"  # GPUs held, warming up
    ex.advance(2)
    assert ex.reservation_state("cellsched/big") == "ready"
    assert ex.reservation_state("cellsched/a") == "missing"
    ex.release("cellsched/a")  # idempotent


def test_release_reports_what_was_never_acked() -> None:
    ex = ready({"long": Behaviour(None), "short": Behaviour(1), "done": Behaviour(1)})
    ex.launch(gang("long", (0, 1)))
    ex.launch(gang("short", (2,)))
    ex.launch(gang("done", (3,)))
    ex.advance(3)
    assert [r.job for r in ex.poll(R)] == ["done", "short"]
    ex.ack(R, [("done", 0)])  # stored by the caller; "short" was shown but never acked
    res = ex.release(R)
    assert [(r.job, r.outcome, r.exit_codes) for r in res] == [
        ("long", "killed", (-9, -9)), ("short", "succeeded", (0,))]
    assert ex.release(R) == [] and ex.reservations() == []


def test_node_loss() -> None:
    ex = ready({"wide": Behaviour(None), "other": Behaviour(None)})
    ex.launch(gang("wide", (0, 1)))
    ex.launch(gang("other", (2,)))
    ex.advance(5)
    ex.lose_bundles(R, [1], back_at=8)
    assert ex.reservation_state(R) == "rescheduling"
    (res,) = ex.poll(R)
    assert (res.job, res.outcome, res.exit_codes, res.gpu_seconds) == ("wide", "lost", (-9, None), 10)
    ex.ack(R, [res.key])
    assert [g.job for g in ex.running(R)] == ["other"]
    with pytest.raises(NotReady):
        ex.launch(gang("retry", (0, 1), attempt=1))
    ex.advance(8)
    assert ex.reservation_state(R) == "ready"
    ex.launch(gang("wide", (0, 1), attempt=1))


def test_clock_never_goes_back() -> None:
    ex = MemoryExecutor(now=5)
    with pytest.raises(ValueError):
        ex.advance(4)


# -- windows, fencing, fate, crashes (issue 11) ---------------------------------------------


def windowed(job: str = "train", bundles: tuple[int, ...] = (0,), attempt: int = 0,
             term_at: float | None = None, kill_at: float | None = None) -> GangSpec:
    return GangSpec(R, "proj", job, attempt, ["true"], bundles, "/logs",
                    term_at=term_at, kill_at=kill_at)


@pytest.mark.parametrize(
    "behaviour, term_at, kill_at, outcome, codes, ended_at",
    [
        # cooperative: SIGTERM at 6, exits 1 s later
        (Behaviour(None, term_delay=1), 6, 10, "killed", (-15, -15), 7),
        # ignores SIGTERM: SIGKILL at kill_at, with no daemon call at all
        (Behaviour(None, ignores_sigterm=True), 6, 10, "killed", (-9, -9), 10),
        # slow to exit on SIGTERM: the kill comes first
        (Behaviour(None, term_delay=9), 6, 10, "killed", (-9, -9), 10),
        # ends before its window does: untouched
        (Behaviour(3), 6, 10, "succeeded", (0, 0), 3),
        # only a kill time
        (Behaviour(None), None, 4, "killed", (-9, -9), 4),
    ],
)
def test_ranks_enforce_their_window(behaviour: Behaviour, term_at: float | None,
                                    kill_at: float | None, outcome: str,
                                    codes: tuple[int, ...], ended_at: float) -> None:
    ex = ready({"train": behaviour})
    ex.launch(windowed(bundles=(0, 1), term_at=term_at, kill_at=kill_at))
    ex.advance(ended_at - 0.5)
    assert len(ex.running(R)) == 1
    ex.advance(ended_at)
    (res,) = ex.poll(R)
    assert (res.outcome, res.exit_codes, res.ended_at) == (outcome, codes, ended_at)


def test_window_already_over_at_launch() -> None:
    ex = ready({"train": Behaviour(None, ignores_sigterm=True)}, now=20)
    ex.launch(windowed(term_at=5, kill_at=10))
    (res,) = ex.poll(R)
    assert (res.outcome, res.exit_codes, res.started_at, res.ended_at) == ("killed", (-9,), 20, 20)


def test_fence_refuses_older_epochs() -> None:
    old = ready({"a": Behaviour(None)})
    old.launch(gang("a", (0,)))
    new = old.connect(epoch=5)  # a second daemon on the same cluster
    assert new.running(R) == old.running(R) and new.now == old.now
    new.fence(5)
    assert new.epoch == 5
    deposed = new.connect(epoch=4)
    for act in (lambda e: e.launch(gang("b", (1,))), lambda e: e.terminate(R),
                lambda e: e.kill(R, "a"), lambda e: e.ack(R, [("a", 0)]),
                lambda e: e.release(R), lambda e: e.attempt_fate(R, "a", 0, 1, "/logs")):
        for e in (old, deposed):
            with pytest.raises(Fenced):
                act(e)
    assert [g.job for g in new.running(R)] == ["a"]  # nothing the deposed ones did happened
    # observing is never refused
    assert old.running(R) == new.running(R) and old.reservation_state(R) == "ready"
    new.launch(gang("b", (1,)))
    new.kill(R, "a")
    # a newer epoch carried by a command becomes what the ranks remember
    newer = new.connect(epoch=7)
    newer.terminate(R, "b")
    with pytest.raises(Fenced):
        new.ack(R, [("a", 0)])
    # groups reserved by a fenced-in daemon start at its epoch
    newer.reserve("cellsched/proj/r2", 1)
    with pytest.raises(Fenced):
        new.launch(gang("c", resv="cellsched/proj/r2"))


def test_attempt_fate() -> None:
    ex = ready({"a": Behaviour(5)})
    ex.launch(gang("a", (0, 1)))
    assert ex.attempt_fate(R, "a", 0, 2, "/logs") == "alive"
    ex.advance(5)
    assert ex.attempt_fate(R, "a", 0, 2, "/logs") == "dead"  # its ranks report it stopped
    assert ex.attempt_fate(R, "never", 0, 1, "/logs") == "dead"  # ranks answer: unknown to them
    ex.release(R)
    assert ex.attempt_fate(R, "a", 0, 2, "/logs") == "dead"


def test_crash_leaves_orphans_until_they_die() -> None:
    ex = ready({"a": Behaviour(None), "b": Behaviour(2)})
    ex.launch(gang("a", (0, 1), attempt=3))
    ex.launch(gang("b", (2,)))
    ex.advance(1)
    ex.crash_cluster(orphans_until=10)
    assert ex.reservations() == [] and ex.reservation_state(R) == "missing"
    assert ex.running(R) == [] and ex.poll(R) == [] and ex.release(R) == []
    assert ex.attempt_fate(R, "a", 3, 2, "/logs") == "unknown"
    assert ex.attempt_fate(R, "b", 0, 1, "/logs") == "unknown"
    ex.advance(2)
    assert ex.attempt_fate(R, "b", 0, 1, "/logs") == "dead"  # ended on its own
    ex.advance(9.5)
    assert ex.attempt_fate(R, "a", 3, 2, "/logs") == "unknown"
    ex.advance(10)
    assert ex.attempt_fate(R, "a", 3, 2, "/logs") == "dead"
    assert ex.overlaps() == []


def test_orphan_without_deadline_lives_until_its_kill_at() -> None:
    ex = ready({"a": Behaviour(None, ignores_sigterm=True)})
    ex.launch(windowed("a", term_at=50, kill_at=60))
    ex.crash_cluster(orphans_until=None)
    ex.advance(59)
    assert ex.attempt_fate(R, "a", 0, 1, "/logs") == "unknown"
    ex.advance(60)
    assert ex.attempt_fate(R, "a", 0, 1, "/logs") == "dead"


def test_overlaps_are_recorded() -> None:
    ex = ready({"a": Behaviour(None)})
    ex.launch(gang("a", (0,), attempt=0))
    ex.advance(1)
    ex.crash_cluster(orphans_until=5)
    # a careless daemon re-reserves and starts attempt 1 while attempt 0 still runs
    ex.reserve(R, 4)
    ex.advance(2)
    ex.launch(gang("a", (0,), attempt=1))
    ex.advance(3)
    ex.kill(R)
    ex.advance(4)
    ex.launch(gang("a", (1,), attempt=2))  # again, still before the orphan dies at 5
    ex.advance(6)
    ex.kill(R)
    ex.launch(gang("a", (2,), attempt=3))  # after every other attempt ended: fine
    assert ex.overlaps() == [Overlap(R, "a", 0, 1, 2), Overlap(R, "a", 0, 2, 4)]
    assert [(o.first, o.second) for o in ex.overlaps()] == [(0, 1), (0, 2)]


def test_overlap_of_a_running_gang_and_a_same_time_end_is_none() -> None:
    ex = ready({"a": Behaviour(2)})
    ex.launch(gang("a", (0,), attempt=0))
    ex.advance(2)
    ex.launch(gang("a", (0,), attempt=1))  # starts exactly when attempt 0 ended
    assert ex.overlaps() == []


# -- the job's environment --------------------------------------------------------------

WORKER = {
    "PATH": "/usr/bin", "HOME": "/home/w", "USER": "w", "LANG": "C.UTF-8", "LC_ALL": "C",
    "TMPDIR": "/tmp/w", "CUDA_VISIBLE_DEVICES": "3", "PYTHONPATH": "/code",
    "VIRTUAL_ENV": "/venv", "CONDA_PREFIX": "/conda", "LD_LIBRARY_PATH": "/cuda/lib",
    "CELLSCHED_DB": "postgresql://u:secret@db/ledger", "AWS_SECRET_ACCESS_KEY": "k",
    "GITHUB_TOKEN": "t", "RAY_ADDRESS": "head:6379", "PYTHONHOME": "/stale", "WANDB_API_KEY": "w",
    "HTTP_PROXY": "http://proxy",
}


@pytest.mark.parametrize(
    "pass_env, gang_env, rank_env, present, absent",
    [
        # the allowlist only
        ((), {}, {}, {"PATH": "/usr/bin", "HOME": "/home/w", "LC_ALL": "C", "TMPDIR": "/tmp/w",
                      "CUDA_VISIBLE_DEVICES": "3", "PYTHONPATH": "/code", "VIRTUAL_ENV": "/venv",
                      "CONDA_PREFIX": "/conda", "LD_LIBRARY_PATH": "/cuda/lib"},
         {"CELLSCHED_DB", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "RAY_ADDRESS", "PYTHONHOME",
          "WANDB_API_KEY", "HTTP_PROXY"}),
        # what the cluster config passes through explicitly; unknown names are skipped
        (("WANDB_API_KEY", "HTTP_PROXY", "NOT_SET"), {}, {},
         {"WANDB_API_KEY": "w", "HTTP_PROXY": "http://proxy"}, {"CELLSCHED_DB", "NOT_SET"}),
        # the spec's env wins over the worker's, but not over the reserved names
        ((), {"PATH": "/opt/bin", "MY": "x", "CUDA_VISIBLE_DEVICES": "7", "RANK": "9"}, {},
         {"PATH": "/opt/bin", "MY": "x", "CUDA_VISIBLE_DEVICES": "3"}, {"RANK"}),
        # the rank's variables win over everything
        ((), {"RANK": "9"}, {"RANK": "1", "WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "5"},
         {"RANK": "1", "WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "5"}, {"CELLSCHED_DB"}),
        # a spec may set a variable the allowlist would have dropped: that is its own choice
        ((), {"CELLSCHED_DB": "mine"}, {}, {"CELLSCHED_DB": "mine"}, {"GITHUB_TOKEN"}),
    ],
)
def test_job_environment(pass_env: tuple[str, ...], gang_env: dict[str, str],
                         rank_env: dict[str, str], present: dict[str, str],
                         absent: set[str]) -> None:
    env = job_environment(WORKER, pass_env, gang_env, rank_env)
    assert {k: env.get(k) for k in present} == present
    assert not absent & set(env)
    extra = set(env) - set(WORKER) - set(gang_env) - set(rank_env)
    assert not extra


def test_job_environment_is_exactly_the_allowlist() -> None:
    env = job_environment(WORKER, (), {}, {})
    assert set(env) == {"PATH", "HOME", "USER", "LANG", "LC_ALL", "TMPDIR", "CUDA_VISIBLE_DEVICES",
                        "PYTHONPATH", "VIRTUAL_ENV", "CONDA_PREFIX", "LD_LIBRARY_PATH"}


def test_cluster_config_pass_env() -> None:
    from pydantic import ValidationError

    from cellsched.spec.cluster import Policy

    assert Policy(pass_env=["WANDB_API_KEY", "HF_HOME"]).pass_env == ("WANDB_API_KEY", "HF_HOME")
    assert Policy().pass_env == ()
    for bad in (["CELLSCHED_DB"], ["cellsched_x"], ["A B"], ["1X"], [""]):
        with pytest.raises(ValidationError, match="pass_env"):
            Policy(pass_env=bad)


def test_an_attempt_declared_dead_never_runs_later() -> None:
    """As on Ray, where attempt_fate marks the lock files: a late launch refuses (125)."""
    ex = ready({"a": Behaviour(None)})
    ex.crash_cluster()
    assert ex.attempt_fate(R, "a", 0, 1, "/logs") == "dead"  # never launched: nothing of it
    ex.reserve(R, 4)
    ex.launch(gang("a", (0,)))
    (res,) = ex.poll(R)
    assert (res.outcome, res.exit_codes, res.gpu_seconds) == ("failed", (125,), 0)
    ex.launch(gang("a", (0,), attempt=1))  # the next attempt runs
    assert [g.attempt for g in ex.running(R)] == [1]
