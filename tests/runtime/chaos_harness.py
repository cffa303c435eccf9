"""Chaos harness: a workload of gangs with retries and ``after`` chains, served by
``cellsched serve`` (its own local Ray) that is killed at random moments and restarted, then
checked from the jobs' own stamps, the ledger and ``/proc``.

Used by ``tests/runtime/test_chaos.py`` (10 rounds per database) and ``benchmarks/chaos.py``
(50+ rounds). Only public surfaces are driven: the ``cellsched`` CLI (``init``, ``submit``,
``serve``, ``status --json``) in subprocesses, the ledger's tables read with plain SQL
(``cs_grant``, ``cs_job_run``), and ``/proc``.

The workload. Every rank of every attempt runs ``job.sh`` (``/bin/sh``), which appends to one
stamp file, with a single ``printf >>`` per line (atomic for short lines under O_APPEND)::

    start <project> <job> <attempt> <rank> <unix time> <sh pid>
    end   <project> <job> <attempt> <rank> <unix time> <sh pid> <exit code>

``end`` is written by an EXIT trap (SIGTERM/SIGINT are trapped and turned into an exit), so
only a SIGKILL leaves a ``start`` without an ``end`` (a signal that arrives before the ``start``
line is written leaves an ``end`` alone, which is reported and otherwise ignored). Jobs marked ``fail-first`` fail (exit 1)
the first time any rank of any attempt reaches the failure point (an atomic ``mkdir`` marker),
so their first real run fails and the retry succeeds. The job marked ``until-final`` is a long
training run: it lasts until the final round has begun. Every job process carries
``CHAOS_JOB=<run id>`` in its environment (the spec's ``env``, which an environment allowlist
keeps) and ``CHAOS_SH=<sh pid>`` for the ``sleep`` it waits on; the daemon and its local Ray
carry ``CHAOS_RUN=<run id>``. A background thread scans ``/proc`` every 0.2 s; every pid is
stamped when it is read (wall clock just before and just after reading its ``stat``, which
shows it alive, not a zombie), and per rank of an attempt (from the processes' own
``CELLSCHED_*``/``RANK`` environment, and ``CHAOS_SH`` or the parent chain for the shell)
the first and the last sighting are kept. cellsched's supervisors carry most of the job's
environment (not its attempt and rank) and are not the job (they kill and reap it, then
exit): they are not sightings of it (they still count as leftovers after a daemon's Ray is gone).

A round: start ``serve`` (own process group, log file), wait until it logs that it is up,
hold for a random time (seeded; now and then the signal comes while it is still starting),
send SIGKILL or SIGTERM to serve, or SIGINT to its process group (Ctrl-C), wait for it to exit
(bounded; SIGKILL to its group if it hangs), wait for its Ray to go away (bounded; leftovers are
recorded and killed), then look for job processes that outlived it (recorded as orphans,
left alive: they are the bug the test is about, and the scanner keeps timing them). A new
wave of projects is submitted whenever the previous one has finished, so the daemon has work
in every round. After the last round one final ``serve`` runs until every grant has its
report, the placement groups of its Ray are listed, and it is stopped with SIGTERM.

The checks:

- overlaps: two attempts of one job (or two copies of one rank of one attempt) proven alive
  at the same moment. A rank is proven alive over ``[alive_from, alive_to]``: ``alive_from``
  is its ``start`` stamp (or, if earlier, the end of the first ``/proc`` read that saw one of
  its processes), ``alive_to`` its ``end`` stamp or the *start* of the last read that saw one
  of its processes, whichever is later (a read shows a process alive at some moment between
  its start and end, so only those bounds are safe; and a rank's processes, its shell and
  what the shell started, form one tree alive without a gap). Two ranks overlap when those
  intervals intersect with a positive width, i.e. a process of attempt N was seen alive
  strictly after attempt N+1 was seen alive (the check is strict: no tolerance).
  Undecided (reported, not counted): a rank killed without an ``end`` stamp may have lived
  past its last sighting until the first scan that missed it (or its round's end); where
  only that possible tail meets the next attempt, the report says so with the width.
- lost results: an attempt the ledger records as ``succeeded`` whose ranks did not all stamp
  ``end`` with code 0, one recorded ``failed`` with no stamp at all, and every job that did not
  end ``succeeded`` (windows are long enough for all of them).
- double charged: an attempt recorded more than once, an attempt's GPU-seconds above what
  its stamps show (× 1.25 + 2 s per rank for start-up and rounding), and a grant's used
  GPU-hours in ``status --json`` above the sum of its attempts' stamps (same tolerance).
- leaked: placement groups not removed on the final daemon's Ray once every grant is
  finalized, job processes alive after their daemon and its Ray were gone (after a bounded
  wait), and any process of the run (job or Ray) alive after the final stop.
"""

from __future__ import annotations

import bisect
import getpass
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

CLI = str(Path(sys.executable).parent / "cellsched")
GPUS = 8
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}
# Lines of the daemon's log that say it is serving (today's and, for a standby, after takeover).
UP_MARKERS = ("daemon up",)
FINAL_STATES = {"completed", "expired", "cancelled", "replaced", "failed"}

JOB_SH = r"""#!/bin/sh
# chaos workload rank: job.sh <seconds> ok|fail-first|until-final
secs=$1
mode=$2
rc=0
child=
stamp() {
  # a signal to the job's process group can kill `date` itself: ask again
  t=$(date +%s.%N) ; [ -n "$t" ] || t=$(date +%s.%N) ; [ -n "$t" ] || t=$(date +%s.%N)
  printf '%s %s %s %s %s %s %s%s\n' "$1" "$CELLSCHED_PROJECT" "$CELLSCHED_JOB" "$CELLSCHED_ATTEMPT" \
    "${RANK:-0}" "$t" "$$" "$2" >> "$CHAOS_DIR/stamps"
}
stop() {
  rc=$1
  [ -n "$child" ] && kill "$child" 2>/dev/null
  exit "$rc"
}
trap 'stamp end " $rc"' EXIT
trap 'stop 143' TERM
trap 'stop 130' INT
stamp start ""
export CHAOS_SH=$$
if [ "$mode" = fail-first ] && mkdir "$CHAOS_DIR/failed-$CELLSCHED_PROJECT-$CELLSCHED_JOB" 2>/dev/null; then
  rc=1
  exit 1
fi
if [ "$mode" = until-final ]; then
  # a long training run: it lasts until the final round has begun
  while [ ! -e "$CHAOS_DIR/final" ]; do
    sleep 0.5 &
    child=$!
    wait "$child"
  done
fi
sleep "$secs" &
child=$!
wait "$child"
rc=$?
child=
exit "$rc"
"""


def job(name: str, gpus: int, secs: float, after: tuple[str, ...] = (), retries: int = 0,
        mode: str = "ok") -> dict[str, Any]:
    return {"name": name, "gpus": gpus, "secs": secs, "after": list(after), "retries": retries, "mode": mode}


# One wave: widths add up to the pool's 8 GPUs, so every project of a wave starts at once.
# Jobs take 1-4 s, except `soak`, a long run that lasts until the final round has begun (then
# 1 s more): an orphaned copy of it is still alive whenever a later daemon starts its next
# attempt, however slowly that daemon and its Ray start.
WAVE: list[tuple[str, int, list[dict[str, Any]]]] = [
    ("gang", 4, [job("prep", 1, 1),
                 job("train", 4, 3, after=("prep",), retries=1, mode="fail-first"),
                 job("eval", 2, 2, after=("train",))]),
    ("chain", 2, [job("a", 1, 2, retries=1, mode="fail-first"),
                  job("b", 2, 2, after=("a",)),
                  job("c", 1, 1, after=("b",), retries=2, mode="fail-first")]),
    ("soak", 1, [job("soak", 1, 1, mode="until-final"), job("tail", 1, 1, after=("soak",))]),
    ("pair", 1, [job("x", 1, 4, retries=1, mode="fail-first"), job("y", 1, 1, after=("x",))]),
]


@dataclass
class ChaosConfig:
    rounds: int = 10
    seed: int = 0
    db_url: str | None = None  # None: a SQLite ledger in the work dir
    workdir: Path | None = None
    hold_s: tuple[float, float] = (0.3, 3.5)  # how long serve runs after it is up, then a signal
    # the chance that a round's signal comes while serve is still starting (Ray, lease): then
    # hold_s counts from serve's start, not from "daemon up"
    early_p: float = 0.15
    up_timeout_s: float = 45.0
    stop_timeout_s: float = 25.0
    teardown_s: float = 2.0  # for serve's local Ray to go away after serve exited (then killed)
    final_teardown_s: float = 10.0  # the same after the final, clean stop (then a leak)
    orphan_wait_s: float = 4.0  # for job processes to go away after their Ray did
    final_timeout_s: float = 150.0
    # no new round starts after this long (seconds from the start; None: no limit): on a
    # machine too loaded to run them in time the run ends short, and says so, instead of hanging
    deadline_s: float | None = None
    window_s: int = 900
    grace_s: int = 1
    interval_s: float = 0.2
    lease_s: float = 3.0  # CELLSCHED_LEASE_S for serve: a SIGKILLed daemon's lease expires soon
    serve_args: tuple[str, ...] = ()
    say: Callable[[str], None] = field(default=lambda s: None)


@dataclass
class Round:
    index: int
    signal: str | None
    started: float
    early: bool = False
    up_after_s: float | None = None
    held_s: float = 0.0
    signalled: float | None = None
    exit_code: int | None = None
    exit_after_s: float | None = None
    exited_early: bool = False
    hung: bool = False
    ray_leftover: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    ended: float = 0.0
    log: str = ""

    def signals(self) -> dict[str, Any]:
        return {"round": self.index, "signal": self.signal, "early": self.early, "up_after_s": _r(self.up_after_s),
                "held_s": _r(self.held_s), "exit_code": self.exit_code,
                "exit_after_s": _r(self.exit_after_s), "exited_early": self.exited_early,
                "signalled_at": _r(self.signalled), "hung": self.hung, "ray_leftover": self.ray_leftover,
                "orphans": self.orphans,
                "seconds": _r(self.ended - self.started), "log": self.log}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


# -- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    pid: int
    kind: str  # "job" or "ray" (the daemon's Ray and anything else carrying CHAOS_RUN)
    env: dict[str, str]
    cmd: str
    # wall-clock times just before and just after this pid's ``stat`` was read and showed it
    # alive (not a zombie): it was alive at some moment in between, so "alive at ≥ read[0]"
    # and "alive at ≤ read[1]" are the safe claims
    read: tuple[float, float] = (0.0, 0.0)
    ppid: int = 0

    @property
    def supervisor(self) -> bool:
        """cellsched's own supervisor of a rank (it carries most of the job's environment,
        but it is not the job: it kills and reaps the job's tree, then exits)."""
        return "_supervisor.py" in self.cmd

    @property
    def sh(self) -> int:
        """The stamping shell this process belongs to (itself, or the shell of its sleep)."""
        return int(self.env.get("CHAOS_SH") or self.pid)

    def whose(self) -> str:
        e = self.env
        return (f"{e.get('CELLSCHED_PROJECT')}/{e.get('CELLSCHED_JOB')} attempt {e.get('CELLSCHED_ATTEMPT')} "
                f"rank {e.get('RANK')}")

    def describe(self) -> str:
        if self.kind == "job":
            return f"pid {self.pid} ({self.cmd[:60]}) of {self.whose()}"
        cmd = self.cmd.split("site-packages/", 1)[-1]
        return f"pid {self.pid} ({cmd[:100]})"


def rank_keys(procs: list[Proc]) -> list[tuple[Proc, tuple[str, str, int, int, int]]]:
    """Each job process of one scan (supervisors left out) with its rank's key: (project,
    job, attempt, rank, stamping shell), as in the stamps. The shell is ``CHAOS_SH`` where
    the process has it, else the top of its parent chain among this scan's job processes
    (the shell itself; a ``date`` or subshell it forked before exporting ``CHAOS_SH``)."""
    jobs = {p.pid: p for p in procs if p.kind == "job" and not p.supervisor}
    out = []
    for p in jobs.values():
        e = p.env
        if "CHAOS_SH" in e:
            sh = p.sh
        else:
            top, hops = p, 0
            while top.ppid in jobs and hops < 64:
                top, hops = jobs[top.ppid], hops + 1
            sh = top.pid
        try:
            out.append((p, (e["CELLSCHED_PROJECT"], e["CELLSCHED_JOB"], int(e["CELLSCHED_ATTEMPT"]),
                            int(e.get("RANK", "0")), sh)))
        except (KeyError, ValueError):
            continue
    return out


def scan(run_id: str) -> list[Proc]:
    """Live (non-zombie) processes of this run, from ``/proc``."""
    job_mark = f"CHAOS_JOB={run_id}".encode()
    run_mark = f"CHAOS_RUN={run_id}".encode()
    out = []
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                raw = f.read()
            if job_mark not in raw and run_mark not in raw:
                continue
            t0 = time.time()
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
            t1 = time.time()
            rest = stat[stat.rindex(b")") + 2:].split()
            if rest[0] in (b"Z", b"X"):
                continue
            ppid = int(rest[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        env = dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
        out.append(Proc(int(d), "job" if job_mark in raw else "ray", env, cmd, (t0, t1), ppid))
    return out


def kill_all(procs: list[Proc]) -> None:
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except OSError:
            pass


def wait_gone(run_id: str, kind: str, timeout: float) -> list[Proc]:
    """Poll until no process of ``kind`` of this run is left; returns what is left."""
    end = time.monotonic() + timeout
    while True:
        left = [p for p in scan(run_id) if p.kind == kind]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.1)


@dataclass
class Seen:
    """What the scanner saw of one rank's processes (its shell and what that started),
    from the per-pid read stamps (``Proc.read``)."""

    first_end: float  # the end of the first read that saw one alive: alive at some t ≤ this
    last_start: float  # the start of the last read that saw one alive: alive at some t ≥ this
    last_end: float
    last_pid: int
    reads: int = 1


class Liveness(threading.Thread):
    """Scans ``/proc`` every ``every`` s and keeps, per rank of an attempt (project, job,
    attempt, rank, stamping shell: from the processes' own environment), the read stamps of
    the first and last sighting of any of its processes alive (``Seen``), and when every scan
    began and ended."""

    def __init__(self, run_id: str, every: float = 0.2) -> None:
        super().__init__(daemon=True, name="chaos-liveness")
        self.run_id, self.every = run_id, every
        self.seen: dict[tuple[str, str, int, int, int], Seen] = {}
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            t = time.time()
            procs = scan(self.run_id)
            end = time.time()
            for p, k in rank_keys(procs):
                s = self.seen.get(k)
                if s is None:
                    self.seen[k] = Seen(p.read[1], p.read[0], p.read[1], p.pid)
                else:
                    s.first_end = min(s.first_end, p.read[1])
                    if p.read[0] >= s.last_start:
                        s.last_start, s.last_end, s.last_pid = p.read[0], p.read[1], p.pid
                    s.reads += 1
            self.starts.append(t)
            self.ends.append(end)
            self.halt.wait(self.every)

    def dead_by(self, key: tuple[str, str, int, int, int], since: float) -> float | None:
        """A time by which the rank ``key`` (alive at ``since``) and its processes were gone:
        the end of the first scan that began after its last sighting's read ended and did
        not see it; None if no scan came after. An upper bound, not a sighting."""
        s = self.seen.get(key)
        after = max(since, s.last_end if s is not None else since)
        i = bisect.bisect_right(self.starts, after)
        return self.ends[i] if i < len(self.starts) else None


# -- the work dir, the ledger, the CLI -------------------------------------------------------


class Workload:
    """The temp dir (cluster config, ledger, specs, stamps, logs) and the CLI around it."""

    def __init__(self, cfg: ChaosConfig, run_id: str) -> None:
        self.cfg, self.run_id = cfg, run_id
        self.dir = Path(cfg.workdir or tempfile.mkdtemp(prefix="cellsched-chaos-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stamps = self.dir / "stamps"
        self.stamps.touch()
        self.script = self.dir / "job.sh"
        self.script.write_text(JOB_SH)
        self.script.chmod(0o755)
        self.user = os.environ.get("CELLSCHED_USER") or getpass.getuser()
        self.cluster = self.dir / "cluster.toml"
        self.cluster.write_text(self._cluster_toml())
        self.db_url = cfg.db_url or f"sqlite:///{self.dir / 'ledger.db'}"
        self.specs: dict[str, dict[str, Any]] = {}  # project name -> spec
        self.waves = 0
        self._engine: Any = None
        out = self.cli("init")
        if out.returncode != 0:
            raise RuntimeError(f"cellsched init failed: {out.stdout}{out.stderr}")

    def _cluster_toml(self) -> str:
        u = json.dumps(self.user)
        return (f"admins = [{u}]\n[policy]\ngrace_s = {self.cfg.grace_s}\nmin_notice_s = 0\n"
                f'[[pools]]\nname = "h100"\ngpu_type = "H100"\ngpus = {GPUS}\ngpus_per_node = {GPUS}\n'
                f'[[teams]]\nname = "chaos"\nmembers = [{u}]\nallowance_gpu_hours = 100000\n')

    def env(self, **extra: str) -> dict[str, str]:
        e = dict(os.environ, CELLSCHED_DB=self.db_url, CELLSCHED_CLUSTER=str(self.cluster),
                 CELLSCHED_LOGS=str(self.dir / "logs"), RAY_AUTH_MODE="disabled", **extra)
        for k in ("RAY_ADDRESS", "CHAOS_RUN", "CHAOS_JOB"):
            if k not in extra:
                e.pop(k, None)
        return e

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CLI, "--cluster", str(self.cluster), *args], capture_output=True,
                              text=True, timeout=timeout, env=self.env(), check=False)

    def spec(self, name: str, width: int, jobs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "name": name, "team": "chaos", "owner": self.user,
            "problem": f"Does {name} survive a daemon killed at random moments?",
            "budget": {"gpu_hours": width * self.cfg.window_s / 3600, "gpus": width, "pool": "h100"},
            "jobs": [{"name": j["name"], "gpus": j["gpus"], "after": j["after"], "retries": j["retries"],
                      "run": ["/bin/sh", str(self.script), str(j["secs"]), j["mode"]],
                      "env": {"CHAOS_JOB": self.run_id, "CHAOS_DIR": str(self.dir)}} for j in jobs],
        }

    def submit_wave(self) -> list[str]:
        """Submit the next wave (in parallel); returns the projects refused or failed."""
        n, self.waves = self.waves, self.waves + 1
        procs = []
        for name, width, jobs in WAVE:
            spec = self.spec(f"w{n}-{name}", width, jobs)
            self.specs[spec["name"]] = spec
            path = self.dir / "specs" / f"{spec['name']}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(spec, indent=1))
            procs.append((spec["name"], subprocess.Popen(
                [CLI, "--cluster", str(self.cluster), "submit", str(path)], env=self.env(),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
        bad = []
        for name, p in procs:
            try:
                out, _ = p.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            if p.returncode != 0:
                bad.append(f"{name}: exit {p.returncode}: {out.strip()[-400:]}")
        return bad

    # ledger reads (plain SQL, so a rewrite of the ORM layer does not break the harness)

    def engine(self) -> Any:
        if self._engine is None:
            self._engine = create_engine(self.db_url)
        return self._engine

    def grants(self) -> list[dict[str, Any]]:
        with self.engine().connect() as c:
            rows = c.execute(text("SELECT id, project, state, width, report_json IS NOT NULL AS reported "
                                  "FROM cs_grant ORDER BY id")).mappings().all()
        return [dict(r) for r in rows]

    def job_runs(self) -> list[dict[str, Any]]:
        with self.engine().connect() as c:
            rows = c.execute(text("SELECT r.id, r.grant_id, g.project, r.job, r.attempt, r.state, r.gpus, "
                                  "r.started_at, r.ended_at, r.gpu_seconds, r.exit_codes, r.detail "
                                  "FROM cs_job_run r JOIN cs_grant g ON g.id = r.grant_id "
                                  "ORDER BY r.id")).mappings().all()
        return [dict(r) for r in rows]

    def all_finished(self) -> bool:
        gs = self.grants()
        mine = [g for g in gs if g["project"] in self.specs]
        return len(mine) == len(self.specs) and all(g["state"] in FINAL_STATES and g["reported"] for g in mine)

    def status(self) -> list[dict[str, Any]]:
        out = self.cli("status", "--json")
        if out.returncode != 0:
            raise RuntimeError(f"cellsched status failed: {out.stderr[-500:]}")
        return list(json.loads(out.stdout))

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


# -- the driver ------------------------------------------------------------------------------


def _ask_serve_help() -> subprocess.Popen[str] | None:
    try:
        return subprocess.Popen([CLI, "serve", "--help"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=dict(os.environ, COLUMNS="200"))
    except OSError:
        return None


def _serve_flags(asked: subprocess.Popen[str] | None) -> list[str]:
    """``--standby`` where serve has it (``asked``: ``serve --help`` running): after a SIGKILL
    the old lease is still held, and a plain second serve would exit 2 instead of waiting for
    it to expire."""
    if asked is None:
        return []
    try:
        out, _ = asked.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        asked.kill()
        asked.communicate()
        return []
    return ["--standby"] if "--standby" in out else []


class Driver:
    def __init__(self, cfg: ChaosConfig) -> None:
        self.cfg = cfg
        self.run_id = uuid.uuid4().hex[:12]
        self.rng = random.Random(cfg.seed)
        asked = _ask_serve_help()  # meanwhile `cellsched init` runs: two CLI start-ups at once
        try:
            self.w = Workload(cfg, self.run_id)
        except BaseException:
            if asked is not None:
                asked.kill()
                asked.wait()
            raise
        self.live = Liveness(self.run_id)
        self.rounds: list[Round] = []
        self.serve: subprocess.Popen[bytes] | None = None
        self.flags = _serve_flags(asked) + list(cfg.serve_args)
        self.problems: list[str] = []  # harness-level trouble (submit refused, final timeout)
        self.leaked_groups: list[str] = []
        self.leaked_at_end: list[str] = []

    def start_serve(self, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as f:
            self.serve = subprocess.Popen(
                [CLI, "--cluster", str(self.w.cluster), "serve", "--gpus", str(GPUS),
                 "--interval", str(self.cfg.interval_s), "--logs-dir", str(self.w.dir / "logs"), *self.flags],
                env=self.w.env(CHAOS_RUN=self.run_id, CELLSCHED_LEASE_S=str(self.cfg.lease_s)),
                stdin=subprocess.DEVNULL, stdout=f,
                stderr=subprocess.STDOUT, start_new_session=True)
        return self.serve

    def wait_up(self, proc: subprocess.Popen[bytes], log: Path, timeout: float, t0: float) -> float | None:
        """Seconds from ``t0`` (serve started) until serve logs that it is up, or None."""
        while time.monotonic() - t0 < timeout and proc.poll() is None:
            try:
                if any(m in log.read_text(errors="replace") for m in UP_MARKERS):
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.1)
        return None

    def stop_serve(self, proc: subprocess.Popen[bytes], sig: int, timeout: float) -> tuple[int | None, float, bool]:
        """Signal serve, wait (bounded), SIGKILL its group if it hangs; (code, seconds, hung)."""
        t0 = time.monotonic()
        hung = False
        if proc.poll() is None:
            try:
                if sig == signal.SIGINT:
                    os.killpg(proc.pid, sig)  # Ctrl-C: the terminal's whole foreground group
                else:
                    os.kill(proc.pid, sig)  # kill, OOM killer, a supervisor: the process alone
            except OSError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            hung = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        return proc.poll(), time.monotonic() - t0, hung

    def after_serve(self, rnd: Round, teardown_s: float) -> None:
        """Serve has exited: wait for its Ray to go away (kill leftovers), then record job
        processes that outlived it (left alive, and timed by the liveness scanner)."""
        left = wait_gone(self.run_id, "ray", teardown_s)
        rnd.ray_leftover = [p.describe() for p in left]
        if left:
            kill_all(left)
            wait_gone(self.run_id, "ray", 5)
        orphans = wait_gone(self.run_id, "job", self.cfg.orphan_wait_s)
        by_sh: dict[int, list[Proc]] = {}
        for p in orphans:
            by_sh.setdefault(p.sh, []).append(p)
        # one line per rank of an attempt (its shell and whatever it had started)
        rnd.orphans = [f"{ps[0].whose()}: " + ", ".join(f"pid {p.pid} ({p.cmd[:60]})" for p in ps)
                       for ps in by_sh.values()]
        rnd.ended = time.time()

    def round(self, i: int) -> Round:
        sig_name = self.rng.choice(sorted(SIGNALS))
        hold = self.rng.uniform(*self.cfg.hold_s)
        early = self.rng.random() < self.cfg.early_p
        log = self.w.dir / f"serve-{i:03d}.log"
        rnd = Round(i, sig_name, time.time(), early=early, log=str(log))
        t0 = time.monotonic()
        proc = self.start_serve(log)
        if self.w.all_finished():  # while Ray starts: a new wave when the last one is done
            self.problems += self.w.submit_wave()
        if early:
            rnd.up_after_s = self.wait_up(proc, log, hold, t0)
        else:
            rnd.up_after_s = self.wait_up(proc, log, self.cfg.up_timeout_s, t0)
        if proc.poll() is None and (not early or rnd.up_after_s is not None):
            t = time.monotonic()
            try:
                proc.wait(max(0.0, hold - (t - t0)) if early else hold)
            except subprocess.TimeoutExpired:
                pass
            rnd.held_s = time.monotonic() - t
        rnd.exited_early = proc.poll() is not None
        rnd.signalled = time.time()
        rnd.exit_code, rnd.exit_after_s, rnd.hung = self.stop_serve(
            proc, SIGNALS[sig_name], 5 if sig_name == "SIGKILL" else self.cfg.stop_timeout_s)
        self.after_serve(rnd, self.cfg.teardown_s)
        self.cfg.say(f"round {i}: {sig_name}{' while starting' if early else ''} after {rnd.held_s:.1f} s up "
                     f"(up in {rnd.up_after_s} s), "
                     f"exit {rnd.exit_code} in {rnd.exit_after_s:.1f} s, {len(rnd.orphans)} orphans")
        return rnd

    def final(self) -> Round:
        log = self.w.dir / "serve-final.log"
        (self.w.dir / "final").touch()  # the long runs may end now
        rnd = Round(len(self.rounds), None, time.time(), log=str(log))
        t0 = time.monotonic()
        proc = self.start_serve(log)
        if not self.w.specs:
            self.problems += self.w.submit_wave()
        rnd.up_after_s = self.wait_up(proc, log, self.cfg.up_timeout_s, t0)
        end = time.monotonic() + self.cfg.final_timeout_s
        while not self.w.all_finished():
            if time.monotonic() > end or proc.poll() is not None:
                self.problems.append(
                    f"final serve: not every grant finished (serve exit {proc.poll()}): "
                    + ", ".join(f"{g['project']} {g['state']}{'' if g['reported'] else ' (no report)'}"
                                for g in self.w.grants()))
                break
            time.sleep(0.2)
        rnd.held_s = time.monotonic() - (end - self.cfg.final_timeout_s)
        if proc.poll() is None:
            self.leaked_groups = live_groups(self.run_id, "cellsched/")
        rnd.signalled = time.time()
        rnd.exit_code, rnd.exit_after_s, rnd.hung = self.stop_serve(proc, signal.SIGTERM, self.cfg.stop_timeout_s)
        self.after_serve(rnd, self.cfg.final_teardown_s)
        self.cfg.say(f"final: {rnd.held_s:.1f} s, exit {rnd.exit_code}, {len(rnd.orphans)} orphans")
        return rnd

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.live.start()
        try:
            for i in range(self.cfg.rounds):
                if self.cfg.deadline_s is not None and time.monotonic() - t0 > self.cfg.deadline_s:
                    self.problems.append(f"out of time: only {i} of {self.cfg.rounds} rounds in "
                                         f"{time.monotonic() - t0:.0f} s (deadline {self.cfg.deadline_s:g} s)")
                    break
                self.rounds.append(self.round(i))
            self.rounds.append(self.final())
            left = scan(self.run_id)
            self.leaked_at_end = [p.describe() for p in left]
        finally:
            self.cleanup()
        res = check(self)
        res["seconds"] = round(time.monotonic() - t0, 1)
        return res

    def cleanup(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            try:
                os.killpg(self.serve.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                self.serve.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.live.halt.set()
        self.live.join(5)
        for _ in range(3):
            left = scan(self.run_id)
            if not left:
                break
            kill_all(left)
            time.sleep(0.2)
        self.w.close()


def live_groups(run_id: str, prefix: str) -> list[str]:
    """Placement groups named ``prefix*`` not removed on the Ray of this run's daemon (found
    through its GCS address), listed from a subprocess so the caller's Ray is untouched."""
    gcs = next((a.split("=", 1)[1] for p in scan(run_id) if p.kind == "ray"
                for a in p.cmd.split() if a.startswith("--gcs-address=")), None)
    if gcs is None:
        return ["(could not find the daemon's Ray to list its placement groups)"]
    code = ("import json, sys, ray\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "from ray.util import placement_group_table\n"
            "t = placement_group_table()\n"
            "print(json.dumps([v.get('name', '') + ' ' + str(v.get('state')) for v in t.values()\n"
            "                  if v.get('state') != 'REMOVED' and str(v.get('name', '')).startswith(sys.argv[2])]))\n")
    try:
        out = subprocess.run([sys.executable, "-c", code, gcs, prefix], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ, RAY_AUTH_MODE="disabled"), check=False)
        return list(json.loads(out.stdout.strip().splitlines()[-1]))
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        return [f"(listing placement groups failed: {e!r})"]


# -- the checks ------------------------------------------------------------------------------


@dataclass
class RankRun:
    project: str
    job: str
    attempt: int
    rank: int
    pid: int  # its stamping shell
    start: float | None  # None: seen by the scanner, but it never stamped start
    end: float | None = None
    rc: int | None = None
    seen: Seen | None = None  # the scanner's sightings of its processes
    # Proven alive: at some moment ≤ alive_from and at some moment ≥ alive_to, hence (one
    # process tree, started by the shell) over the whole [alive_from, alive_to].
    alive_from: float = 0.0
    alive_to: float = 0.0
    # Not ruled out: its processes may have lived until this (end stamp, or the first scan
    # that missed it, or its round's end), at least until its last sighting's read ended.
    alive_until: float = 0.0

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        return (self.project, self.job, self.attempt, self.rank, self.pid)

    def line(self) -> str:
        st = f"start {self.start:.3f}" if self.start is not None else "no start stamp"
        end = (f"end {self.end:.3f} rc {self.rc}" if self.end is not None
               else f"no end stamp, gone by ≤ {self.alive_until:.3f}")
        s = self.seen
        seen = ("" if s is None else
                f"; /proc: {s.reads} reads, first ending {s.first_end:.3f}, last "
                f"[{s.last_start:.3f}, {s.last_end:.3f}] (pid {s.last_pid})")
        return (f"attempt {self.attempt} rank {self.rank} sh {self.pid}: {st}, {end}{seen}; "
                f"proven alive [{self.alive_from:.3f}, {self.alive_to:.3f}]")


def read_stamps(path: Path) -> tuple[list[RankRun], list[str]]:
    runs: dict[tuple[str, str, int, int, int], RankRun] = {}
    bad = []
    for ln in path.read_text(errors="replace").splitlines():
        f = ln.split()
        try:
            if f[0] == "start" and len(f) == 7:
                k = (f[1], f[2], int(f[3]), int(f[4]), int(f[6]))
                runs[k] = RankRun(f[1], f[2], int(f[3]), int(f[4]), int(f[6]), float(f[5]))
            elif f[0] == "end" and len(f) == 8:
                k = (f[1], f[2], int(f[3]), int(f[4]), int(f[6]))
                r = runs.get(k)
                if r is None:  # signalled before it could stamp start: alive at its end all the same
                    bad.append(f"end without start: {ln}")
                    runs[k] = RankRun(f[1], f[2], int(f[3]), int(f[4]), int(f[6]), None, float(f[5]), int(f[7]))
                else:
                    r.end, r.rc = float(f[5]), int(f[7])
            else:
                bad.append(f"unreadable stamp: {ln}")
        except (ValueError, IndexError):
            bad.append(f"unreadable stamp: {ln}")
    return list(runs.values()), bad


def _round_end(rounds: list[Round], t: float) -> float:
    for r in rounds:
        if r.started <= t <= r.ended:
            return r.ended
    return t


def _at_once(x: RankRun, y: RankRun, x_until: float, y_until: float) -> float | None:
    """``x`` (the earlier attempt, or copy) alive until ``x_until`` and ``y`` until
    ``y_until``: the length of the time both were alive (≥ 0; 0 when one was seen at a single
    instant inside the other's life), or None if they were not. ``y`` must have been seen
    alive strictly before ``x`` was last: equal stamps are no overlap."""
    lo, hi = max(x.alive_from, y.alive_from), min(x_until, y_until)
    if lo <= hi and y.alive_from < x_until:
        return hi - lo
    return None


def _both_alive(x: RankRun, y: RankRun) -> float | None:
    """Proven alive at once (from sightings and stamps only)."""
    return _at_once(x, y, x.alive_to, y.alive_to)


def _may_overlap(x: RankRun, y: RankRun) -> float | None:
    """Not ruled out (``alive_until``: a killed rank's possible tail)."""
    return _at_once(x, y, x.alive_until, y.alive_until)


def find_overlaps(runs: list[RankRun]) -> tuple[list[str], list[str]]:
    """(overlaps, undecided). An overlap is a proof: a process of one attempt seen alive (a
    stamp, or a ``/proc`` read's start) strictly after a process of another attempt of the
    same job (or another copy of the same rank) was seen alive (a stamp, or a read's end),
    while that one was still alive. Undecided: not proven, but not ruled out either (a rank
    killed without an end stamp, between its last sighting and the first scan that missed
    it): reported with its width, not counted."""
    by_job: dict[tuple[str, str], dict[int, list[RankRun]]] = {}
    for r in runs:
        by_job.setdefault((r.project, r.job), {}).setdefault(r.attempt, []).append(r)
    found: list[str] = []
    undecided: list[str] = []

    def lines(rs: list[RankRun]) -> str:
        return "\n".join("    " + r.line() for r in sorted(rs, key=lambda r: (r.alive_from, r.attempt, r.rank)))

    for (project, jname), attempts in sorted(by_job.items()):
        order = sorted(attempts)
        for i, a in enumerate(order):
            for b in order[i + 1:]:
                pairs = [(x, y) for x in attempts[a] for y in attempts[b]]
                proven = [(x, y, w) for x, y in pairs if (w := _both_alive(x, y)) is not None]
                if proven:
                    x, y, w = max(proven, key=lambda t: t[2])
                    found.append(f"{project}/{jname}: attempt {a} rank {x.rank} and attempt {b} rank {y.rank} "
                                 f"proven alive at once for {w:.3f} s from {max(x.alive_from, y.alive_from):.3f} "
                                 f"(attempt {a} seen alive at {x.alive_to:.3f}, attempt {b} since "
                                 f"{y.alive_from:.3f}); stamps:\n" + lines(attempts[a] + attempts[b]))
                    continue
                maybe = [(x, y, w) for x, y in pairs if (w := _may_overlap(x, y)) is not None]
                if maybe:
                    x, y, w = max(maybe, key=lambda t: t[2])
                    undecided.append(f"{project}/{jname}: attempt {a} rank {x.rank} may have lived "
                                     f"{x.alive_until - y.alive_from:.3f} s into attempt {b} (rank {y.rank}), "
                                     f"not proven; stamps:\n" + lines(attempts[a] + attempts[b]))
            # copies: shells that stamped (a process seen without stamps may be a child
            # orphaned by its killed shell, keyed by itself: evidence across attempts only)
            ranks: dict[int, list[RankRun]] = {}
            for r in attempts[a]:
                if r.start is not None or r.end is not None:
                    ranks.setdefault(r.rank, []).append(r)
            for rank, copies in ranks.items():
                copies.sort(key=lambda r: r.alive_from)
                for i2, x in enumerate(copies):
                    for y in copies[i2 + 1:]:
                        if (w := _both_alive(x, y)) is not None:
                            found.append(f"{project}/{jname}: attempt {a} rank {rank} ran twice at once "
                                         f"({w:.3f} s):\n    {x.line()}\n    {y.line()}")
                        elif _may_overlap(x, y) is not None:
                            undecided.append(f"{project}/{jname}: attempt {a} rank {rank}: two copies may have "
                                             f"overlapped {x.alive_until - y.alive_from:.3f} s, not proven:\n"
                                             f"    {x.line()}\n    {y.line()}")
    return found, undecided


def check(d: Driver) -> dict[str, Any]:
    runs, bad_stamps = read_stamps(d.w.stamps)
    stamped_keys = {r.key for r in runs}
    # a rank seen alive that never stamped start (signalled before it could) still counts
    unstamped = [RankRun(*k, start=None) for k in d.live.seen if k not in stamped_keys]
    for r in runs + unstamped:
        r.seen = s = d.live.seen.get(r.key)
        known = [t for t in (r.start, r.end) if t is not None]
        r.alive_from = min(known + ([s.first_end] if s else []))
        r.alive_to = max(known + ([s.last_start] if s else []))
        if r.end is not None:
            until = r.end
        else:  # killed: gone by the first /proc scan that missed it, else by its round's end
            dead = d.live.dead_by(r.key, r.alive_from)
            until = dead if dead is not None else _round_end(d.rounds, r.alive_from)
        r.alive_until = max(until, r.alive_to, s.last_end if s else until)
    overlaps, undecided = find_overlaps(runs + unstamped)

    stamped: dict[tuple[str, str, int], list[RankRun]] = {}
    for r in runs:
        stamped.setdefault((r.project, r.job, r.attempt), []).append(r)
    ledger = [r for r in d.w.job_runs() if r["project"] in d.w.specs]

    lost: list[str] = []
    double: list[str] = []
    seen_attempts: dict[tuple[int, str, int], int] = {}
    per_grant_stamped: dict[int, float] = {}
    for row in ledger:
        key = (row["project"], row["job"], row["attempt"])
        mine = stamped.get(key, [])
        seen_attempts[(row["grant_id"], row["job"], row["attempt"])] = seen_attempts.get(
            (row["grant_id"], row["job"], row["attempt"]), 0) + 1
        gs = sum(r.alive_until - (r.start or r.alive_from) for r in mine)
        per_grant_stamped[row["grant_id"]] = per_grant_stamped.get(row["grant_id"], 0.0) + gs
        what = f"{row['project']}/{row['job']} attempt {row['attempt']} ({row['state']}, exit codes {row['exit_codes']})"
        if row["state"] == "succeeded":
            ok = {r.rank for r in mine if r.rc == 0}
            if ok != set(range(row["gpus"])):
                lost.append(f"{what}: recorded succeeded but ranks {sorted(set(range(row['gpus'])) - ok)} "
                            f"have no end stamp with code 0; stamps: {[r.line() for r in mine]}")
        elif row["state"] == "failed" and not mine:
            lost.append(f"{what}: recorded failed but it never started (no stamp)")
        if row["gpu_seconds"] > gs * 1.25 + 2 * row["gpus"]:
            double.append(f"{what}: charged {row['gpu_seconds']} GPU-s, stamps show {gs:.1f}")
    for (gid, jname, attempt), n in seen_attempts.items():
        if n > 1:
            double.append(f"grant {gid} {jname} attempt {attempt} recorded {n} times")

    final_state: dict[tuple[str, str], str] = {}
    for row in ledger:  # in id order: the last attempt's state wins
        final_state[(row["project"], row["job"])] = row["state"]
    for pname, spec in sorted(d.w.specs.items()):
        for j in spec["jobs"]:
            st = final_state.get((pname, j["name"]), "never started")
            if st != "succeeded":
                lost.append(f"{pname}/{j['name']} ended {st}, not succeeded")

    try:
        status = {it["project"]: it for it in d.w.status()}
    except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
        status = {}
        d.problems.append(f"status --json: {e!r}")
    for g in d.w.grants():
        it = status.get(g["project"])
        if g["project"] not in d.w.specs or it is None:
            continue
        used = float(it.get("used_gpu_hours") or 0) * 3600
        gs = per_grant_stamped.get(g["id"], 0.0)
        if used > gs * 1.25 + 2 * g["width"] * 3:
            double.append(f"{g['project']} (grant {g['id']}): status says {used:.0f} GPU-s used, stamps show {gs:.1f}")

    # An attempt whose ranks all ended before its round's stop signal, by themselves (all with
    # 0, or one with the script's own failure code 1; 143/130 are signals), had its outcome
    # decided before the daemon was told to stop. A daemon stopped with SIGTERM/SIGINT collects
    # it: the ledger must say succeeded/failed, anything else is a lost result. A SIGKILLed
    # daemon loses what it had not collected with its local Ray (reported, not counted).
    unrecorded = []
    by_attempt = {(r["project"], r["job"], r["attempt"]): r for r in ledger}
    for (p, jname, a), rs in sorted(stamped.items()):
        spec = d.w.specs.get(p)
        gpus = next((j["gpus"] for j in spec["jobs"] if j["name"] == jname), 0) if spec else 0
        if {r.rank for r in rs} != set(range(gpus)) or any(r.end is None for r in rs):
            continue
        outcome = ("succeeded" if all(r.rc == 0 for r in rs) else "failed" if any(r.rc == 1 for r in rs)
                   else None)
        rnd = next((x for x in d.rounds if x.started <= min(r.alive_from for r in rs) <= x.ended), None)
        last = max(r.end for r in rs if r.end is not None)
        if outcome is None or rnd is None or rnd.signalled is None or last >= rnd.signalled:
            continue
        row = by_attempt.get((p, jname, a))
        if row is not None and row["state"] == outcome:
            continue
        msg = (f"{p}/{jname} attempt {a}: {outcome} on its own {rnd.signalled - last:.2f} s before the "
               f"{rnd.signal or 'final SIGTERM'} of round {rnd.index}, ledger says {row['state'] if row else 'nothing'}"
               f" ({row['detail'] if row else ''}); stamps: {[r.line() for r in rs]}")
        if rnd.signal == "SIGKILL" or rnd.exited_early:
            unrecorded.append(msg)
        else:
            lost.append(msg)

    # a rank whose processes outlived its daemon (and its Ray) is one leak, named with the
    # first round after which it was seen
    leaked_procs = list({o.split(":")[0]: f"after round {r.index}: {o}"
                         for r in reversed(d.rounds) for o in r.orphans}.values())
    final = [r for r in d.rounds if r.signal is None]
    leaked_procs += [f"Ray of the final daemon, {d.cfg.final_teardown_s:g} s after it stopped: {x}"
                     for r in final for x in r.ray_leftover]
    leaked_procs += [f"after the final stop: {x}" for x in d.leaked_at_end]
    return {
        "rounds": len([r for r in d.rounds if r.signal is not None]),
        "overlaps": len(overlaps),
        "undecided": len(undecided),
        "lost_results": len(lost),
        "double_charged": len(double),
        "leaked_groups": len(d.leaked_groups),
        "leaked_processes": len(leaked_procs),
        "attempts_stamped": len(stamped),
        "attempts_recorded": len(ledger),
        "waves": d.w.waves,
        "unrecorded_completions": len(unrecorded),
        "round_signals": [r.signals() for r in d.rounds],
        "details": {"overlaps": overlaps, "undecided": undecided, "lost_results": lost, "double_charged": double,
                    "leaked_groups": d.leaked_groups, "leaked_processes": leaked_procs,
                    "unrecorded_completions": unrecorded, "bad_stamps": bad_stamps,
                    "problems": d.problems},
        "workdir": str(d.w.dir),
        "db": d.w.db_url.split("?")[0].split(":")[0],
        "seed": d.cfg.seed,
    }


@contextmanager
def fresh_pg_url() -> Iterator[str]:
    """A URL to a new, empty schema on the test PostgreSQL (``CELLSCHED_TEST_PG``, default the
    machine's server, database ``test``), dropped afterwards; for the benchmarks (tests use the
    ``ledger_url`` fixture). The schema is chosen by ``search_path`` in the URL, so
    subprocesses given the URL see it too."""
    base = os.environ.get("CELLSCHED_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    schema = "cs_bench_" + uuid.uuid4().hex[:10]
    eng = create_engine(base, isolation_level="AUTOCOMMIT")
    with eng.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"
    finally:
        with eng.connect() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        eng.dispose()


def run_chaos(cfg: ChaosConfig) -> dict[str, Any]:
    """Run the whole chaos session; returns the findings (see the module docstring)."""
    return Driver(cfg).run()


def report(res: dict[str, Any]) -> str:
    """A readable account of what went wrong (empty sections left out), for assertion messages."""
    head = (f"chaos on {res['db']} (seed {res['seed']}, {res['rounds']} rounds, {res['seconds']} s, "
            f"work dir {res['workdir']}): overlaps {res['overlaps']} (undecided {res['undecided']}), lost results {res['lost_results']}, "
            f"double charged {res['double_charged']}, leaked groups {res['leaked_groups']}, "
            f"leaked processes {res['leaked_processes']}")
    out = [head]
    for k, v in res["details"].items():
        if v:
            out.append(f"{k}:")
            out += [f"  - {x}" for x in v[:30]]
            if len(v) > 30:
                out.append(f"  … and {len(v) - 30} more")
    out.append("rounds:")
    for s in res["round_signals"]:
        out.append(f"  {s['round']:>3} {s['signal']!s:<8}{' early' if s['early'] else ''} up {s['up_after_s']} s, "
                   f"held {s['held_s']} s, "
                   f"exit {s['exit_code']} after {s['exit_after_s']} s"
                   + (", exited before the signal" if s["exited_early"] else "")
                   + (", hung (group killed)" if s["hung"] else "")
                   + (f", Ray processes left: {s['ray_leftover']}" if s["ray_leftover"] else "")
                   + (f", {len(s['orphans'])} orphaned job processes" if s["orphans"] else ""))
    return "\n".join(out)
