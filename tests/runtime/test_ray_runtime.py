"""The reconciler on the session's real local Ray (8 logical GPUs) with real short jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
from sqlmodel import select

from cellsched.ledger.tables import GrantRow, GrantRuntimeRow, JobRunRow
from cellsched.runtime.clock import now_s
from cellsched.runtime.reconciler import Reconciler, Settings
from cellsched.service import Env, open_env

from runtime_builders import job, project, submit

pytestmark = pytest.mark.ray

T = TypeVar("T")
PY = sys.executable
GRACE = 2

CLUSTER = """
admins = ["root-admin"]
[policy]
grace_s = 2
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 8
gpus_per_node = 8
[[teams]]
name = "interp"
members = ["alice"]
allowance_gpu_hours = 1000
"""


@pytest.fixture
def renv(tmp_path: Path) -> Iterator[Env]:
    """A SQLite ledger over an 8-GPU pool (the session Ray's size), grace 2 s."""
    from cellsched.receipt import create_keys, key_paths

    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    create_keys(*key_paths(path))
    e = open_env(path, f"sqlite:///{tmp_path / 'ledger.db'}")
    yield e
    e.ledger.dispose()


@pytest.fixture
def rec(renv: Env, ray_leak_check: Any, tmp_path: Path) -> Iterator[Reconciler]:
    from cellsched.executor import RayExecutor

    ex = RayExecutor(peer_grace_s=1.0)
    r = Reconciler(renv, ex, settings=Settings(strict=True, notify_in_background=False,
                                               logs_root=tmp_path / "logs"))
    yield r
    for name in ex.reservations():
        if name.startswith(r.prefix):
            ex.release(name)


def drive(rec: Reconciler, done: Callable[[], T], timeout: float = 30.0, every: float = 0.1) -> T:
    end = time.monotonic() + timeout
    while True:
        rec.tick()
        v = done()
        if v:
            return v
        assert time.monotonic() < end, "timed out"
        time.sleep(every)


def finalized(env: Env, gid: int | None) -> Callable[[], GrantRow | None]:
    def check() -> GrantRow | None:
        with env.ledger.read() as s:
            rt = s.get(GrantRuntimeRow, gid)
            return s.get(GrantRow, gid) if rt is not None and rt.finalized else None
    return check


def runs(env: Env, gid: int | None) -> list[JobRunRow]:
    with env.ledger.read() as s:
        return list(s.exec(select(JobRunRow).where(JobRunRow.grant_id == gid).order_by(JobRunRow.id)).all())


def log_of(rec: Reconciler, env: Env, gid: int | None, job: str, attempt: int, rank: int) -> str:
    with env.ledger.read() as s:
        rt = s.get(GrantRuntimeRow, gid)
        assert rt is not None
    return (Path(rt.log_dir) / job / f"attempt-{attempt}" / f"rank-{rank}.log").read_text()


ENV_KEYS = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES",
            "CELLSCHED_PROJECT", "CELLSCHED_JOB", "SEQ_LEN"]
PRINT_ENV = f"import os, json; print(json.dumps({{k: os.environ.get(k) for k in {ENV_KEYS!r}}}))"


def test_ranks_see_their_environment_and_jobs_run_in_dag_order(rec: Reconciler, renv: Env) -> None:
    spec = project("envs", [
        job("first", gpus=2, run=[PY, "-c", "import time; time.sleep(0.5)"]),
        job("wide", gpus=4, after=("first",), run=[PY, "-c", PRINT_ENV], env={"SEQ_LEN": "2048"}),
        job("last", after=("wide",), run="echo last on $CELLSCHED_JOB"),
    ], gpus=4, window_s=300)
    g = submit(renv, spec, now=now_s())
    done = drive(rec, finalized(renv, g.id))
    assert done.state == "completed"
    rs = {r.job: r for r in runs(renv, g.id)}
    assert [r.state for r in rs.values()] == ["succeeded"] * 3
    assert rs["first"].ended_at <= rs["wide"].started_at <= rs["wide"].ended_at <= rs["last"].started_at  # type: ignore[operator]
    seen = [json.loads(log_of(rec, renv, g.id, "wide", 1, r)) for r in range(4)]
    assert [e["RANK"] for e in seen] == ["0", "1", "2", "3"]
    assert {e["WORLD_SIZE"] for e in seen} == {"4"} and {e["SEQ_LEN"] for e in seen} == {"2048"}
    assert {(e["CELLSCHED_PROJECT"], e["CELLSCHED_JOB"]) for e in seen} == {("envs", "wide")}
    assert len({e["CUDA_VISIBLE_DEVICES"] for e in seen}) == 4  # one device each
    assert len({(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in seen}) == 1
    assert log_of(rec, renv, g.id, "last", 1, 0).strip() == "last on last"
    assert json.loads(rs["wide"].gpu_ids) == [e["CUDA_VISIBLE_DEVICES"] for e in seen]


def test_failing_job_is_retried_then_reported(rec: Reconciler, renv: Env, tmp_path: Path) -> None:
    # Both ranks say their line before either fails (a barrier, as a real gang would meet in
    # its first collective): the first rank to fail stops its peer, which on a loaded
    # machine could otherwise be stopped before it had said anything.
    meet = tmp_path / "meet"
    fail = (f'd={meet}/$CELLSCHED_ATTEMPT; mkdir -p $d; echo trying; touch $d/$RANK; '
            'while [ $(ls $d | wc -l) -lt 2 ]; do sleep 0.1; done; exit 3')
    spec = project("failing", [job("train", gpus=2, retries=1, run=fail),
                               job("eval", after=("train",), run="true")], gpus=2, window_s=300)
    g = submit(renv, spec, now=now_s())
    done = drive(rec, finalized(renv, g.id))
    assert [(r.job, r.attempt, r.state) for r in runs(renv, g.id)] == [("train", 1, "failed"), ("train", 2, "failed")]
    assert all(3 in json.loads(r.exit_codes) for r in runs(renv, g.id))
    rep = json.loads(done.report_json or "{}")
    assert done.state == "completed" and not rep["succeeded"]
    assert [(j["name"], j["state"], len(j["attempts"])) for j in rep["jobs"]] == [("train", "failed", 2), ("eval", "blocked", 0)]
    # What the failing job said, per rank of its newest attempt, is in the report itself.
    assert rep["jobs"][0]["log_tail"] == ["trying\n", "trying\n"] and rep["jobs"][1]["log_tail"] == []


def test_window_end_kills_a_job_that_ignores_sigterm(rec: Reconciler, renv: Env) -> None:
    stubborn = [PY, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                          "print('ignoring TERM', flush=True); time.sleep(120)"]
    # 12 s: room for placement and launch before SIGTERM even on a loaded machine.
    g = submit(renv, project("stubborn", [job("train", gpus=2, run=stubborn)], gpus=2, window_s=12), now=now_s())
    done = drive(rec, finalized(renv, g.id), timeout=40)
    (r,) = runs(renv, g.id)
    assert done.state == "expired" and r.state == "killed"
    assert json.loads(r.exit_codes) == [-9, -9]
    assert done.ended_at is not None and done.ended_at >= g.end  # it held on to the very end
    assert r.ended_at is not None and g.end - 1 <= r.ended_at <= g.end + 2


def test_early_finish_refunds_exactly(rec: Reconciler, renv: Env) -> None:
    g = submit(renv, project("quick", [job("train", gpus=4, run="sleep 1")], gpus=4, window_s=600), now=now_s())
    done = drive(rec, finalized(renv, g.id))
    assert done.state == "completed"
    assert done.end == done.ended_at
    assert done.refunded_gs == 4 * (g.end - done.end)
    assert done.refunded_gs + 4 * (done.end - g.start) == done.charged_gs
    (r,) = runs(renv, g.id)
    assert 4 <= r.gpu_seconds <= 6  # 4 ranks × ~1 s, metered by the workers


def _serve(renv: Env, tmp_path: Path, ray: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address,
               CELLSCHED_LOGS=str(tmp_path / "logs"), RAY_AUTH_MODE="disabled")
    return subprocess.Popen(
        [str(Path(PY).parent / "cellsched"), "--cluster", str(renv.cluster_path), "--db", renv.ledger.url,
         "serve", "--interval", "0.2"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"serve-{time.monotonic_ns()}.log", "wb"),
    )


def _wait(fn: Callable[[], T], timeout: float = 60.0) -> T:
    end = time.monotonic() + timeout
    while not (v := fn()):
        assert time.monotonic() < end, "timed out"
        time.sleep(0.1)
    return v


def test_daemon_killed_mid_job_and_restarted_reattaches(renv: Env, ray_leak_check: Any, tmp_path: Path) -> None:
    g = submit(renv, project("survivor", [job("train", gpus=2, run="sleep 6; echo done")], gpus=2, window_s=600),
               now=now_s())
    d1 = _serve(renv, tmp_path, ray_leak_check)
    try:
        _wait(lambda: [r for r in runs(renv, g.id) if r.state == "running"])
        time.sleep(0.5)
        d1.send_signal(signal.SIGKILL)
        d1.wait(10)
        d2 = _serve(renv, tmp_path, ray_leak_check)
        try:
            done = _wait(finalized(renv, g.id))
        finally:
            d2.send_signal(signal.SIGTERM)
            d2.wait(20)
    finally:
        if d1.poll() is None:
            d1.kill()
    (r,) = runs(renv, g.id)  # re-attached: the one attempt ran to the end, nothing re-run
    assert r.state == "succeeded" and r.gpu_seconds >= 2 * 5
    assert done.state == "completed" and done.refunded_gs == 2 * (g.end - done.end)
    assert (Path(json.loads(done.report_json or "{}")["log_dir"]) / "train/attempt-1/rank-0.log").read_text().strip() == "done"


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])


def test_a_project_with_code_runs_its_sealed_snapshot(rec: Reconciler, renv: Env, tmp_path: Path) -> None:
    """The daemon ships the snapshot sealed at submit: the job reads a data file that exists
    only in the snapshot, and an edit of the directory after submit changes nothing."""
    import shutil

    from cellsched import service

    src = Path(__file__).resolve().parents[2] / "projects" / "code-demo"
    work = tmp_path / "code-demo"
    shutil.copytree(src, work)
    out = service.submit(renv, work / "code-demo.toml", "alice", now_s())
    assert out.granted, out.refusal
    (work / "data" / "planted.txt").write_text("9 9 9\n")  # after submit: must not be seen
    g = out.grant
    assert g is not None
    done = drive(rec, finalized(renv, g.id))
    assert [(r.job, r.state) for r in runs(renv, g.id)] == [("probe", "succeeded")]
    said = log_of(rec, renv, g.id, "probe", 1, 0)
    # the sealed 0.6 0.8 0.0 (norm 1), not the edited 9 9 9 (norm 15.588)
    assert said.strip() == "planted direction: 3 dims, norm 1.000", said
    assert json.loads(done.report_json or "{}")["succeeded"]
