"""Lending a bundle on real Ray (issue 16, point 4): the borrower gets a rank actor of its own
in the owner's bundle, on the same GPU, and the owner gets its rank back on release."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from cellsched.executor import GangResult, GangSpec, InvalidGang, RayExecutor
from cellsched.executor.testing import until

pytestmark = pytest.mark.ray

SHOW = ("import os, json; print(json.dumps({'gpu': os.environ.get('CUDA_VISIBLE_DEVICES'), "
        "'cwd': os.getcwd(), 'secret': os.environ.get('OWNER_SECRET')}))")


def result(ex: Any, resv: str) -> GangResult:
    (r,) = until(lambda: ex.poll(resv))
    ex.ack(resv, [r.key])
    return r


def seen(g: GangSpec, rank: int) -> dict[str, Any]:
    return json.loads(Path(g.log_path(rank)).read_text())


def test_lend_a_bundle_and_give_it_back(rex: Any, ray_cluster: Any, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    owner, borrower = f"cellsched/test/{tag}", f"cellsched/be/{tag}"
    home, away = tmp_path / "owner", tmp_path / "borrower"
    home.mkdir()
    away.mkdir()
    rex.reserve(owner, 2)
    until(lambda: rex.reservation_state(owner) == "ready")
    mine = GangSpec(owner, "proj", "show", 0, [sys.executable, "-c", SHOW], (0, 1),
                    str(tmp_path / "logs"), {"OWNER_SECRET": "s3cret"}, cwd=str(home))
    rex.launch(mine)
    r = result(rex, owner)
    assert r.outcome == "succeeded" and seen(mine, 1) == {
        "gpu": r.gpu_ids[1], "cwd": str(home), "secret": "s3cret"}
    old_rank = ray_cluster.get_actor(f"{owner}/rank-1")

    rex.lend(owner, [1], borrower)
    # the owner's rank on bundle 1 is gone; the bundle is not the owner's to use
    with pytest.raises(ValueError):
        ray_cluster.get_actor(f"{owner}/rank-1")
    with pytest.raises(InvalidGang):
        rex.launch(GangSpec(owner, "proj", "x", 0, ["true"], (1,), str(tmp_path / "logs")))
    assert rex.reservations() == sorted([owner, borrower])
    until(lambda: rex.reservation_state(borrower) == "ready")
    theirs = GangSpec(borrower, "be", "trial", 0, [sys.executable, "-c", SHOW], (0,),
                      str(tmp_path / "be-logs"), cwd=str(away))
    rex.launch(theirs)
    # a restarted daemon finds the borrower, lends again without effect, and sees its result
    again = RayExecutor(peer_grace_s=2.0)
    assert again.reservations() == sorted([owner, borrower])
    again.lend(owner, (1,), borrower)
    until(lambda: again.reservation_state(owner) == "ready", timeout=5)  # looks its ranks up
    with pytest.raises(ValueError):  # ... and made none again in the lent bundle
        ray_cluster.get_actor(f"{owner}/rank-1")
    b = result(again, borrower)
    assert (b.outcome, b.gpu_ids) == ("succeeded", (r.gpu_ids[1],))  # the same GPU
    assert seen(theirs, 0) == {"gpu": r.gpu_ids[1], "cwd": str(away), "secret": None}
    new_rank = ray_cluster.get_actor(f"{borrower}/rank-0")
    assert new_rank._actor_id != old_rank._actor_id  # an actor (a process) of its own

    assert rex.release(borrower) == []
    assert rex.reservation_state(borrower) == "missing"
    assert rex.reservations() == [owner]
    until(lambda: rex.reservation_state(owner) == "ready")  # its rank on bundle 1 is back
    both = GangSpec(owner, "proj", "both", 0, ["true"], (0, 1), str(tmp_path / "logs"))
    rex.launch(both)
    assert result(rex, owner).outcome == "succeeded"

    # an owner that lent every bundle is still ready (nothing of its own to ping); releasing
    # it takes the borrower it still has
    rex.lend(owner, [0, 1], f"{borrower}-2")
    assert rex.reservation_state(owner) == "ready"
    assert rex.release(owner) == []
    assert rex.reservation_state(f"{borrower}-2") == "missing"
    assert owner not in rex.reservations() and f"{borrower}-2" not in rex.reservations()


def test_a_lend_cut_short_by_a_crash_is_finished_by_the_next_daemon(rex: Any, ray_cluster: Any, tmp_path: Path) -> None:
    """The daemon died right after recording a lending (the KV record is written first) and
    before the owner's rank left the bundle: the next daemon, which only follows the borrower
    (its task is running in the ledger), gets it ready in that bundle, and no rank of the
    owner is left holding the GPU."""
    from ray.experimental.internal_kv import _internal_kv_put

    from cellsched.executor import RayExecutor
    from cellsched.executor.ray_adapter import lend_key

    tag = uuid.uuid4().hex[:8]
    owner, borrower = f"cellsched/test/{tag}", f"cellsched/be/{tag}"
    rex.reserve(owner, 2)
    until(lambda: rex.reservation_state(owner) == "ready")
    ray_cluster.get_actor(f"{owner}/rank-1")  # the owner's rank holds bundle 1's GPU
    _internal_kv_put(lend_key(borrower, owner, (1,)), b"lent", overwrite=True, namespace=rex.namespace)
    # the crash: a new daemon's executor
    again = RayExecutor(peer_grace_s=2.0)
    assert again.reservations() == sorted([owner, borrower])
    until(lambda: again.reservation_state(borrower) == "ready", timeout=15)
    with pytest.raises(ValueError):
        ray_cluster.get_actor(f"{owner}/rank-1")
    theirs = GangSpec(borrower, "be", "trial", 0, ["true"], (0,), str(tmp_path / "be-logs"))
    again.launch(theirs)
    assert result(again, borrower).outcome == "succeeded"
    assert again.release(borrower) == []
    until(lambda: again.reservation_state(owner) == "ready")  # its rank on bundle 1 is back
