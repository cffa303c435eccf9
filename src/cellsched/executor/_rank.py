"""The rank worker: one long-lived, detached Ray actor per one-GPU bundle.

This module is imported by Ray workers (the class is turned into an actor by
``ray_adapter``); it imports ray only inside methods so that importing it stays cheap.

The worker owns the truth about the jobs it ran: start/end (its own clocks), exit code and
why it stopped, kept until the driver acknowledges them. That is what lets a restarted
daemon collect a result that finished while nobody was watching. Acknowledged attempts
leave a tombstone so a repeated ``start`` or a half-finished acknowledgement is harmless.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

# Why a rank was asked to stop. The first three are the executor's own requests
# (outcome "killed"); "peer" means a peer rank failed; "lost" means a peer rank was lost.
EXECUTOR_REASONS = ("terminate", "kill", "release")


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
    pid: int | None = None
    acked: bool = False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port() -> int:
    """A TCP port free on this node right now (for MASTER_PORT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class RankWorker:
    """Runs one command at a time for one bundle; see the module docstring."""

    def __init__(self, reservation: str, bundle: int) -> None:
        import ray

        self.reservation = reservation
        self.bundle = bundle
        # A fresh id per incarnation: after Ray restarts this actor elsewhere (node lost),
        # the driver sees a different id and knows the jobs started here are lost.
        self.incarnation = uuid.uuid4().hex
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        self.node_ip = ray.util.get_node_ip_address()
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()]
        self._lock = threading.Lock()
        self._records: dict[tuple[str, int], RankRecord] = {}
        self._procs: dict[tuple[str, int], subprocess.Popen[bytes]] = {}

    def info(self, key: tuple[str, int] | None = None, want_port: bool = False) -> dict[str, Any]:
        """Who and where this rank is; whether it is busy; whether it knows attempt ``key``."""
        with self._lock:
            busy = any(r.ended_at is None for r in self._records.values())
            known = key is not None and tuple(key) in self._records
        return {
            "incarnation": self.incarnation,
            "node_id": self.node_id,
            "node_ip": self.node_ip,
            "gpu_ids": self.gpu_ids,
            "busy": busy,
            "known": known,
            "port": free_port() if want_port else None,
        }

    def start(
        self,
        job: str,
        attempt: int,
        rank: int,
        members: list[tuple[int, str, str]],
        gang_gpu_ids: list[str],
        argv: list[str],
        env: dict[str, str],
        log_path: str,
        cwd: str | None,
        peers: list[Any],
        peer_grace: float,
    ) -> str:
        """Start the command for (job, attempt) unless already known; returns "started",
        "exists" or "busy". Returns once the process is running (or has failed to exec)."""
        key = (job, attempt)
        with self._lock:
            if key in self._records:
                return "exists"
            if any(r.ended_at is None for r in self._records.values()):
                return "busy"
            rec = RankRecord(
                job, attempt, rank, self.bundle, [tuple(m) for m in members],  # type: ignore[misc]
                list(gang_gpu_ids), started_at=time.time(),
            )
            self._records[key] = rec
        t0 = time.monotonic()
        try:
            os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
            log = open(log_path, "ab")
        except OSError as e:
            self._finish(rec, 126, t0, peers, peer_grace, note=f"cannot open log {log_path}: {e}")
            return "started"
        try:
            with log:
                # Own session = own process group, so killpg reaches every descendant that
                # does not deliberately escape (ray.kill alone leaves grandchildren behind).
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **env},  # inherits Ray's CUDA_VISIBLE_DEVICES
                    cwd=cwd,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as e:
            code = 127 if isinstance(e, FileNotFoundError) else 126
            with open(log_path, "ab") as f:
                f.write(f"cellsched: cannot execute {argv!r}: {e}\n".encode())
            self._finish(rec, code, t0, peers, peer_grace)
            return "started"
        with self._lock:
            rec.pid = proc.pid
            self._procs[key] = proc
        threading.Thread(
            target=self._wait, args=(rec, proc, t0, peers, peer_grace), daemon=True
        ).start()
        return "started"

    def _wait(
        self, rec: RankRecord, proc: subprocess.Popen[bytes], t0: float, peers: list[Any],
        peer_grace: float,
    ) -> None:
        # Wait without reaping: while the leader is a zombie its pgid cannot be reused, so the
        # killpg below is sure to hit only this job's leftovers (e.g. background grandchildren
        # that would otherwise keep the GPU after the job's recorded end).
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        _killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        self._finish(rec, code, t0, peers, peer_grace)

    def _finish(
        self, rec: RankRecord, code: int, t0: float, peers: list[Any], peer_grace: float,
        note: str | None = None,
    ) -> None:
        with self._lock:
            rec.duration = time.monotonic() - t0
            rec.ended_at = rec.started_at + rec.duration
            rec.exit_code = code
            self._procs.pop((rec.job, rec.attempt), None)
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
    ) -> int:
        """Send ``sig`` to the process group of each matching running attempt; SIGKILL after
        ``grace`` seconds if still running. Returns how many were signalled."""
        with self._lock:
            targets = [
                (k, p)
                for k, p in self._procs.items()
                if (job is None or k[0] == job) and (attempt is None or k[1] == attempt)
            ]
            for k, _ in targets:
                rec = self._records[k]
                # First reason wins: a failure's peers stay "peer" even if killed later.
                if rec.stop_reason is None:
                    rec.stop_reason = reason
        for k, p in targets:
            _killpg(p.pid, sig)
            if grace is not None and sig != signal.SIGKILL:
                t = threading.Timer(grace, self._escalate, args=(k, p))
                t.daemon = True
                t.start()
        return len(targets)

    def _escalate(self, key: tuple[str, int], proc: subprocess.Popen[bytes]) -> None:
        with self._lock:
            alive = self._procs.get(key) is proc
        if alive:
            _killpg(proc.pid, signal.SIGKILL)

    def snapshot(self) -> dict[str, Any]:
        """Every record (acknowledged ones as tombstones) plus this incarnation's id."""
        with self._lock:
            return {
                "incarnation": self.incarnation,
                "records": [asdict(r) for r in self._records.values()],
            }

    def ack(self, keys: list[tuple[str, int]]) -> None:
        """The driver has the results of these attempts: keep only a tombstone."""
        with self._lock:
            for k in keys:
                r = self._records.get(tuple(k))  # type: ignore[arg-type]
                if r is not None and r.ended_at is not None:
                    r.acked = True
