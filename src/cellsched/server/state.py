"""What the server keeps between requests."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from cellsched.service import Env


@dataclass
class ServerState:
    """The server's environment (cluster config, ledger) and what it caches.

    ``metrics`` is the server's own Prometheus registry and instruments
    (``cellsched.server.metrics.Metrics``), set by ``create_app``; ``max_body`` and
    ``max_code_body`` are the request size limits in bytes; ``uploads_at_once`` how many
    code uploads' bodies are read at a time; ``pages_at_once`` and ``pages_waiting`` how many
    dashboard pages are drawn at a time and how many more may wait."""

    env: Env
    started_at: float = field(default_factory=time.time)
    max_body: int = 1 << 20
    max_code_body: int = 100 << 20
    metrics: Any = None
    uploads_at_once: int = 2  # code upload bodies read at a time (each up to max_code_body)
    uploads: Any = None  # their asyncio.Semaphore, made in the server's event loop
    # A user's uploads are read one at a time (``uploading``: users reading or waiting to);
    # a body that sends nothing for ``upload_idle_s``, or is not in after ``upload_read_s``,
    # gives up its turn (408): else two slow uploads kept every team from uploading.
    uploading: set[str] = field(default_factory=set)
    upload_idle_s: float = 30.0
    upload_read_s: float = 900.0
    # Dashboard pages (no token needed, seconds each on a busy ledger): drawn this many at a
    # time, this many more wait their turn without a thread; any more are told it is busy.
    pages_at_once: int = 1
    pages_waiting: int = 8
    pages: Any = None  # their server.dashboard.PageGate, made in the server's event loop
    # Requests of one user in progress at once (the thread pool every route runs in has 40
    # threads); the next is answered 429. ``in_progress``: user -> count (event loop only).
    per_user_at_once: int = 16
    in_progress: dict[str, int] = field(default_factory=dict)
    # Submits of one user (each a ledger event, granted or refused): a burst of this many,
    # then this many a second (a token bucket); the next is answered 429. A loop of refused
    # submits otherwise grew the ledger by about 580 bytes an event, 2-3 ms apart.
    submits: SubmitRate = field(default_factory=lambda: SubmitRate(120, 1.0))


@dataclass
class SubmitRate:
    """A token bucket per user (touched on the event loop's thread only): ``take`` spends a
    token and answers 0, or answers the seconds until one is there."""

    burst: int
    per_s: float
    left: dict[str, tuple[float, float]] = field(default_factory=dict)  # user -> (tokens, when)

    def take(self, user: str, now: float) -> float:
        tokens, at = self.left.get(user, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_s)
        if tokens >= 1.0:
            self.left[user] = (tokens - 1.0, now)
            return 0.0
        self.left[user] = (tokens, now)
        return (1.0 - tokens) / self.per_s
