"""The supervisor: one small process per rank attempt that owns the job's whole process tree.

Run as ``python -I -S <this file>`` by the rank actor (``SupervisedJob.spawn``); imports only
the standard library (it must start in tens of milliseconds and must not load cellsched,
ray or anything that could hold the ledger's secrets). Why it exists, in short (more in
docs/executor.md): a job's processes must never outlive the rank that started them, and
neither ``PR_SET_PDEATHSIG`` (direct child only, fires when the forking *thread* dies),
``preexec_fn`` (unsafe in Ray's multithreaded workers) nor ``killpg`` (a grandchild that
calls ``setsid()`` escapes it) gives that.

What it does:

1. reads its orders (one JSON line) on stdin, forks once and lets the first process exit, so
   it is no child of the Ray worker (Ray SIGKILLs a dying worker's direct children, which
   would leave the job behind); it already runs in a session of its own;
2. becomes a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``): every orphaned descendant
   of the job, daemonised or not, is reparented to it;
3. takes the attempt's lock file (``flock``, non-blocking) and refuses to start if it says
   ``dead`` (``attempt_fate`` proved the attempt dead: a late start must never run); holds
   it until every descendant is gone;
4. runs the job in a new session, with the environment its orders give (which names the
   attempt and rank: its *mark*, ``mark_of``; the supervisor's own environment leaves the
   mark out), stdout/stderr to the log, and reports ``started <pid> <wall-clock start>`` on
   stdout;
5. stops the job's tree (its process group *and* every process whose parent chain leads here,
   found in ``/proc``) when: the rank process dies (EOF on stdin: the rank holds the only
   write end) → SIGKILL; the rank asks (``signal <sig> <grace>`` on stdin) or sends SIGTERM
   → that signal, SIGKILL after the grace; ``term_at`` → SIGTERM; ``kill_at`` → SIGKILL;
   the job's main process exits → SIGKILL to what is left;
6. reaps everything, marks the lock ``ended``, unlocks, reports
   ``exit <code> <seconds> <why>`` (code: exit status, or -N for "killed by signal N";
   seconds: the main process's run time, monotonic; why: ``-``, ``term_at``, ``kill_at``) and
   exits.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

PR_SET_CHILD_SUBREAPER = 36
REFUSED_CODE = 125  # declared dead before it could start (= base.REFUSED_CODE)
LOCK_WAIT_S = 2.0  # attempt_fate holds a lock for microseconds; anything longer is a live owner
# What names one rank of one attempt in its job's environment (base.RESERVED_ENV sets them):
# every process of the job inherits them, including one that left the job's session and is
# nobody's descendant any more once its supervisor is gone.
MARK_KEYS = ("CELLSCHED_PROJECT", "CELLSCHED_JOB", "CELLSCHED_ATTEMPT", "RANK")


# -- the lock file (shared with attempt_fate's local proof) ------------------------------


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode(errors="replace")


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)
    os.fsync(fd)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def claim_dead(lock_path: str, host: str | None = None,
               dead_nodes: frozenset[str] = frozenset()) -> bool:
    """The local proof of death of one rank of one attempt: True if nothing of it can be
    alive on this host's view of ``lock_path``, and then the file says ``dead`` so that a
    supervisor that has not started yet never runs the job.

    False when the lock is held (a supervisor is alive), or it was last held by a
    supervisor that never finished (it did not write ``ended``): on another host (whose
    lock this host may not see) unless its Ray node is in ``dead_nodes``, or on this host
    while its job's process group or session still has a live process, or any process
    still carries the attempt's mark (``carrying``: one that left the job's session).
    """
    host = host or socket.gethostname()
    try:
        os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return False  # cannot look (unwritable log_dir): no proof
    try:
        if not _try_lock(fd):
            return False
        fields = dict(f.split("=", 1) for f in _read(fd).split()[1:] if "=" in f)
        state = _read(fd).split(" ", 1)[0].strip()
        if state == "running" and fields.get("node") not in dead_nodes:
            if fields.get("host") != host:
                return False
            if _group_alive(int(fields.get("job", "0") or 0)):
                return False
            if fields.get("mark") and carrying(fields["mark"]):
                return False
        if state != "dead":
            _write(fd, f"dead by={os.getpid()} host={host} at={time.time():.3f}\n")
        return True
    finally:
        os.close(fd)  # unlocks


def mark_of(env: dict[str, str]) -> str | None:
    """The attempt's mark: a digest of its identity in the job's environment (``MARK_KEYS``);
    None for an environment that does not name an attempt."""
    if "CELLSCHED_ATTEMPT" not in env:
        return None
    ident = "\0".join(env.get(k, "") for k in MARK_KEYS)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def carrying(mark: str) -> list[int]:
    """Live processes of this host whose environment carries ``mark`` (the environment a
    process started with, as ``/proc/<pid>/environ`` shows it). Supervisors do not carry it:
    they are given the job's environment without ``MARK_KEYS``."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                raw = f.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if b"CELLSCHED_ATTEMPT=" not in raw:
            continue
        env = {}
        for item in raw.split(b"\0"):
            k, eq, v = item.partition(b"=")
            if eq and k.decode(errors="replace") in MARK_KEYS:
                env[k.decode()] = v.decode(errors="replace")
        if mark_of(env) == mark and _stat(int(d)) not in (None, "Z"):
            out.append(int(d))
    return sorted(out)


def _group_alive(pgid: int) -> bool:
    """Whether any live process is in process group or session ``pgid``."""
    if pgid <= 0:
        return False
    for pid, (_, state, pg, sid) in _processes().items():
        if state != "Z" and pid != os.getpid() and pgid in (pg, sid):
            return True
    return False


# -- /proc -------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str, int, int]]:
    """pid -> (ppid, state, pgid, sid) of every process visible now."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        rest = stat.rsplit(")", 1)[1].split()
        out[int(d)] = (int(rest[1]), rest[0], int(rest[2]), int(rest[3]))
    return out


def _stat(pid: int) -> str | None:
    """The state letter of ``pid`` (``Z`` for a zombie), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace").rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _children(pid: int) -> list[int] | None:
    """Children of ``pid`` from ``/proc/<pid>/task/*/children`` (None: not available)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread ended meanwhile
            return None  # kernel without CONFIG_PROC_CHILDREN
        except OSError:
            continue
    return out


def descendants(root: int, thorough: bool = False) -> list[int]:
    """Live (non-zombie) processes whose parent chain leads to ``root``.

    Fast: walks only ``root``'s subtree through the ``children`` files, which may miss a
    process forked meanwhile (callers loop until nothing is left). ``thorough``: reads every
    process in ``/proc`` instead (for the final "nothing is left")."""
    if not thorough:
        out, todo = [], [root]
        while todo:
            kids = _children(todo.pop())
            if kids is None:
                return descendants(root, thorough=True)
            for pid in kids:
                if _stat(pid) not in (None, "Z"):
                    out.append(pid)
                todo.append(pid)
        return sorted(out)
    procs = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if procs[pid][1] != "Z":
            out.append(pid)
        todo.extend(children.get(pid, []))
    return sorted(out)


# -- the supervisor itself ---------------------------------------------------------------


class _Supervisor:
    def __init__(self, orders: dict) -> None:  # type: ignore[type-arg]
        self.o = orders
        self.me = os.getpid()
        self.job = 0
        self.exit_status: int | None = None
        self.why = "-"
        self.kill_deadline: float | None = None  # monotonic
        self.buf = b""
        self.duration = 0.0
        self.t0 = 0.0  # monotonic, just before the job is started

    def signal_tree(self, sig: int) -> None:
        if self.job:
            try:
                os.killpg(self.job, sig)  # the leader is not reaped yet: its pgid is ours
            except (ProcessLookupError, PermissionError):
                pass
        for pid in descendants(self.me):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, sig: int, grace: float | None, why: str | None = None) -> None:
        if why and self.why == "-":
            self.why = why
        self.signal_tree(sig)
        if sig == signal.SIGKILL:
            self.kill_deadline = time.monotonic()
        elif grace is not None:
            t = time.monotonic() + grace
            self.kill_deadline = t if self.kill_deadline is None else min(self.kill_deadline, t)

    def reap_others(self) -> None:
        """Reap adopted orphans that died, until the next dead child is the job's leader
        (never reaped before ``finish``: see ``leader_exited``)."""
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == self.job:
                return
            try:
                os.waitpid(info.si_pid, 0)
            except ChildProcessError:
                return

    def leader_exited(self) -> bool:
        if self.exit_status is not None:
            return True
        # WNOWAIT: the leader stays a zombie, so its pgid cannot be reused while we killpg.
        info = os.waitid(os.P_PID, self.job, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return False
        self.exit_status = -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) \
            else info.si_status
        return True

    def commands(self, data: bytes) -> bool:
        """Handle the rank's commands; False on EOF (the rank process is gone)."""
        if not data:
            return False
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            parts = line.decode().split()
            if len(parts) == 3 and parts[0] == "signal":
                grace = None if parts[2] == "-" else float(parts[2])
                self.stop(int(parts[1]), grace)
        return True

    def run(self, ctl: int, wake: int) -> None:
        o = self.o
        term_at, kill_at = o.get("term_at"), o.get("kill_at")
        rank_alive = True
        while not self.leader_exited():
            now_wall, now = time.time(), time.monotonic()
            if kill_at is not None and now_wall >= kill_at:
                self.stop(signal.SIGKILL, None, "kill_at")
                kill_at = None
            if term_at is not None and now_wall >= term_at:
                self.stop(signal.SIGTERM, None, "term_at")
                term_at = None
            if self.kill_deadline is not None and now >= self.kill_deadline:
                self.signal_tree(signal.SIGKILL)
                self.kill_deadline = now + 0.1  # again, until the leader is gone
            waits = [1.0]  # wall-clock deadlines are re-read at least once a second
            waits += [t - now_wall for t in (term_at, kill_at) if t is not None]
            if self.kill_deadline is not None:
                waits.append(self.kill_deadline - now)
            fds = [wake] + ([ctl] if rank_alive else [])
            ready, _, _ = select.select(fds, [], [], max(0.0, min(waits)))
            if wake in ready:
                sigs = os.read(wake, 512)
                if signal.SIGTERM in sigs:
                    self.stop(signal.SIGTERM, float(o.get("grace", 3.0)))
                if signal.SIGCHLD in sigs:
                    self.reap_others()
            if ctl in ready and not self.commands(os.read(ctl, 4096)):
                rank_alive = False  # the rank died: nothing of its job may outlive it
                self.stop(signal.SIGKILL, None, "rank-lost")
        self.duration = time.monotonic() - self.t0

    def finish(self) -> None:
        """Kill and reap every descendant, then the leader: nothing of the job is left."""
        while True:
            # zombies do not count: they are reaped below
            if not descendants(self.me) and not descendants(self.me, thorough=True):
                break
            self.signal_tree(signal.SIGKILL)
            self.reap_others()
            time.sleep(0.005)
        while True:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break


def _out(line: str) -> None:
    try:
        os.write(1, (line + "\n").encode())
    except OSError:
        pass  # the rank is gone: nobody to tell


def _readline(fd: int) -> tuple[bytes, bytes]:
    """One line from ``fd`` (unbuffered, so later commands stay in the pipe) + leftovers."""
    buf = b""
    while b"\n" not in buf:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
    line, _, rest = buf.partition(b"\n")
    return line, rest


def main() -> int:
    line, rest = _readline(0)
    if not line:
        return 2
    orders = json.loads(line)
    if os.fork():
        os._exit(0)  # no child of the Ray worker any more (see the module docstring)
    # A mask inherited from the worker's thread would reach the job: a blocked SIGTERM
    # would make every job ignore its window.
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    except (OSError, AttributeError) as e:
        sys.stderr.write(f"cellsched supervisor: {e}\n")  # still kills its group and tree
    host = socket.gethostname()
    log_path, lock_path = orders["log"], orders["lock"]
    try:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        os.makedirs(os.path.dirname(lock_path) or ".", exist_ok=True)
        log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        _out(f"refused 126 cannot open log or lock: {e}")
        return 0

    def note(msg: str) -> None:
        os.write(log, f"cellsched: {msg}\n".encode())

    end = time.monotonic() + LOCK_WAIT_S
    while not _try_lock(lock):
        if time.monotonic() > end:
            note(f"attempt lock {lock_path} is held by another process: not started")
            _out(f"refused {REFUSED_CODE} lock held")
            return 0
        time.sleep(0.01)
    if _read(lock).startswith("dead"):
        note("this attempt was declared dead before it could start: not started")
        _out(f"refused {REFUSED_CODE} declared dead")
        return 0

    sup = _Supervisor(orders)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    # Handlers, not SIG_IGN: an ignored disposition would survive exec into the job.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGHUP, lambda *_: None)
    argv = orders["argv"]
    env = orders.get("env")
    mark = mark_of(env) if env is not None else None
    started, sup.t0 = time.time(), time.monotonic()
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            cwd=orders.get("cwd"), start_new_session=True, close_fds=True, env=env,
        )
    except OSError as e:
        code = 127 if isinstance(e, FileNotFoundError) else 126
        note(f"cannot execute {argv!r}: {e}")
        _write(lock, f"ended code={code} host={host}\n")
        os.close(lock)
        _out(f"refused {code} cannot execute")
        return 0
    sup.job = proc.pid
    _write(lock, f"running supervisor={sup.me} job={proc.pid} host={host} "
                 f"node={orders.get('node', '-')} since={started:.3f}"
                 + (f" mark={mark}" if mark else "") + "\n")
    _out(f"started {proc.pid} {started:.6f} {sup.me}")
    ctl = 0
    if rest:
        sup.commands(rest)
    try:
        sup.run(ctl, wake_r)
    finally:
        sup.finish()
    _write(lock, f"ended code={sup.exit_status} host={host} at={time.time():.3f}\n")
    os.close(lock)
    _out(f"exit {sup.exit_status} {sup.duration:.6f} {sup.why}")
    return 0


# -- the rank's side ---------------------------------------------------------------------


class SupervisedJob:
    """The rank's handle on one supervised job (stdlib only, usable without Ray).

    ``spawn`` returns at once (the supervisor starts in the background); ``started`` waits
    for the job to run; ``signal`` may be called before that (the supervisor acts on it as
    soon as the job runs); ``wait`` returns once nothing of the job is left."""

    def __init__(self, proc: subprocess.Popen[bytes], mark: str | None = None) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self._proc = proc
        self._mark = mark  # the attempt's mark in the job's environment (``mark_of``)
        self._ctl = os.dup(proc.stdin.fileno())  # non-inheritable: no other child gets it
        proc.stdin.close()  # the supervisor's stdin now has one write end: ours
        self._ctl_lock = threading.Lock()  # stop (actor thread) vs. close (waiter thread)
        self._status = proc.stdout
        self.pid: int | None = None  # the job's main process (and process group)
        self.started_at: float | None = None  # wall clock, as the supervisor saw it
        self.supervisor: int | None = None

    @staticmethod
    def spawn(orders: dict, env: dict[str, str]) -> SupervisedJob:  # type: ignore[type-arg]
        """Start a supervisor for ``orders`` (argv, log, lock, cwd, term_at, kill_at, grace,
        node) with the job's environment ``env``; returns at once."""
        # The job's environment travels in the orders; the supervisor's own leaves out the
        # attempt's mark, so that only the job's processes carry it (``carrying``).
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={k: v for k, v in env.items() if k not in MARK_KEYS},
            start_new_session=True, close_fds=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({**orders, "env": env}).encode() + b"\n")
        proc.stdin.flush()
        return SupervisedJob(proc, mark_of(env))

    def started(self) -> tuple[int, str] | None:
        """Wait until the job runs (None), or ``(exit code, why)`` if it never will."""
        self._proc.wait()  # the first process exits at once; the supervisor was its child
        line = self._status.readline().decode().split()
        if line and line[0] == "started":
            self.pid, self.started_at, self.supervisor = int(line[1]), float(line[2]), int(line[3])
            return None
        self._close()
        if line and line[0] == "refused":
            return int(line[1]), " ".join(line[2:])
        return 126, "supervisor failed to start"

    def signal(self, sig: int, grace: float | None = None) -> None:
        """Ask the supervisor to send ``sig`` to the whole job tree (SIGKILL after
        ``grace`` seconds when given); if it is gone, at least the job's group gets it."""
        try:
            with self._ctl_lock:  # never write to a closed (maybe reused) descriptor
                if self._ctl < 0:
                    raise BrokenPipeError
                os.write(self._ctl, f"signal {sig} {'-' if grace is None else grace}\n".encode())
        except OSError:
            if self.pid:
                try:
                    os.killpg(self.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def wait(self) -> tuple[int, float | None, str]:
        """After ``started``: block until everything of the job is gone; returns (exit
        code, the main process's run seconds, why it was stopped: ``-``, ``term_at``,
        ``kill_at``, ``rank-lost``)."""
        line = self._status.readline().decode().split()
        self._close()
        if len(line) == 4 and line[0] == "exit":
            return int(line[1]), float(line[2]), line[3]
        # The supervisor itself was killed (OOM killer, an admin): nothing reaps the job's
        # tree any more, and what left its session is nobody's descendant. Kill the job's
        # group and every process that carries the attempt's mark, and answer only once
        # none is left: the answer is what the daemon retries on.
        if self.pid:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        while self._mark is not None and (left := carrying(self._mark)):
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.02)
        return -int(signal.SIGKILL), None, "supervisor-lost"

    def _close(self) -> None:
        self._status.close()
        with self._ctl_lock:
            if self._ctl >= 0:
                os.close(self._ctl)
                self._ctl = -1


if __name__ == "__main__":
    sys.exit(main())
