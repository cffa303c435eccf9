"""The in-memory twin: the Protocol's promises on a virtual clock (fast, no Ray)."""

from __future__ import annotations

import pytest

from cellsched.executor import (
    Behaviour,
    Executor,
    GangSpec,
    InvalidGang,
    MemoryExecutor,
    NotReady,
    ReservationConflict,
    UnknownReservation,
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
