"""The Ray adapter against a real local Ray (8 logical GPUs), with real short commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cellsched.executor import (
    Executor,
    GangResult,
    GangSpec,
    InvalidGang,
    NotReady,
    ReservationConflict,
    UnknownReservation,
)
from cellsched.executor.testing import (
    escaping_job,
    grandchild_pid,
    lock_held,
    pid_alive,
    until,
)

pytestmark = pytest.mark.ray

PY = sys.executable


def kill_and_restart(ray_cluster: Any, rank: Any) -> None:
    """Kill a rank actor's worker and wait until Ray has restarted it (a new incarnation)."""
    before = ray_cluster.get(rank.info.remote())["incarnation"]
    ray_cluster.kill(rank, no_restart=False)

    def restarted() -> bool:
        try:
            return ray_cluster.get(rank.info.remote(), timeout=5)["incarnation"] != before
        except Exception:  # noqa: BLE001 - restarting
            return False

    until(restarted)


def name() -> str:
    return f"cellsched/test/{uuid.uuid4().hex[:8]}"


def ready(ex: Any, width: int, seen: list[str] | None = None) -> str:
    """Reserve and wait until ready; ``seen`` collects the states observed on the way."""
    n = name()
    ex.reserve(n, width)
    states = seen if seen is not None else []
    until(lambda: states.append(ex.reservation_state(n)) or states[-1] == "ready")
    return n


def result(ex: Any, resv: str, timeout: float = 15.0) -> GangResult:
    """The one unacknowledged result, acknowledged (as the reconciler does once stored)."""
    (r,) = until(lambda: ex.poll(resv), timeout)
    ex.ack(resv, [r.key])
    return r


def spec(resv: str, run: list[str] | str, bundles: tuple[int, ...], log_dir: Path,
         job: str = "job", attempt: int = 0, env: dict[str, str] | None = None) -> GangSpec:
    return GangSpec(resv, "proj", job, attempt, run, bundles, str(log_dir), env or {})


def test_is_an_executor(rex: Any) -> None:
    assert isinstance(rex, Executor)


def test_rank_environment(rex: Any, tmp_path: Path) -> None:
    n = ready(rex, 4)
    keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "CUDA_VISIBLE_DEVICES", "CELLSCHED_PROJECT", "CELLSCHED_JOB", "CELLSCHED_ATTEMPT",
            "MY_VAR"]
    code = f"import os, json; print(json.dumps({{k: os.environ.get(k) for k in {keys!r}}}))"
    # the spec's env passes through, but cannot override what the allocator sets
    g = spec(n, [PY, "-c", code], (3, 1, 0, 2), tmp_path, job="envs", attempt=2,
             env={"MY_VAR": "x", "RANK": "99", "CUDA_VISIBLE_DEVICES": "7"})
    rex.launch(g)
    r = result(rex, n)
    assert r.outcome == "succeeded" and r.exit_codes == (0, 0, 0, 0)
    seen = [json.loads(Path(g.log_path(k)).read_text()) for k in range(4)]
    assert [s["RANK"] for s in seen] == ["0", "1", "2", "3"]
    assert [s["LOCAL_RANK"] for s in seen] == ["0", "1", "2", "3"]  # one node
    assert {s["WORLD_SIZE"] for s in seen} == {"4"} and {s["LOCAL_WORLD_SIZE"] for s in seen} == {"4"}
    assert len({(s["MASTER_ADDR"], s["MASTER_PORT"]) for s in seen}) == 1
    assert int(seen[0]["MASTER_PORT"]) > 0
    devices = [s["CUDA_VISIBLE_DEVICES"] for s in seen]
    assert len(set(devices)) == 4 and tuple(devices) == r.gpu_ids
    assert {(s["CELLSCHED_PROJECT"], s["CELLSCHED_JOB"], s["CELLSCHED_ATTEMPT"], s["MY_VAR"])
            for s in seen} == {("proj", "envs", "2", "x")}
    assert r.started_at <= r.ended_at


def test_failing_rank_stops_its_gang(rex: Any, tmp_path: Path) -> None:
    n = ready(rex, 3)
    # rank 1 fails at once; ranks 0 and 2 would sleep a minute
    run = 'if [ "$RANK" = 1 ]; then exit 3; fi; exec sleep 60'
    rex.launch(spec(n, run, (0, 1, 2), tmp_path))
    t0 = time.monotonic()
    r = result(rex, n, timeout=10)
    assert time.monotonic() - t0 < 5
    assert (r.outcome, r.exit_codes) == ("failed", (-15, 3, -15))
    assert rex.running(n) == []


def test_terminate_cooperative_then_kill_stubborn(rex: Any, tmp_path: Path) -> None:
    n = ready(rex, 2)
    rex.launch(spec(n, ["sleep", "60"], (0,), tmp_path, job="coop"))
    pidfile = tmp_path / "grandchild.pid"
    stubborn = f"trap '' TERM; sleep 300 & echo $! > {pidfile}; while :; do sleep 0.05; done"
    rex.launch(spec(n, stubborn, (1,), tmp_path, job="stubborn"))
    until(lambda: pidfile.exists() and pidfile.read_text().strip())
    grandchild = int(pidfile.read_text())

    rex.terminate(n)
    coop = result(rex, n, timeout=5)
    assert (coop.job, coop.outcome, coop.exit_codes) == ("coop", "killed", (-15,))
    time.sleep(0.3)
    assert [g.job for g in rex.running(n)] == ["stubborn"]  # ignored SIGTERM

    rex.kill(n, job="stubborn")
    r = result(rex, n, timeout=5)
    assert (r.job, r.outcome, r.exit_codes) == ("stubborn", "killed", (-9,))
    until(lambda: not pid_alive(grandchild), timeout=2)  # SIGKILLed; the kernel may lag under load


def test_release_returns_what_was_never_acked(rex: Any, tmp_path: Path) -> None:
    n = ready(rex, 2)
    rex.launch(spec(n, ["true"], (0,), tmp_path, job="shown"))
    rex.launch(spec(n, ["sleep", "60"], (1,), tmp_path, job="long"))
    (r,) = until(lambda: rex.poll(n))  # shown, never acknowledged (the daemon died)
    got = rex.release(n)
    assert [(x.job, x.outcome) for x in got] == [("long", "killed"), ("shown", "succeeded")]
    assert got[1] == r


def test_release_frees_gpus_and_reports_killed(rex: Any, ray_cluster: Any, tmp_path: Path) -> None:
    seen: list[str] = []
    n = ready(rex, 8, seen)
    # 8 new rank workers take seconds to start: meanwhile the group holds its GPUs ("placed"),
    # which is not a shortfall of hardware; states only move forward
    order = ["pending", "placed", "ready"]
    assert "placed" in seen and [order.index(x) for x in seen] == sorted(order.index(x) for x in seen)
    rex.launch(spec(n, ["sleep", "60"], tuple(range(8)), tmp_path))
    assert ray_cluster.available_resources().get("GPU", 0) == 0
    (r,) = rex.release(n)
    assert (r.outcome, r.exit_codes) == ("killed", (-9,) * 8)
    assert rex.reservation_state(n) == "missing"
    assert rex.release(n) == []  # idempotent
    assert rex.poll(n) == [] and rex.running(n) == []
    with pytest.raises(UnknownReservation):
        rex.launch(spec(n, ["true"], (0,), tmp_path))


def test_restarted_daemon_readopts_and_collects(rex: Any, ray_cluster: Any, tmp_path: Path) -> None:
    n = name()
    address = ray_cluster.get_runtime_context().gcs_address
    # A separate driver process reserves, launches a short job and exits: the "old daemon".
    driver = textwrap.dedent(f"""
        import time, ray
        from cellsched.executor import RayExecutor, GangSpec
        ex = RayExecutor(address={address!r})
        ex.reserve({n!r}, 2)
        while ex.reservation_state({n!r}) != "ready":
            time.sleep(0.01)
        ex.launch(GangSpec({n!r}, "proj", "job", 0, "sleep 0.5", [0, 1], {str(tmp_path)!r}))
        """)
    subprocess.run([PY, "-c", driver], check=True, timeout=60, env=os.environ.copy())
    # The new daemon finds the group by name and gets the result nobody watched.
    assert n in rex.reservations()
    rex.reserve(n, 2)  # adopting is idempotent
    with pytest.raises(ReservationConflict):
        rex.reserve(n, 3)
    assert rex.reservation_state(n) == "ready" or until(lambda: rex.reservation_state(n) == "ready")
    (r,) = until(lambda: rex.poll(n))
    assert (r.outcome, r.exit_codes) == ("succeeded", (0, 0))
    assert r.ended_at - r.started_at >= 0.5
    assert rex.poll(n) == [r]  # shown until acknowledged
    # A daemon that died before storing it: the next instance gets the same result again
    from cellsched.executor import RayExecutor
    assert RayExecutor().poll(n) == [r]
    rex.ack(n, [r.key])
    rex.ack(n, [r.key, ("nope", 9)])  # idempotent; unknown keys ignored
    assert rex.poll(n) == [] and RayExecutor().poll(n) == []  # acknowledged in the rank actors
    assert rex.release(n) == []  # nothing unacknowledged left


def test_pending_when_wider_than_cluster(rex: Any, ray_cluster: Any) -> None:
    n = name()
    rex.reserve(n, 9)  # 8 GPUs exist: Ray neither fails nor places it
    time.sleep(0.5)
    assert rex.reservation_state(n) == "pending"
    with pytest.raises(NotReady):
        rex.launch(GangSpec(n, "proj", "job", 0, ["true"], (0,), "/tmp"))
    assert rex.release(n) == []
    assert rex.reservation_state(n) == "missing"


def test_launch_idempotent_busy_and_exec_failure(rex: Any, tmp_path: Path) -> None:
    n = ready(rex, 2)
    g = spec(n, ["sleep", "60"], (0,), tmp_path, job="a")
    rex.launch(g)
    rex.launch(g)  # repeated act: no second process
    assert [(x.job, x.bundles) for x in rex.running(n)] == [("a", (0,))]
    with pytest.raises(InvalidGang, match="busy"):
        rex.launch(spec(n, ["true"], (0, 1), tmp_path, job="b"))
    with pytest.raises(InvalidGang):
        rex.launch(spec(n, ["true"], (2,), tmp_path, job="b"))
    rex.launch(spec(n, ["/no/such/program"], (1,), tmp_path, job="c"))
    r = result(rex, n)
    assert (r.job, r.outcome, r.exit_codes) == ("c", "failed", (127,))
    assert "cannot execute" in (tmp_path / "c" / "attempt-0" / "rank-0.log").read_text()
    rex.kill(n)
    r = result(rex, n)
    assert (r.job, r.outcome) == ("a", "killed")
    rex.launch(g)  # already reported: still a no-op, not a re-run
    assert rex.running(n) == []


def test_metering_uses_rank_clocks(rex: Any, tmp_path: Path) -> None:
    n = ready(rex, 2)
    rex.launch(spec(n, ["sleep", "1"], (0, 1), tmp_path))
    r = result(rex, n)
    assert r.outcome == "succeeded"
    assert 1.0 <= r.ended_at - r.started_at < 1.5
    assert r.gpu_seconds == 2


def test_rank_actor_crash_loses_gang_and_rank_comes_back(rex: Any, ray_cluster: Any,
                                                        tmp_path: Path) -> None:
    n = ready(rex, 2)
    rex.launch(spec(n, ["sleep", "60"], (0, 1), tmp_path))
    rank1 = ray_cluster.get_actor(f"{n}/rank-1", namespace="cellsched")
    ray_cluster.kill(rank1, no_restart=False)  # like a worker crash: Ray restarts the actor
    r = result(rex, n)
    assert (r.outcome, r.exit_codes, r.detail) == ("lost", (-9, None), "lost ranks 1")
    until(lambda: rex.reservation_state(n) == "ready")
    rex.launch(spec(n, ["true"], (0, 1), tmp_path, attempt=1))
    assert result(rex, n).outcome == "succeeded"


@pytest.mark.parametrize("restart", [False, True], ids=["same-daemon", "restarted-daemon"])
def test_a_lost_rank_s_result_waits_until_its_job_is_gone(rex: Any, ray_cluster: Any, tmp_path: Path,
                                                          restart: bool) -> None:
    """A rank actor that dies (Ray restarts it) leaves its supervisor to kill its job; until
    that is done (the rank's lock file is held) the gang has no result, so the daemon
    cannot start the next attempt beside it. The supervisor is held with SIGSTOP: a node so
    loaded that it has not been scheduled yet. ``restarted-daemon``: a new executor
    instance (no memory of the launch) asks."""
    import signal

    from cellsched.executor import RayExecutor

    n = ready(rex, 2)
    rex.launch(spec(n, ["sleep", "60"], (0, 1), tmp_path))
    rank1 = ray_cluster.get_actor(f"{n}/rank-1", namespace="cellsched")

    def running_record() -> dict[str, Any] | None:
        recs = ray_cluster.get(rank1.snapshot.remote())["records"]
        return next((r for r in recs if r["supervisor"] and r["ended_at"] is None), None)

    rec = until(running_record)
    sup, job = rec["supervisor"], rec["pid"]
    assert pid_alive(sup) and pid_alive(job)
    os.kill(sup, signal.SIGSTOP)
    try:
        kill_and_restart(ray_cluster, rank1)  # the rank's worker dies; Ray restarts it
        ex = RayExecutor() if restart else rex
        # a poll stops rank 0 (the peer of a lost rank), which ends; rank 1's job still runs
        rank0 = ray_cluster.get_actor(f"{n}/rank-0", namespace="cellsched")

        def rank0_ended() -> bool:
            assert pid_alive(job)
            assert ex.poll(n) == [], "a result while a lost rank's job is alive"
            return all(r["ended_at"] is not None for r in ray_cluster.get(rank0.snapshot.remote())["records"])

        until(rank0_ended)
        for _ in range(10):
            assert pid_alive(job)
            assert ex.poll(n) == [], "a result while a lost rank's job is alive"
            assert ex.running(n) == []  # nothing of it is ours to stop: the supervisor will
            time.sleep(0.1)
    finally:
        os.kill(sup, signal.SIGCONT)  # it reads EOF from its dead rank and kills the job

    def collected() -> list[GangResult]:
        got = rex.poll(n)
        assert not got or not pid_alive(job), "a result while a lost rank's job is alive"
        return got

    (r,) = until(collected)
    rex.ack(n, [r.key])
    assert (r.outcome, r.exit_codes, r.detail) == ("lost", (-9, None), "lost ranks 1")
    until(lambda: not pid_alive(sup), timeout=5)  # it has freed the lock: it exits now


# -- supervision, windows, environment, fencing, fate (issue 11) ----------------------------


@pytest.mark.parametrize("how", ["release", "kill_at", "rank-actor-killed"])
def test_escaping_grandchild_never_survives(rex: Any, ray_cluster: Any, tmp_path: Path,
                                            how: str) -> None:
    n = ready(rex, 2)
    argv, pidfile = escaping_job(tmp_path)
    now = time.time()
    window = {"term_at": now + 1.0, "kill_at": now + 1.5} if how == "kill_at" else {}
    g = GangSpec(n, "proj", "esc", 0, argv, (0, 1), str(tmp_path), **window)  # type: ignore[arg-type]
    rex.launch(g)
    gc = grandchild_pid(pidfile)
    if how == "release":
        (r,) = rex.release(n)
        assert (r.outcome, r.exit_codes) == ("killed", (-9, -9))
    elif how == "kill_at":
        # no driver call at all: the ranks' supervisors enforce the window
        until(lambda: not pid_alive(gc), timeout=5)
        # Not before the window said so: SIGTERM at term_at (the job's tree goes once its
        # leader exits), SIGKILL at kill_at; the supervisor's timers may fire a few tens of
        # ms apart from this process's clock, so the bound is term_at.
        assert time.time() >= now + 1.0
        r = result(rex, n)
        assert (r.outcome, r.exit_codes) == ("killed", (-9, -9))
    else:
        for b in (0, 1):  # whichever rank's job wrote the pid first
            ray_cluster.kill(ray_cluster.get_actor(f"{n}/rank-{b}", namespace="cellsched"))
    until(lambda: not pid_alive(gc), timeout=5)


def test_job_sees_only_the_allowlisted_environment(ray_leak_check: Any, tmp_path: Path) -> None:
    """Through a rank worker whose own environment holds secrets (as a daemon's would)."""
    from cellsched.executor._rank import RankWorker

    ray = ray_leak_check
    secrets = {"CELLSCHED_DB": "postgresql://u:pw@db/ledger", "CELLSCHED_SECRET_TOKEN": "tok",
               "AWS_SECRET_ACCESS_KEY": "key", "MY_PASSED": "passed"}
    rank = ray.remote(RankWorker).options(
        num_gpus=1, num_cpus=0, runtime_env={"env_vars": secrets}).remote("cellsched/env", 0)
    try:
        dump = [PY, "-c", "import os, json; print(json.dumps(dict(os.environ)))"]

        def run(job: str, pass_env: tuple[str, ...]) -> dict[str, str]:
            log, lock = tmp_path / f"{job}.log", tmp_path / f"{job}.lock"
            assert ray.get(rank.start.remote(
                job, 0, 0, [(0, "x", "n")], ["0"], dump, {"SPEC_VAR": "s", "RANK": "9"},
                {"RANK": "0", "WORLD_SIZE": "1", "CELLSCHED_JOB": job}, str(log), str(lock),
                None, [], 1.0, 0, None, None, pass_env), timeout=30) == "started"
            until(lambda: not ray.get(rank.info.remote())["busy"])
            return json.loads(log.read_text())

        env = run("plain", ("MY_PASSED",))
        assert not {k for k in env if "SECRET" in k or k == "CELLSCHED_DB"}
        assert env["MY_PASSED"] == "passed" and env["SPEC_VAR"] == "s"
        assert (env["RANK"], env["WORLD_SIZE"], env["CELLSCHED_JOB"]) == ("0", "1", "plain")
        assert env["PATH"] and env["CUDA_VISIBLE_DEVICES"] == ",".join(
            str(i) for i in ray.get(rank.info.remote())["gpu_ids"])
        # the worker does hold the secret: only the allowlist kept it out
        leaked = run("leak", ("CELLSCHED_DB",))
        assert leaked["CELLSCHED_DB"] == secrets["CELLSCHED_DB"]
    finally:
        ray.kill(rank)


def test_pass_env_through_the_executor(rex: Any, tmp_path: Path) -> None:
    n = ready(rex, 1)
    dump = [PY, "-c", "import os, json; print(json.dumps(dict(os.environ)))"]
    # RAY_AUTH_MODE is in every test worker's environment (set before ray.init)
    for job, pass_env in (("with", ("RAY_AUTH_MODE",)), ("without", ())):
        g = GangSpec(n, "proj", job, 0, dump, (0,), str(tmp_path), pass_env=pass_env)
        rex.launch(g)
        assert result(rex, n).outcome == "succeeded"
        env = json.loads(Path(g.log_path(0)).read_text())
        assert ("RAY_AUTH_MODE" in env) == bool(pass_env)
        assert env["CELLSCHED_JOB"] == job and "CUDA_VISIBLE_DEVICES" in env


def test_fenced_commands_are_refused(rex: Any, ray_cluster: Any, tmp_path: Path) -> None:
    from cellsched.executor import Fenced, RayExecutor

    n = ready(rex, 2)
    rex.launch(spec(n, ["sleep", "60"], (0,), tmp_path, job="a"))
    new = RayExecutor(peer_grace_s=2.0)
    new.fence(5)
    assert new.epoch == 5
    stale = RayExecutor()
    stale.epoch = 4
    try:
        for ex in (rex, stale):
            with pytest.raises(Fenced):
                ex.launch(spec(n, ["true"], (1,), tmp_path, job="b"))
            with pytest.raises(Fenced):
                ex.terminate(n)
            with pytest.raises(Fenced):
                ex.kill(n, job="a")
            with pytest.raises(Fenced):
                ex.ack(n, [("a", 0)])
            with pytest.raises(Fenced):
                ex.release(n)
        assert [g.job for g in new.running(n)] == ["a"]  # observing is never refused
        new.launch(spec(n, ["true"], (1,), tmp_path, job="b"))
        new.kill(n, job="a")
        got = {r.job: r.outcome for r in until(lambda: len(new.poll(n)) == 2 and new.poll(n))}
        assert got == {"a": "killed", "b": "succeeded"}
        new.ack(n, [("a", 0), ("b", 0)])
        # a rank Ray restarts (as after a node loss) comes back with its creation arguments
        # (epoch 0) but does not forget the fence
        rank1 = ray_cluster.get_actor(f"{n}/rank-1", namespace="cellsched")
        kill_and_restart(ray_cluster, rank1)
        assert ray_cluster.get(rank1.info.remote())["epoch"] == 5
        with pytest.raises(Fenced):
            stale.launch(spec(n, ["true"], (1,), tmp_path, job="c"))
        new.launch(spec(n, ["true"], (1,), tmp_path, job="c"))
        assert result(new, n).outcome == "succeeded"
    finally:
        new.release(n)


def test_attempt_fate(rex: Any, tmp_path: Path) -> None:
    n = ready(rex, 2)
    g = spec(n, ["sleep", "60"], (1,), tmp_path, job="a")
    rex.launch(g)
    assert rex.attempt_fate(n, "a", 0, 1, str(tmp_path)) == "alive"
    rex.kill(n)
    rex.ack(n, [result(rex, n).key])
    assert rex.attempt_fate(n, "a", 0, 1, str(tmp_path)) == "dead"  # its rank reports it ended
    assert Path(g.lock_path(0)).read_text().startswith("dead")
    # the ranks don't know it, but a process of this host holds its lock: may be alive
    with lock_held(tmp_path / "held" / "attempt-0" / "rank-0.lock"):
        assert rex.attempt_fate(n, "held", 0, 1, str(tmp_path)) == "unknown"
    assert rex.attempt_fate(n, "held", 0, 1, str(tmp_path)) == "dead"
    # a gang still running when its group is released: dead, with lock-file proof
    g2 = spec(n, ["sleep", "60"], (0, 1), tmp_path, job="b")
    rex.launch(g2)
    assert rex.attempt_fate(n, "b", 0, 2, str(tmp_path)) == "alive"
    rex.release(n)
    assert rex.attempt_fate(n, "b", 0, 2, str(tmp_path)) == "dead"
    assert all(Path(g2.lock_path(r)).read_text().startswith("dead") for r in (0, 1))


def stack_of(pid: int) -> str:
    """Where a process is (py-spy, which ray[default] brings), for a failure message."""
    spy = Path(PY).with_name("py-spy")
    try:
        out = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
        return out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"(no stack: {e})"


CRASHING_DAEMON = textwrap.dedent("""
    import sys, time
    from cellsched.executor import GangSpec, RayExecutor
    ex = RayExecutor("local", ray_init=dict(num_cpus=1, num_gpus=1, include_dashboard=False,
                                            log_to_driver=False))
    n = "cellsched/test/crash"
    ex.reserve(n, 1)
    while ex.reservation_state(n) != "ready":
        time.sleep(0.01)
    ex.launch(GangSpec(n, "proj", "esc", 0, sys.argv[1:-1], [0], sys.argv[-1]))
    print("launched", flush=True)
    time.sleep(600)
""")


def test_local_ray_dying_with_its_daemon_takes_the_jobs(rex: Any, tmp_path: Path) -> None:
    """A daemon with a Ray of its own is stopped: its Ray goes, and so does every job
    process; until then the session's executor (another Ray: it cannot see the group) only
    says "unknown", and "dead" afterwards, from the lock file."""
    import signal

    argv, pidfile = escaping_job(tmp_path)
    logs = tmp_path / "logs"
    daemon = subprocess.Popen([PY, "-c", CRASHING_DAEMON, *argv, str(logs)],
                              stdout=subprocess.PIPE, env=os.environ.copy())
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == b"launched\n"
        gc = grandchild_pid(pidfile)
        n = "cellsched/test/crash"
        assert rex.reservation_state(n) == "missing"
        assert rex.attempt_fate(n, "esc", 0, 1, str(logs)) == "unknown"  # its lock is held
        daemon.send_signal(signal.SIGINT)  # Ctrl-C: the daemon exits, its local Ray with it
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:  # seen once in a full suite, never alone: say where it hung
            pytest.fail(f"the daemon did not exit within 60 s of SIGINT; it was at:\n{stack_of(daemon.pid)}")
    finally:
        daemon.kill()
    until(lambda: not pid_alive(gc), timeout=10)
    assert until(lambda: rex.attempt_fate(n, "esc", 0, 1, str(logs)) == "dead", timeout=5)
