"""The daemon loop around the reconciler: take the ledger's lease (or stand by for it),
connect to Ray, tick every ``interval`` while a heartbeat thread renews the lease, stop
cleanly on SIGTERM/SIGINT (shut the reconciler down, release the lease). See
docs/daemon.md, "One daemon per ledger"."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from cellsched.errors import BadInput
from cellsched.executor.base import Fenced
from cellsched.ledger.lease import (
    Deposed,
    Lease,
    LeaseHeld,
    acquire,
    record_gpus,
    release,
    renew,
    timings,
    wait_acquire,
)
from cellsched.runtime.reconciler import Reconciler, Settings
from cellsched.service import Env

log = logging.getLogger("cellsched.daemon")

#: How long ``serve --address`` waits for ``ray.init`` on an address that accepts TCP
#: connections (Ray 2.60 retries an unresponsive one for minutes without raising).
CONNECT_TIMEOUT_S = 60.0


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (test runners swap it per command)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(verbose: bool = False) -> None:
    """Daemon logs go to stderr, one line per action."""
    root = logging.getLogger("cellsched")
    if not any(getattr(h, "_cellsched", False) for h in root.handlers):
        h = _Stderr(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
        h._cellsched = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def ray_executor(address: str | None, local_gpus: int | None = None,
                 extra_init: Mapping[str, Any] | None = None) -> Any:
    """A RayExecutor on ``address`` (or ``RAY_ADDRESS``), else on a new local Ray.

    A local Ray started here lives as long as this process: its detached groups die with it,
    so a local daemon restarted after a crash starts from the ledger alone."""
    from cellsched.executor.ray_adapter import RayExecutor

    init: dict[str, Any] = {"log_to_driver": False}
    target = address or os.environ.get("RAY_ADDRESS")
    if not target or target == "local":
        # A fresh local Ray: no dashboard (faster start), and no token auth (Ray 2.60 would
        # otherwise write a token into the home directory).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        init["include_dashboard"] = False
        if local_gpus is not None:
            init["num_gpus"] = local_gpus
        target = "local"
    init.update(extra_init or {})
    t = time.monotonic()
    ex = RayExecutor(address=target, ray_init=init)
    log.info("connected to Ray (%s) in %.1f s", "new local cluster" if target == "local" else target,
             time.monotonic() - t)
    return ex



def check_address(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail fast (BadInput, exit 2) when ``address`` names a Ray that does not answer:
    ``ray.init`` on an unreachable address retries for minutes (Ray 2.60)."""
    if not address or address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1].split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep:
        return  # an address form we do not know: let Ray judge it
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise BadInput(f"--address {address}: {port!r} is not a port number (1-65535)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise BadInput(f"--address {address}: no Ray cluster answers there ({why})") from None


def _no_sigterm_note(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("SIGTERM handler is not set")


class RayUnresponsive(BadInput):
    """``ray.init`` on an address did not return in time; it is still stuck in a thread, so
    the process must leave with ``os._exit`` (a normal exit would wait for Ray's atexit)."""


def connect(address: str | None, local_gpus: int | None = None,
            timeout_s: float = CONNECT_TIMEOUT_S) -> tuple[Any, bool]:
    """(the executor on ``address`` or a new local Ray, whether it started a local Ray).
    An unreachable or unresponsive address: BadInput (one line, exit 2) in bounded time:
    a TCP connect first, then ``timeout_s`` for ``ray.init`` in a thread (a new local Ray is
    started in this thread, unbounded: slow on a busy machine, but it does not hang)."""
    target = address or os.environ.get("RAY_ADDRESS")
    local = not target or target == "local"
    check_address(target)
    if local:
        return ray_executor(address, local_gpus=local_gpus), True
    box: dict[str, Any] = {}

    def init() -> None:
        try:
            box["ex"] = ray_executor(address, local_gpus=local_gpus)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e

    # ray.init in a thread says it cannot set its SIGTERM handler: serve sets its own anyway.
    ray_log = logging.getLogger("ray._private.worker")
    ray_log.addFilter(_no_sigterm_note)
    t = threading.Thread(target=init, name="cellsched-ray-init", daemon=True)
    t.start()
    t.join(timeout_s)
    ray_log.removeFilter(_no_sigterm_note)
    if t.is_alive():
        raise RayUnresponsive(f"--address {target}: Ray did not answer within {timeout_s:g} s")
    err = box.get("error")
    if isinstance(err, ConnectionError):
        raise BadInput(f"--address {target}: cannot connect to Ray ({str(err).splitlines()[0]})") from None
    if err is not None:
        raise err
    return box["ex"], local


def check_gpus(env: Env, lease: Lease, have: int | None) -> None:
    """Warn loudly if Ray has fewer GPUs than the cluster config's pools declare (and serve
    anyway: a standby taking over while a node is down must), and record both in the lease
    so that ``cellsched daemon`` shows the shortfall. Fenced by the lease's epoch."""
    declared = sum(p.gpus for p in env.cluster.pools)
    if have is not None and have < declared:
        log.warning("Ray has %d GPUs but the cluster config's pools declare %d: %d short; serving anyway, "
                    "grants that cannot be placed are recorded as breaches", have, declared, declared - have)
    record_gpus(env.ledger, lease, have, declared)


class Heartbeat(threading.Thread):
    """Renews the lease every ``every_s``. On :class:`Deposed` (or no successful renewal for
    a whole lease duration) it sets ``deposed`` and ``stop_daemon``: the daemon stops acting."""

    def __init__(self, env: Env, lease: Lease, every_s: float, duration_s: float, stop: threading.Event) -> None:
        super().__init__(name="cellsched-lease", daemon=True)
        self.env, self.lease, self.every_s, self.duration_s = env, lease, every_s, duration_s
        self.stop_daemon = stop
        self.done = threading.Event()
        self.deposed: str | None = None
        self.pass_ms: float | None = None  # the last reconcile pass, sent with the next heartbeat

    def run(self) -> None:
        last_ok = time.monotonic()
        while not self.done.wait(self.every_s):
            try:
                self.lease = renew(self.env.ledger, self.lease, pass_ms=self.pass_ms)
                last_ok = time.monotonic()
            except Deposed as e:
                self.depose(str(e))
                return
            except Exception as e:  # the database is unreachable: retry until the lease is surely gone
                log.warning("lease renewal failed (%s); retrying", str(e).splitlines()[0])
                if time.monotonic() - last_ok >= self.duration_s:
                    self.depose(f"no renewal for {self.duration_s:g} s: the lease has expired")
                    return

    def depose(self, why: str) -> None:
        if self.deposed is None:
            self.deposed = why
            log.error("deposed: %s; stopping at once", why)
        self.stop_daemon.set()


def _reconciler(env: Env, executor: Any, settings: Settings, lease: Lease) -> Reconciler:
    down = lease.prev_renewed_at  # the previous daemon's last heartbeat: no daemon since then
    return Reconciler(env, executor, settings=settings, epoch=lease.epoch,
                      down_since=None if down is None else int(down))


def _on_signals(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM: stop (shut down cleanly, release the lease). A second one: exit
    now; the lease then simply expires."""

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: exiting now (the lease will expire by itself)", name)
            logging.shutdown()
            os._exit(130)
        log.info("%s: stopping", name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


def serve(env: Env, executor: Any, interval: float = 1.0, once: bool = False,
          settings: Settings | None = None, stop: threading.Event | None = None,
          lease: Lease | None = None, local_ray: bool = False, heartbeat: Heartbeat | None = None) -> int:
    """Run the reconciler until stopped (or one pass with ``once``); returns an exit code.

    Holds the ledger's lease throughout: acquired here unless ``lease`` or a running
    ``heartbeat`` is given (raises :class:`LeaseHeld` if another daemon has it), renewed by the
    heartbeat thread. Deposed: stop at once, exit 1. Stopped: ``shutdown`` the reconciler
    (``local_ray``: the jobs die with this process's Ray, so they are stopped and recorded
    ``interrupted``), release the lease, exit 0."""
    if heartbeat is None:
        duration_s, renew_s, _ = timings()
        if lease is None:
            lease = acquire(env.ledger, duration_s=duration_s)
            log.info("lease acquired: epoch %d", lease.epoch)
        heartbeat = Heartbeat(env, lease, renew_s, duration_s, stop or threading.Event())
        heartbeat.start()
    hb = heartbeat
    errors = 0
    try:
        if hb.deposed is None:
            rec = _reconciler(env, executor, settings or Settings(notify_in_background=not once), hb.lease)
            if threading.current_thread() is threading.main_thread():
                _on_signals(hb.stop_daemon)
            log.info("daemon up: ledger %s, groups named %s*, tick every %.2f s, lease epoch %d",
                     env.ledger.url.split("?")[0], rec.prefix, interval, hb.lease.epoch)
            errors = _loop(rec, hb, interval, once)
            if hb.deposed is None:
                shutdown = getattr(rec, "shutdown", None)
                if shutdown is not None and not once:
                    shutdown(local_ray=local_ray)
                rec.drain()
    finally:
        hb.done.set()
    hb.join(timeout=5)
    if hb.deposed is not None:
        log.error("daemon stopped: deposed (lease epoch %d)", hb.lease.epoch)
        return 1
    release(env.ledger, hb.lease)
    log.info("daemon stopped; lease released")
    return 1 if once and errors else 0


def _loop(rec: Reconciler, hb: Heartbeat, interval: float, once: bool) -> int:
    """Tick every ``interval`` until stopped or deposed; returns how many steps failed."""
    stop = hb.stop_daemon
    errors, passes = 0, 0
    while hb.deposed is None:
        t = time.monotonic()
        try:
            errors += rec.tick().errors
        except (Deposed, Fenced) as e:  # the ledger or the ranks know a newer epoch
            hb.depose(str(e))
            break
        hb.pass_ms = (time.monotonic() - t) * 1000
        passes += 1
        if passes == 1:
            log.info("first reconcile pass done at %.3f (lease epoch %d)", time.time(), hb.lease.epoch)
        if once or stop.is_set():
            break
        stop.wait(max(0.0, interval - (time.monotonic() - t)))
        if stop.is_set():
            break
    return errors


def run(env: Env, address: str | None, gpus: int | None, *, standby: bool = False, interval: float = 1.0,
        once: bool = False, settings: Settings | None = None, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> int:
    """``cellsched serve``: the lease first (held by another: LeaseHeld, one line, exit 2),
    then Ray; with ``standby``, Ray first (a hot standby), then wait for the lease and take
    over. The heartbeat runs from the moment the lease is held (connecting to Ray can take
    longer than a lease)."""
    env.ledger.ensure_schema()  # an unknown schema version: one line, exit 2, before anything else
    duration_s, renew_s, retry_s = timings()
    stop = threading.Event()
    if not standby:
        lease = acquire(env.ledger, duration_s=duration_s)
        log.info("lease acquired: epoch %d", lease.epoch)
        hb = Heartbeat(env, lease, renew_s, duration_s, stop)
        hb.start()
        try:
            ex, local = connect(address, gpus, connect_timeout_s)
        except BaseException:
            hb.done.set()
            hb.join(timeout=5)
            release(env.ledger, hb.lease)
            raise
    else:
        ex, local = connect(address, gpus, connect_timeout_s)
        if threading.current_thread() is threading.main_thread():
            _on_signals(stop)

        def held(h: LeaseHeld) -> None:
            log.info("standby: pid %d on %s holds the lease (epoch %d); retrying every %g s",
                     h.pid, h.host, h.epoch, retry_s)

        got = wait_acquire(env.ledger, stop, duration_s=duration_s, retry_s=retry_s, on_held=held)
        if got is None:
            log.info("standby stopped before taking over")
            if local:
                _stop_local_ray()
            return 0
        gap = "" if got.prev_renewed_at is None else f", {got.since - got.prev_renewed_at:.1f} s after the last heartbeat"
        log.info("took over the lease (epoch %d) at %.3f%s", got.epoch, time.time(), gap)
        hb = Heartbeat(env, got, renew_s, duration_s, stop)
        hb.start()
    try:
        check_gpus(env, hb.lease, ex.cluster_gpus() if hasattr(ex, "cluster_gpus") else None)
    except Deposed as e:
        hb.depose(str(e))
    try:
        return serve(env, ex, interval=interval, once=once, settings=settings, local_ray=local, heartbeat=hb)
    finally:
        if local:
            _stop_local_ray()


def _stop_local_ray() -> None:
    """Stop the local Ray this process started, now (its jobs were stopped and recorded by
    the reconciler's shutdown). Left to Ray's exit hook, the stop began with a 0.5 s pause
    for workers' output to reach the driver, which ``log_to_driver=False`` never sends."""
    import ray

    ray.shutdown()
