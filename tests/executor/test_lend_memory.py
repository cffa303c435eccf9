"""Lending idle bundles on the in-memory twin (issue 16, point 4): the borrower is a
reservation of its own on the owner's GPUs, and the owner gets them back on release."""

from __future__ import annotations

import pytest

from cellsched.executor import (
    Behaviour,
    Fenced,
    GangSpec,
    InvalidGang,
    MemoryExecutor,
    NotReady,
    ReservationConflict,
    UnknownReservation,
)

OWNER = "cellsched/proj/grant"
BORROWER = "cellsched/be/task-1"


def gang(job: str, bundles: tuple[int, ...], resv: str = OWNER, attempt: int = 0) -> GangSpec:
    return GangSpec(resv, "proj", job, attempt, ["true"], bundles, "/logs")


def owner(script: object = None, width: int = 4, ready_delay: float = 0.0) -> MemoryExecutor:
    """An executor whose 4-bundle group ``OWNER`` is ready at t=10 (GPUs 0-3)."""
    ex = MemoryExecutor(script, capacity=8, ready_delay=ready_delay)  # type: ignore[arg-type]
    ex.reserve(OWNER, width)
    ex.advance(10)
    assert ex.reservation_state(OWNER) == "ready"
    return ex


def test_borrower_is_a_reservation_on_the_owners_gpus() -> None:
    ex = owner({"sweep": Behaviour(30, term_delay=2), "train": Behaviour(100)}, ready_delay=5)
    ex.launch(gang("train", (0, 1)))
    ex.lend(OWNER, [3, 2], BORROWER)
    assert ex.reservations() == [BORROWER, OWNER]
    # its own rank workers start: placed for ready_delay, then ready
    assert ex.reservation_state(BORROWER) == "placed"
    with pytest.raises(NotReady):
        ex.launch(gang("sweep", (0,), BORROWER))
    ex.advance(15)
    assert ex.reservation_state(BORROWER) == "ready"
    assert ex.reservation_state(OWNER) == "ready"  # lending disturbs nothing else
    # the owner may not use what it lent; it keeps its other idle bundles... none here
    for bundles in [(2,), (3,), (1, 2)]:
        with pytest.raises(InvalidGang):
            ex.launch(gang("eval", bundles))
    # bundle i of the borrower is bundle bundles[i] of the owner: same GPU
    ex.launch(gang("sweep", (0, 1), BORROWER))
    assert [(g.job, g.bundles) for g in ex.running(BORROWER)] == [("sweep", (0, 1))]
    assert [g.job for g in ex.running(OWNER)] == ["train"]
    ex.advance(20)
    ex.terminate(BORROWER)  # cooperative: exits term_delay later
    ex.advance(21.9)
    assert ex.poll(BORROWER) == []
    ex.advance(22)
    (r,) = ex.poll(BORROWER)
    assert (r.reservation, r.outcome, r.exit_codes, r.gpu_ids) == (
        BORROWER, "killed", (-15, -15), ("3", "2"))
    assert (r.started_at, r.ended_at, r.gpu_seconds) == (15, 22, 14)
    assert ex.poll(BORROWER) == [r]  # like any group: shown until acknowledged
    ex.ack(BORROWER, [r.key])
    assert ex.poll(BORROWER) == [] and ex.poll(OWNER) == []
    # a second attempt, released while it runs: its result comes back from release
    ex.launch(gang("sweep", (1,), BORROWER, attempt=1))
    ex.advance(25)
    (k,) = ex.release(BORROWER)
    assert (k.outcome, k.exit_codes, k.gpu_ids) == ("killed", (-9,), ("2",))
    assert ex.reservation_state(BORROWER) == "missing"
    assert ex.reservations() == [OWNER]
    assert ex.release(BORROWER) == []  # idempotent
    # the owner's rank workers on 2 and 3 start again: placed for ready_delay, its gang runs on
    assert ex.reservation_state(OWNER) == "placed"
    assert [g.job for g in ex.running(OWNER)] == ["train"]
    with pytest.raises(NotReady):
        ex.launch(gang("eval", (2, 3)))
    ex.advance(30)
    assert ex.reservation_state(OWNER) == "ready"
    ex.launch(gang("eval", (2, 3)))
    assert [(g.job, g.bundles) for g in ex.running(OWNER)] == [("eval", (2, 3)), ("train", (0, 1))]
    assert ex.overlaps() == []


def test_stubborn_borrower_runs_until_release() -> None:
    ex = owner({"sweep": Behaviour(None, ignores_sigterm=True)})
    ex.lend(OWNER, [1], BORROWER)
    ex.launch(gang("sweep", (0,), BORROWER))
    ex.terminate(BORROWER)
    ex.advance(40)
    assert [g.job for g in ex.running(BORROWER)] == ["sweep"]
    (r,) = ex.release(BORROWER)  # SIGKILL
    assert (r.outcome, r.exit_codes, r.ended_at, r.gpu_seconds) == ("killed", (-9,), 40, 30)
    ex.launch(gang("train", (0, 1)))  # ready_delay 0: the bundle is the owner's again at once


@pytest.mark.parametrize("setup, bundles, name, error, match", [
    # a running gang uses bundle 1
    ("run", [1], BORROWER, InvalidGang, r"bundles \[1\] are busy"),
    # bundle 0 ended but its result is not acknowledged (on Ray it lives in the stopped rank)
    ("unacked", [0, 2], BORROWER, InvalidGang, "not acknowledged"),
    # lent already, to another borrower
    ("lent", [3], "cellsched/be/task-2", InvalidGang, "lent already"),
    ("", [], BORROWER, InvalidGang, "at least one bundle"),
    ("", [2, 2], BORROWER, InvalidGang, "repeated"),
    ("", [4], BORROWER, InvalidGang, "outside"),
    # the same name for other bundles, or a name that is a group
    ("lent", [2], BORROWER, ReservationConflict, "borrows bundles"),
    ("", [2], OWNER, ReservationConflict, "exists"),
    # a name without the prefix
    ("", [2], "other/be", ValueError, "must start with"),
])
def test_lend_refuses(setup: str, bundles: list[int], name: str, error: type,
                      match: str) -> None:
    ex = owner({"run": Behaviour(None), "unacked": Behaviour(1)})
    if setup in ("run", "unacked"):
        ex.launch(gang(setup, (0, 1)))
        ex.advance(11)
    if setup == "lent":
        ex.lend(OWNER, [3], BORROWER)
    with pytest.raises(error, match=match):
        ex.lend(OWNER, bundles, name)


def test_lend_needs_a_placed_owner() -> None:
    ex = MemoryExecutor(capacity=4, ready_delay=5)
    with pytest.raises(UnknownReservation):
        ex.lend(OWNER, [0], BORROWER)
    ex.reserve("cellsched/proj/big", 4)
    ex.reserve(OWNER, 2)  # pending: the cluster is full
    with pytest.raises(NotReady):
        ex.lend(OWNER, [0], BORROWER)
    ex.release("cellsched/proj/big")
    assert ex.reservation_state(OWNER) == "placed"  # placed may lend
    ex.lend(OWNER, [0], BORROWER)
    with pytest.raises(InvalidGang):  # a borrower does not lend on
        ex.lend(BORROWER, [0], "cellsched/be/task-2")


def test_lend_is_idempotent_and_found_again() -> None:
    ex = owner({"sweep": Behaviour(5)})
    ex.lend(OWNER, [2, 3], BORROWER)
    ex.launch(gang("sweep", (0, 1), BORROWER))
    ex.lend(OWNER, [2, 3], BORROWER)  # nothing happens: the gang goes on
    assert [g.job for g in ex.running(BORROWER)] == ["sweep"]
    # a restarted daemon finds it, lends again idempotently, and collects
    again = ex.connect(epoch=1)
    again.fence(1)
    assert again.reservations() == [BORROWER, OWNER]
    again.lend(OWNER, (2, 3), BORROWER)
    with pytest.raises(ReservationConflict):
        again.reserve(BORROWER, 2)  # a borrower is not a group to adopt
    ex.advance(15)
    (r,) = again.poll(BORROWER)
    assert r.outcome == "succeeded"
    assert again.attempt_fate(BORROWER, "sweep", 0, 2, "/logs") == "dead"
    with pytest.raises(Fenced):  # the borrower's ranks were fenced too
        ex.ack(BORROWER, [r.key])
    with pytest.raises(Fenced):
        ex.lend(OWNER, [0], "cellsched/be/task-2")
    again.ack(BORROWER, [r.key])
    assert again.release(BORROWER) == []


def test_releasing_the_owner_releases_its_borrowers() -> None:
    ex = owner({"sweep": Behaviour(None), "train": Behaviour(None)}, width=4)
    ex.lend(OWNER, [0], BORROWER)
    ex.lend(OWNER, [3], "cellsched/be/task-2")
    ex.launch(gang("sweep", (0,), BORROWER))
    ex.launch(gang("train", (1, 2)))
    ex.advance(20)
    (r,) = ex.release(OWNER)  # only the owner's own results come back
    assert (r.job, r.outcome) == ("train", "killed")
    assert ex.reservations() == []
    assert ex.reservation_state(BORROWER) == "missing"
    assert ex.release(BORROWER) == []
    # all 8 GPUs free again: an 8-wide group is placed at once
    ex.reserve("cellsched/proj/wide", 8)
    assert ex.reservation_state("cellsched/proj/wide") == "ready"


def test_borrower_follows_its_owners_node_loss() -> None:
    ex = owner({"sweep": Behaviour(None)})
    ex.lend(OWNER, [2, 3], BORROWER)
    ex.launch(gang("sweep", (0, 1), BORROWER))
    ex.lose_bundles(OWNER, [3], back_at=30)
    assert ex.reservation_state(BORROWER) == "rescheduling"
    (r,) = ex.poll(BORROWER)
    assert (r.outcome, r.exit_codes) == ("lost", (-9, None))
    ex.advance(30)
    assert ex.reservation_state(BORROWER) == "ready"
