"""The daemon loop around the reconciler: connect to Ray, tick every ``interval``, stop
cleanly on SIGTERM/SIGINT (groups stay: they are detached, and a restarted daemon
re-adopts them by name)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Mapping

from cellsched.runtime.reconciler import Reconciler, Settings
from cellsched.service import Env

log = logging.getLogger("cellsched.daemon")


def setup_logging(verbose: bool = False) -> None:
    """Daemon logs go to stderr, one line per action."""
    root = logging.getLogger("cellsched")
    if not any(getattr(h, "_cellsched", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
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


def serve(env: Env, executor: Any, interval: float = 1.0, once: bool = False,
          settings: Settings | None = None, stop: threading.Event | None = None) -> int:
    """Run the reconciler until stopped (or one pass with ``once``); returns an exit code."""
    stop = stop or threading.Event()
    settings = settings or Settings(notify_in_background=not once)
    rec = Reconciler(env, executor, settings=settings)
    log.info("daemon up: ledger %s, groups named %s*, tick every %.2f s",
             env.ledger.url.split("?")[0], rec.prefix, interval)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    errors = 0
    while True:
        t = time.monotonic()
        res = rec.tick()
        errors += res.errors
        if once or stop.is_set():
            break
        stop.wait(max(0.0, interval - (time.monotonic() - t)))
        if stop.is_set():
            break
    rec.drain()
    log.info("daemon stopped")
    return 1 if once and errors else 0
