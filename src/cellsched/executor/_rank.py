"""The rank worker: one long-lived, detached Ray actor per one-GPU bundle.

This module is imported by Ray workers (the class is turned into an actor by
``ray_adapter``); it imports ray only inside methods so that importing it stays cheap.

The worker owns the truth about the jobs it ran: start/end (its own clocks), exit code and
why it stopped, kept until the driver acknowledges them. That is what lets a restarted
daemon collect a result that finished while nobody was watching. Acknowledged attempts
leave a tombstone so a repeated ``start`` or a half-finished acknowledgement is harmless.

Each job runs under a supervisor process (``_supervisor.py``) that owns its whole process
tree, enforces its window (``term_at``/``kill_at``) and kills everything when this worker
dies. Commands carry the daemon's epoch: one older than the newest seen is refused.

On a node other than the daemon's, logs and lock files are node-local (``node_path``): the
daemon reads the logs through this actor (``log_sizes``, ``read_log``) and asks it to claim
the locks (``claim_locks``); no filesystem is shared. Workers need nothing but Ray: the
daemon ships this package with ``runtime_env={"py_modules": [...]}``, and this module and
what it imports (``_supervisor``, ``base``, the package's ``__init__``) use only the
standard library and ray.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from . import _codepack, _nodecache, _pyenv
from ._supervisor import SupervisedJob, claim_dead
from .base import CODE_FAILED_CODE, job_environment

# Why a rank was asked to stop. The first four are the executor's own requests or its
# window (outcome "killed"); "peer" means a peer rank failed; "lost" means a peer rank was lost.
EXECUTOR_REASONS = ("terminate", "kill", "release", "window")
FENCED = "fenced"


@dataclass
class RankRecord:
    """What one rank of one attempt did; plain data shipped to the driver."""

    job: str
    attempt: int
    rank: int
    bundle: int
    members: list[tuple[int, str, str]]  # (bundle, incarnation, node id) of each rank, in order
    gang_gpu_ids: list[str]  # device ids of every rank, in rank order
    started_at: float  # wall clock of this worker
    ended_at: float | None = None
    duration: float | None = None  # monotonic, so a clock step can't bend the metering
    exit_code: int | None = None
    stop_reason: str | None = None
    pid: int | None = None  # the job's main process
    supervisor: int | None = None  # its supervisor's pid
    acked: bool = False
    log: str = ""  # where the job's output is written on this node
    home: str | None = None  # the daemon's copy of it, when ``log`` is node-local
    code_digest: str | None = None  # the code snapshot the job runs (None: no code)
    code: str | None = None  # how this rank had it: "cached", "shipped", "failed"


# The directory holding this package when it was shipped by the daemon (py_modules), else
# None; the marker file is written by ``ray_adapter`` into the shipped copy only.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED_ROOT = (_PACKAGE_ROOT if os.path.exists(
    os.path.join(_PACKAGE_ROOT, "cellsched", "executor", "SHIPPED")) else None)


def node_dir() -> str:
    """This node's directory for node-local logs and locks: ``$CELLSCHED_NODE_DIR`` of the
    Ray node (set on ``ray start``), else ``<tmp>/cellsched-node-<uid>``."""
    return os.environ.get("CELLSCHED_NODE_DIR") or os.path.join(
        tempfile.gettempdir(), f"cellsched-node-{os.getuid()}")


def node_path(path: str) -> str:
    """Where a file the daemon wants at ``path`` (absolute, on its own host) lives on this
    node instead: the same path under ``<node_dir>/home``."""
    return os.path.join(node_dir(), "home", os.path.normpath(os.path.abspath(path)).lstrip("/"))


def code_cache_dir() -> str:
    """This node's cache of unpacked code snapshots: ``<node_dir>/code/<digest>``."""
    return os.path.join(node_dir(), "code")


def env_cache_dir() -> str:
    """This node's cache of Python environments for sealed lock files: ``<node_dir>/envs/<key>``."""
    return os.path.join(node_dir(), "envs")


def _make_read_only(root: str) -> None:
    """Take every write bit off the snapshot's files and directories (links untouched), so
    that a job writing into its code fails instead of changing it for the next job."""
    for d, dirs, files in os.walk(root, topdown=False):
        for n in files:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & 0o555)
        for n in dirs:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                os.chmod(p, 0o555)
    os.chmod(root, 0o555)


def fetch_code(digest: str, code: list[Any] | None, timeout: float = 600.0) -> tuple[str, str]:
    """The directory of snapshot ``digest`` on this node, and ``"cached"`` (it was there) or
    ``"shipped"`` (unpacked now from ``code[0]``: the archive's bytes, or a Ray object
    holding them, fetched only here). One rank per node and digest unpacks (a lock file
    beside the cache); the others wait and find it cached. Raises ``PackError`` (wrong
    digest, bad archive, or no bytes sent for a snapshot this node lacks) or Ray's error."""
    cache = code_cache_dir()
    done = _codepack.unpacked(cache, digest)
    if done is not None:
        return str(done), "cached"
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, f".{digest}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = _codepack.unpacked(cache, digest)
        if done is not None:
            return str(done), "cached"
        blob = code[0] if code else None
        if blob is None:
            raise _codepack.PackError("not on this node, and no bytes were sent", "digest")
        if not isinstance(blob, bytes):
            import ray

            blob = ray.get(blob, timeout=timeout)
        path = _codepack.unpack(blob, cache, digest)
        _make_read_only(str(path))
    _nodecache.evict(cache, keep=digest)
    return str(path), "shipped"


def claim_node_locks(lock_paths: list[str], dead_nodes: list[str]) -> bool:
    """``claim_dead`` on this node's copy of each lock that exists here (a missing one was
    never taken on this node); True if every one is proven dead."""
    dead = frozenset(dead_nodes)
    ok = True
    for p in lock_paths:
        local = node_path(p)
        if os.path.exists(local) and not claim_dead(local, socket.gethostname(), dead):
            ok = False
    return ok


def _strip_shipped(env: dict[str, str]) -> dict[str, str]:
    """The job's environment without the shipped package on ``PYTHONPATH`` (it is the
    executor's, not the job's)."""
    path = env.get("PYTHONPATH")
    if SHIPPED_ROOT is None or path is None:
        return env
    kept = [p for p in path.split(os.pathsep) if p and os.path.abspath(p) != SHIPPED_ROOT]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        del env["PYTHONPATH"]
    return env


def _in_code(orders: dict[str, Any], env: dict[str, str], path: str, digest: str,
             venv: str | None = None) -> None:
    """Run in the snapshot at ``path``: cwd there (a relative ``cwd`` inside it), and the
    code's variables in the job's environment; with ``venv``, in that Python environment."""
    orders["cwd"] = os.path.join(path, orders["cwd"]) if orders["cwd"] else path
    env["CELLSCHED_CODE_DIR"] = path
    env["CELLSCHED_CODE_DIGEST"] = digest
    if venv is not None:
        _pyenv.activate(env, venv)


def _env_key(code_dir: str, requirements: str) -> str:
    """The environment key of the snapshot's lock file ("" if it cannot be read: not ready)."""
    try:
        with open(os.path.join(code_dir, *requirements.split("/")), "rb") as f:
            return _pyenv.key_for(f.read())
    except OSError:
        return ""


def _note(log: str, line: str) -> None:
    """Append one line to a job's log (the reason it never started)."""
    try:
        os.makedirs(os.path.dirname(log), exist_ok=True)
        with open(log, "a") as f:
            f.write(line + "\n")
    except OSError:
        pass


def epoch_key(reservation: str) -> str:
    """Where ``fence`` records the epoch it pushed to the ranks of ``reservation``, in Ray's
    internal KV store (Ray namespace), so that a rank Ray restarts does not forget it."""
    return f"cellsched-epoch:{reservation}"


def stored_epoch(reservation: str) -> int:
    """The epoch the last ``fence`` stored for ``reservation`` (0 if none or unreadable)."""
    try:
        import ray
        from ray.experimental.internal_kv import _internal_kv_get

        ns = ray.get_runtime_context().namespace
        return int(_internal_kv_get(epoch_key(reservation), namespace=ns) or 0)
    except Exception:  # noqa: BLE001 - a missing store must not stop a rank from starting
        return 0


def free_port() -> int:
    """A TCP port free on this node right now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class RankWorker:
    """Runs one command at a time for one bundle; see the module docstring."""

    def __init__(self, reservation: str, bundle: int, epoch: int = 0) -> None:
        import ray

        self.reservation = reservation
        self.bundle = bundle
        # The newest daemon epoch seen (a fencing token). Ray restarts this actor with its
        # creation arguments, so the epoch ``fence`` recorded in Ray's KV store counts too.
        self.epoch = max(epoch, stored_epoch(reservation))
        # A fresh id per incarnation: after Ray restarts this actor elsewhere (node lost),
        # the driver sees a different id and knows the jobs started here are lost.
        self.incarnation = uuid.uuid4().hex
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self._lock = threading.Lock()
        self._records: dict[tuple[str, int], RankRecord] = {}
        self._procs: dict[tuple[str, int], SupervisedJob] = {}
        # Attempts whose code is being fetched (no process yet), and the signal a stop sent
        # them meanwhile: they then end without starting.
        self._preparing: set[tuple[str, int]] = set()
        # Cache entries (code snapshot, Python environment) each running attempt holds
        # against eviction: descriptors with a shared lock, closed when it ends.
        self._holds: dict[tuple[str, int], list[int]] = {}
        self._early: dict[tuple[str, int], int] = {}

    def _fenced(self, epoch: int | None) -> bool:
        """True if ``epoch`` is older than the newest seen; a newer one is remembered.
        ``None``: a rank's own call to a peer, never refused. Call with the lock held."""
        if epoch is None:
            return False
        if epoch < self.epoch:
            return True
        self.epoch = epoch
        return False

    def fence(self, epoch: int) -> int:
        """Remember ``epoch`` if newer; returns the epoch now remembered."""
        with self._lock:
            self.epoch = max(self.epoch, int(epoch))
            return self.epoch

    def info(self, key: tuple[str, int] | None = None, want_port: bool = False) -> dict[str, Any]:
        """Who and where this rank is; whether it is busy; whether it knows attempt ``key``
        (``state``: None, "running" or "ended")."""
        with self._lock:
            busy = any(r.ended_at is None for r in self._records.values())
            rec = None if key is None else self._records.get((str(key[0]), int(key[1])))
            known = rec is not None
            state = None if rec is None else ("running" if rec.ended_at is None else "ended")
            epoch = self.epoch
        return {
            "incarnation": self.incarnation,
            "node_id": self.node_id,
            "node_ip": self.node_ip,
            "gpu_ids": self.gpu_ids,
            "busy": busy,
            "known": known,
            "state": state,
            "epoch": epoch,
            "port": free_port() if want_port else None,
            "shipped": SHIPPED_ROOT is not None,
            "module": os.path.abspath(__file__),
        }

    def start(
        self,
        job: str,
        attempt: int,
        rank: int,
        members: list[tuple[int, str, str]],
        gang_gpu_ids: list[str],
        argv: list[str],
        gang_env: dict[str, str],
        rank_env: dict[str, str],
        log_path: str,
        lock_path: str,
        cwd: str | None,
        peers: list[Any],
        peer_grace: float,
        epoch: int | None = None,
        term_at: float | None = None,
        kill_at: float | None = None,
        pass_env: tuple[str, ...] = (),
        node_local: bool = False,
        code_digest: str | None = None,
        code: list[Any] | None = None,
        code_requirements: str | None = None,
    ) -> str:
        """Start the command for (job, attempt) under a supervisor unless already known;
        returns "started", "exists", "busy" or "fenced". Returns once the supervisor is
        spawned: the record shows the attempt running from then on, and a job that cannot
        be started ends with 127/126 (125: its lock says it was declared dead).
        ``node_local``: ``log_path``/``lock_path`` are the daemon's; write this node's
        copies (``node_path``) instead, for the daemon to pull.
        ``code_digest``: run in that snapshot (``fetch_code``; ``code``: ``[bytes or
        ObjectRef]``, a list so that Ray does not fetch it unless this node lacks it). A
        snapshot not cached here is fetched and unpacked in the background (the record shows
        the attempt running meanwhile); one that cannot be had ends the attempt with
        ``CODE_FAILED_CODE`` and the reason in its log. ``code_requirements``: the sealed
        lock file in the snapshot; the job runs in its Python environment (``_pyenv``),
        made in the background on a node that lacks it."""
        key = (job, attempt)
        home = log_path if node_local else None
        if node_local:
            log_path, lock_path = node_path(log_path), node_path(lock_path)
        with self._lock:
            if self._fenced(epoch):
                return FENCED
            if key in self._records:
                return "exists"
            if any(r.ended_at is None for r in self._records.values()):
                return "busy"
            rec = RankRecord(
                job, attempt, rank, self.bundle, [tuple(m) for m in members],  # type: ignore[misc]
                list(gang_gpu_ids), started_at=time.time(), log=log_path, home=home,
                code_digest=code_digest,
            )
            self._records[key] = rec
        t0 = time.monotonic()
        # The allowlisted environment (the worker's holds the daemon's secrets); Ray's
        # CUDA_VISIBLE_DEVICES for this bundle comes from the worker's.
        env = _strip_shipped(job_environment(os.environ, pass_env, gang_env, rank_env))
        orders = {"argv": list(argv), "log": log_path, "lock": lock_path, "cwd": cwd,
                  "term_at": term_at, "kill_at": kill_at, "grace": peer_grace,
                  "node": self.node_id}
        if code_digest is not None:
            try:
                done = _codepack.unpacked(code_cache_dir(), code_digest)
            except _codepack.PackError:
                done = None  # not a digest: the background path fails the attempt
            env_done = None
            if done is not None and code_requirements is not None:
                env_done = _pyenv.ready(env_cache_dir(), _env_key(str(done), code_requirements))
            if done is None or (code_requirements is not None and env_done is None):
                with self._lock:
                    self._preparing.add(key)
                threading.Thread(target=self._prepare, args=(
                    rec, code_digest, code, orders, env, t0, peers, peer_grace, code_requirements), daemon=True,
                ).start()
                return "started"
            rec.code = "cached"
            self._hold(key, str(done), env_done)
            _in_code(orders, env, str(done), code_digest, env_done)
        try:
            job = SupervisedJob.spawn(orders, env)
        except OSError:  # cannot even start the supervisor (no memory, no processes)
            self._finish(rec, 126, time.monotonic() - t0, peers, peer_grace)
            return "started"
        with self._lock:
            self._procs[key] = job
        # The supervisor starts the job in the background (tens of ms of Python start-up
        # that launch does not wait for); a stop meanwhile is queued in its pipe.
        threading.Thread(
            target=self._wait, args=(rec, job, t0, peers, peer_grace), daemon=True
        ).start()
        return "started"

    def _prepare(
        self, rec: RankRecord, digest: str, code: list[Any] | None, orders: dict[str, Any],
        env: dict[str, str], t0: float, peers: list[Any], peer_grace: float,
        requirements: str | None = None,
    ) -> None:
        """Fetch and unpack the code and make its Python environment (background), then
        start the job unless it was stopped meanwhile; a snapshot or environment that cannot
        be had fails the attempt."""
        key = (rec.job, rec.attempt)
        venv = None
        try:
            path, how = fetch_code(digest, code)
            if requirements is not None:
                venv, built = _pyenv.ensure(path, requirements, env_cache_dir(), orders["log"])
                if built == "built":
                    _nodecache.evict(env_cache_dir(), keep=os.path.basename(venv))
        except Exception as e:  # noqa: BLE001 - any reason ends the attempt, never the rank
            with self._lock:
                self._preparing.discard(key)
                self._early.pop(key, None)
                rec.code = "failed"
            _note(orders["log"], f"cellsched: code sha256:{digest} could not be had on node "
                                 f"{self.node_id}: {type(e).__name__}: {e}")
            self._finish(rec, CODE_FAILED_CODE, time.monotonic() - t0, peers, peer_grace)
            return
        self._hold(key, path, venv)
        _in_code(orders, env, path, digest, venv)
        job: SupervisedJob | None = None
        with self._lock:  # a stop now either came before (``_early``) or finds the process
            self._preparing.discard(key)
            rec.code = how
            sig = self._early.pop(key, None)
            if sig is None:
                try:
                    job = SupervisedJob.spawn(orders, env)
                    self._procs[key] = job
                except OSError:
                    pass
        if sig is not None:
            self._finish(rec, -sig, time.monotonic() - t0, peers, peer_grace)
        elif job is None:
            self._finish(rec, 126, time.monotonic() - t0, peers, peer_grace)
        else:
            self._wait(rec, job, t0, peers, peer_grace)

    def _wait(
        self, rec: RankRecord, job: SupervisedJob, t0: float, peers: list[Any],
        peer_grace: float,
    ) -> None:
        refused = job.started()
        if refused is not None:
            self._finish(rec, refused[0], time.monotonic() - t0, peers, peer_grace)
            return
        with self._lock:
            rec.started_at, rec.pid, rec.supervisor = job.started_at, job.pid, job.supervisor
        # The supervisor answers only once every process of the job is gone.
        code, seconds, why = job.wait()
        if why in ("term_at", "kill_at"):
            with self._lock:
                if rec.stop_reason is None:
                    rec.stop_reason = "window"
        self._finish(rec, code, time.monotonic() - t0 if seconds is None else seconds,
                     peers, peer_grace)

    def _hold(self, key: tuple[str, int], code_dir: str, venv: str | None) -> None:
        """Hold the attempt's snapshot (and environment) against eviction until it ends."""
        fds = [_nodecache.hold(code_cache_dir(), os.path.basename(code_dir))]
        if venv is not None:
            fds.append(_nodecache.hold(env_cache_dir(), os.path.basename(venv)))
        with self._lock:
            self._holds.setdefault(key, []).extend(fd for fd in fds if fd is not None)

    def _finish(
        self, rec: RankRecord, code: int, duration: float, peers: list[Any], peer_grace: float,
    ) -> None:
        with self._lock:
            rec.duration = duration
            rec.ended_at = rec.started_at + rec.duration
            rec.exit_code = code
            self._procs.pop((rec.job, rec.attempt), None)
            for fd in self._holds.pop((rec.job, rec.attempt), ()):
                os.close(fd)
            natural_failure = code != 0 and rec.stop_reason is None
        if natural_failure:
            # The gang cannot go on without this rank: stop the peers now, even if no driver
            # is watching (they would otherwise hang in a collective until the window ends).
            for p in peers:
                p.stop.remote(rec.job, rec.attempt, int(signal.SIGTERM), "peer", peer_grace)

    def stop(
        self,
        job: str | None = None,
        attempt: int | None = None,
        sig: int = int(signal.SIGTERM),
        reason: str = "terminate",
        grace: float | None = None,
        epoch: int | None = None,
    ) -> int:
        """Have the supervisor of each matching running attempt send ``sig`` to the job's
        whole tree (SIGKILL after ``grace`` seconds if given). Returns how many were
        signalled, or -1 if ``epoch`` is fenced."""
        with self._lock:
            if self._fenced(epoch):
                return -1
            targets = [
                (k, p)
                for k, p in self._procs.items()
                if (job is None or k[0] == job) and (attempt is None or k[1] == attempt)
            ]
            early = [k for k in self._preparing
                     if (job is None or k[0] == job) and (attempt is None or k[1] == attempt)]
            for k in early:
                self._early.setdefault(k, int(sig))
            for k in [k for k, _ in targets] + early:
                rec = self._records[k]
                # First reason wins: a failure's peers stay "peer" even if killed later.
                if rec.stop_reason is None:
                    rec.stop_reason = reason
        for _, p in targets:
            p.signal(sig, None if sig == signal.SIGKILL else grace)
        return len(targets) + len(early)

    def snapshot(self) -> dict[str, Any]:
        """Every record (acknowledged ones as tombstones) plus this incarnation's id."""
        with self._lock:
            return {
                "incarnation": self.incarnation,
                "epoch": self.epoch,
                "records": [asdict(r) for r in self._records.values()],
            }

    def ack(self, keys: list[tuple[str, int]], epoch: int | None = None) -> bool:
        """The driver has the results of these attempts: keep only a tombstone. False if
        ``epoch`` is fenced (nothing done)."""
        with self._lock:
            if self._fenced(epoch):
                return False
            for k in keys:
                r = self._records.get(tuple(k))  # type: ignore[arg-type]
                if r is not None and r.ended_at is not None:
                    r.acked = True
        return True

    def log_sizes(self) -> list[tuple[str, int]]:
        """``(daemon's path, bytes on this node)`` of every node-local log of this rank."""
        with self._lock:
            recs = [(r.home, r.log) for r in self._records.values() if r.home]
        out = []
        for home, log in recs:
            try:
                out.append((home, os.path.getsize(log)))
            except OSError:
                out.append((home, 0))  # not created yet (the supervisor is starting)
        return out

    def read_log(self, home: str, offset: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of the node-local log whose daemon copy is ``home``, from
        ``offset`` (b"" when there is nothing more, or no such log)."""
        with self._lock:
            log = next((r.log for r in self._records.values() if r.home == home), None)
        if log is None:
            return b""
        try:
            with open(log, "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except OSError:
            return b""

    def drop_logs(self, have: dict[str, int]) -> int:
        """Delete the node-local logs the daemon has whole (``have``: its copy's size per
        path, equal to the size here); returns how many. Lock files stay: they are the
        proof of death ``attempt_fate`` may still ask for."""
        with self._lock:
            logs = [(r.home, r.log) for r in self._records.values()
                    if r.home and r.ended_at is not None]
        dropped = 0
        for home, log in logs:
            try:
                if home in have and os.path.getsize(log) == have[home]:
                    os.unlink(log)
                    dropped += 1
            except OSError:
                continue
        return dropped

    def claim_locks(self, lock_paths: list[str], dead_nodes: list[str]) -> bool:
        """``claim_node_locks`` on this rank's node (for ``attempt_fate``)."""
        return claim_node_locks(lock_paths, dead_nodes)
