"""The supervisor on its own (no Ray): whatever a job does, nothing of it outlives its
supervisor's orders or its rank process; the lock file is the local proof of death."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cellsched.executor._supervisor import SupervisedJob, claim_dead
from cellsched.executor.testing import (
    escaping_job,
    grandchild_pid,
    lock_held,
    pid_alive,
    until,
)

PY = sys.executable


def orders(tmp: Path, argv: list[str], **kw: object) -> dict[str, object]:
    return {"argv": argv, "log": str(tmp / "job" / "rank-0.log"),
            "lock": str(tmp / "job" / "rank-0.lock"), "grace": 0.5, **kw}


def test_exit_status_log_and_lock(tmp_path: Path) -> None:
    o = orders(tmp_path, ["sh", "-c", "echo hi; sleep 0.2; exit 3"])
    job = SupervisedJob.spawn(o, {"PATH": os.environ["PATH"]})
    assert job.started() is None and job.pid and job.supervisor
    assert not claim_dead(str(o["lock"]))  # held while the job runs
    code, seconds, why = job.wait()
    assert (code, why) == (3, "-") and 0.2 <= (seconds or 0) < 5, seconds
    assert Path(str(o["log"])).read_text() == "hi\n"
    assert Path(str(o["lock"])).read_text().startswith("ended code=3")
    assert claim_dead(str(o["lock"]))  # free now, and marked dead...
    assert Path(str(o["lock"])).read_text().startswith("dead")
    # ...so that a supervisor that comes late never starts the job
    assert SupervisedJob.spawn(o, {}).started() == (125, "declared dead")
    assert "declared dead" in Path(str(o["log"])).read_text()


def test_cannot_execute(tmp_path: Path) -> None:
    o = orders(tmp_path, ["/no/such/program"])
    assert SupervisedJob.spawn(o, {}).started() == (127, "cannot execute")
    assert "cannot execute" in Path(str(o["log"])).read_text()


@pytest.mark.parametrize("how", ["main-exits", "stop", "window", "sigterm-to-supervisor"])
def test_escaping_grandchild_never_survives(tmp_path: Path, how: str) -> None:
    argv, pidfile = escaping_job(tmp_path)
    if how == "main-exits":  # the main process leaves, the daemonised grandchild stays
        argv = ["sh", "-c", f"{' '.join(argv)} & sleep 0.3; exit 0"]
    # long enough for the job to ignore SIGTERM and fork before term_at on a loaded machine
    extra = {"term_at": time.time() + 1.5, "kill_at": time.time() + 2.0} if how == "window" else {}
    job = SupervisedJob.spawn(orders(tmp_path, argv, **extra), {"PATH": os.environ["PATH"]})
    assert job.started() is None
    gc = grandchild_pid(pidfile)
    if how == "stop":
        job.signal(int(signal.SIGTERM), 0.3)  # ignored; SIGKILL 0.3 s later
    elif how == "sigterm-to-supervisor":
        os.kill(job.supervisor, signal.SIGTERM)  # grace 0.5 from its orders
    code, _, why = job.wait()
    assert not pid_alive(gc)  # nothing of the job is left once the supervisor answers
    assert (code, why) == {"main-exits": (0, "-"), "stop": (-9, "-"),
                           "window": (-9, "term_at"),
                           "sigterm-to-supervisor": (-9, "-")}[how]


def test_stop_sent_before_the_job_runs(tmp_path: Path) -> None:
    job = SupervisedJob.spawn(orders(tmp_path, ["sleep", "60"]), {"PATH": os.environ["PATH"]})
    job.signal(int(signal.SIGKILL))  # queued in the pipe while the supervisor starts
    assert job.started() is None
    t = time.monotonic()
    assert job.wait()[0] == -9 and time.monotonic() - t < 2


PARENT = textwrap.dedent("""
    import json, os, sys, time
    from cellsched.executor._supervisor import SupervisedJob
    job = SupervisedJob.spawn(json.loads(sys.argv[1]), {"PATH": os.environ["PATH"]})
    job.started()
    print(job.supervisor, flush=True)
    time.sleep(600)
""")


def test_rank_process_death_kills_everything(tmp_path: Path) -> None:
    """The supervisor's rank dies (SIGKILL, so no clean-up of its own): the job goes."""
    argv, pidfile = escaping_job(tmp_path)
    o = orders(tmp_path, argv)
    parent = subprocess.Popen([PY, "-c", PARENT, json.dumps(o)], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    supervisor = int(parent.stdout.readline())
    gc = grandchild_pid(pidfile)
    # the grandchild's parent is the supervisor (a subreaper), not init
    assert Path(f"/proc/{gc}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(supervisor)
    parent.kill()
    parent.wait()
    until(lambda: not pid_alive(gc) and not pid_alive(supervisor), timeout=5)
    assert claim_dead(str(o["lock"]))


def test_claim_dead_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "a" / "rank-0.lock"
    with lock_held(lock):
        assert not claim_dead(str(lock))
    assert claim_dead(str(lock))
    # a supervisor of another host that never wrote "ended": not provable from here...
    lock.write_text("running supervisor=1 job=2 host=elsewhere node=n1 since=0\n")
    assert not claim_dead(str(lock))
    # ...unless Ray declared its node dead
    assert claim_dead(str(lock), dead_nodes=frozenset({"n1"}))
    # one of this host killed before its clean-up, whose job's group still lives
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        lock.write_text(f"running supervisor=1 job={sleeper.pid} host=here node=n since=0\n")
        assert not claim_dead(str(lock), host="here")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert claim_dead(str(lock), host="here")


def job_env(attempt: int = 1, rank: int = 0) -> dict[str, str]:
    """A job's environment as the rank gives it: the attempt's identity included."""
    return {"PATH": os.environ["PATH"], "CELLSCHED_PROJECT": "p", "CELLSCHED_JOB": "train",
            "CELLSCHED_ATTEMPT": str(attempt), "RANK": str(rank)}


def supervisor_killed(tmp: Path) -> tuple[dict[str, object], SupervisedJob, int]:
    """An escaping job run under a supervisor that is then SIGKILLed: (orders, the rank's
    handle, the escaped grandchild's pid)."""
    argv, pidfile = escaping_job(tmp)
    o = orders(tmp, argv)
    job = SupervisedJob.spawn(o, job_env())
    assert job.started() is None and job.supervisor
    gc = grandchild_pid(pidfile)
    os.kill(job.supervisor, signal.SIGKILL)
    return o, job, gc


def test_a_killed_supervisor_s_escaped_job_is_gone_before_the_rank_answers(tmp_path: Path) -> None:
    """The supervisor itself is SIGKILLed (OOM killer, an admin): the job's grandchild that
    left its session is no longer anyone's descendant, yet it carries the attempt's
    identity; the rank's answer (the proof the daemon retries on) comes only once it is
    gone."""
    o, job, gc = supervisor_killed(tmp_path)
    assert job.wait() == (-9, None, "supervisor-lost")
    assert not pid_alive(gc)
    assert claim_dead(str(o["lock"]))


def test_claim_dead_waits_for_a_process_that_carries_the_attempt(tmp_path: Path) -> None:
    """A supervisor killed before its clean-up left "running" in the lock: while any process
    of this host carries that attempt's identity (outside the job's group and session),
    its death is not proven; another attempt's or rank's processes do not count."""
    o, job, gc = supervisor_killed(tmp_path)
    until(lambda: not pid_alive(job.supervisor or 0))
    os.killpg(job.pid or 0, signal.SIGKILL)  # the group goes; the grandchild has left it
    others = [subprocess.Popen(["sleep", "60"], env=job_env(attempt=2), start_new_session=True),
              subprocess.Popen(["sleep", "60"], env=job_env(rank=1), start_new_session=True)]
    try:
        assert pid_alive(gc) and not claim_dead(str(o["lock"]))
        assert Path(str(o["lock"])).read_text().startswith("running")
        os.kill(gc, signal.SIGKILL)
        until(lambda: not pid_alive(gc))
        assert claim_dead(str(o["lock"]))
    finally:
        for p in others:
            p.kill()
            p.wait()
