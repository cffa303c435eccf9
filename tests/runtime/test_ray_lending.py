"""Lending on the session's real local Ray: a grant's idle GPU runs a best-effort task in ranks
of its own; the owner takes it back, SIGKILL at the grace for a task that ignores SIGTERM."""

from __future__ import annotations

import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from runtime_builders import job, project, submit
from sqlmodel import select

from cellsched import service
from cellsched.ledger.tables import (
    BestEffortTaskRow,
    EventRow,
    GrantRow,
    GrantRuntimeRow,
    JobRunRow,
)
from cellsched.runtime import logs
from cellsched.runtime.clock import now_s
from cellsched.runtime.reconciler import Reconciler, Settings
from cellsched.service import Env, open_env
from cellsched.spec.models import ProjectSpec

pytestmark = pytest.mark.ray

T = TypeVar("T")
PY = sys.executable
LEND_GRACE = 2

CLUSTER = f"""
admins = ["root-admin"]
[policy]
grace_s = 2
lend_grace_s = {LEND_GRACE}
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 8
gpus_per_node = 8
[[teams]]
name = "interp"
members = ["alice"]
allowance_gpu_hours = 1000
[[teams]]
name = "evals"
members = ["carol"]
allowance_gpu_hours = 10
best_effort_gpu_hours = 10
"""


@pytest.fixture
def lenv(tmp_path: Path) -> Iterator[Env]:
    from cellsched.receipt import create_keys, key_paths

    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    create_keys(*key_paths(path))
    e = open_env(path, f"sqlite:///{tmp_path / 'ledger.db'}")
    yield e
    e.ledger.dispose()


def drive(rec: Reconciler, done: Callable[[], T], timeout: float = 40.0) -> T:
    end = time.monotonic() + timeout
    while True:
        rec.tick()
        v = done()
        if v:
            return v
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)


def read(env: Env, fn: Callable[[Any], T]) -> T:
    with env.ledger.read() as s:
        return fn(s)


def test_an_idle_gpu_is_lent_and_a_stubborn_borrower_is_killed_at_the_grace(
        lenv: Env, ray_leak_check: Any, tmp_path: Path) -> None:
    from cellsched.executor import RayExecutor

    ex = RayExecutor(peer_grace_s=1.0)
    rec = Reconciler(lenv, ex, settings=Settings(strict=True, notify_in_background=False, logs_root=tmp_path / "logs",
                                                 lend_min_run_s=1))
    now = now_s()
    # Every GPU is some window's: a 6-GPU filler, and the owner's 2, whose first job uses one.
    filler = submit(lenv, project("filler", [job("hold", gpus=6, run=[PY, "-c", "import time; time.sleep(120)"])],
                                  gpus=6, window_s=600), now=now)
    owner = submit(lenv, project("owner", [
        job("narrow", gpus=1, run=[PY, "-c", "import time; time.sleep(4)"], env={"OWNER_SECRET": "s3"}),
        job("wide", gpus=2, after=("narrow",), run=[PY, "-c", "print('wide ran')"]),
    ], gpus=2, window_s=600), now=now)
    stubborn = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print('borrower', os.environ.get('CELLSCHED_BEST_EFFORT'), os.environ.get('CUDA_VISIBLE_DEVICES'), "
                "os.environ.get('OWNER_SECRET'), flush=True); time.sleep(120)")
    sweep = ProjectSpec.model_validate({
        "name": "sweep", "team": "evals", "owner": "carol", "problem": "which learning rate", "kind": "best-effort",
        "budget": {"gpu_hours": 1, "gpus": 1, "pool": "h100"},
        "jobs": [{"name": "trial", "run": [PY, "-c", stubborn], "gpus": 1}]})
    assert service.submit(lenv, sweep, "carol", now).best_effort is not None
    try:
        def task() -> BestEffortTaskRow:
            return read(lenv, lambda s: s.exec(select(BestEffortTaskRow)).one())

        lent = drive(rec, lambda: (t := task()).state == "running" and t.lender == owner.id and t)
        assert json.loads(lent.bundles or "[]") == [1]
        drive(rec, lambda: task().state == "preempting")  # narrow ended: wide needs bundle 1
        asked = time.monotonic()
        freed = drive(rec, lambda: (t := task()).state == "queued" and t)
        reclaim_s = time.monotonic() - asked
        assert freed.preemptions == 1 and freed.held_gs > 0
        assert LEND_GRACE - 0.5 <= reclaim_s <= LEND_GRACE + 5  # it ignored SIGTERM: SIGKILL at the grace
        wide = drive(rec, lambda: read(lenv, lambda s: s.exec(select(JobRunRow).where(
            JobRunRow.job == "wide", JobRunRow.state == "succeeded")).first()))
        assert json.loads(wide.gpu_ids)  # it had both GPUs
        (delay,) = read(lenv, lambda s: [json.loads(e.data) for e in s.exec(
            select(EventRow).where(EventRow.kind == "lending_delay")).all()])
        assert delay["grant"] == owner.id and 0 < delay["delay_s"] <= LEND_GRACE + 10
        ended = read(lenv, lambda s: [json.loads(e.data) for e in s.exec(
            select(EventRow).where(EventRow.kind == "be_ended")).all()])
        assert ended[0]["outcome"] == "preempted"
        # the borrower ran in ranks of its own: on the lent GPU, not in the owner's environment
        log = next((tmp_path / "logs").glob("sweep/*-be*/trial-0/attempt-1/rank-0.log")).read_text()
        owner_gpu = read(lenv, lambda s: json.loads(s.exec(select(JobRunRow).where(JobRunRow.job == "narrow")).one().gpu_ids))
        words = log.split()
        assert words[:2] == ["borrower", "1"] and words[3] == "None", log
        assert words[2] not in owner_gpu  # narrow had bundle 0; the borrower had bundle 1
        shown = io.StringIO()  # what `cellsched logs sweep trial-0 --attempt 1` prints
        assert logs.show(lenv, "sweep", "trial-0", None, 1, out=shown) == 1 and shown.getvalue() == log
    finally:
        service.cancel(lenv, "sweep", "carol", now_s())
        service.cancel(lenv, "filler", "alice", now_s())
        drive(rec, lambda: read(lenv, lambda s: all(
            rt.finalized for rt in s.exec(select(GrantRuntimeRow)).all())
            and s.exec(select(GrantRow).where(GrantRow.id == owner.id)).one().state == "completed"
            and not [t for t in s.exec(select(BestEffortTaskRow)).all() if t.state in ("running", "preempting")]))
        for name in ex.reservations():
            if name.startswith(rec.prefix):
                ex.release(name)
    assert filler.id != owner.id
