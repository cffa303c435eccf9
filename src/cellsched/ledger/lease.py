"""One daemon per ledger: a lease in the ledger, judged by the database's clock, with an
epoch that fences every daemon write (Kubernetes leader election plus a fencing token).

The lease is one row (``cs_lease``). ``acquire`` takes it when it is free (never held,
released, or expired by the database's clock) and bumps ``epoch``; the holder ``renew``s it
every :data:`RENEW_EVERY_S`; a standby retries every :data:`RETRY_EVERY_S` and takes over
once the lease has expired. A daemon write goes through ``Ledger.write(epoch=lease.epoch)``,
which refuses (:class:`Deposed`) unless that epoch is still the current, live lease, so a
leader that was paused past its lease and wakes up after a standby took over cannot write.

Timings (lease duration > renew period > retry period): a leader that dies stops renewing;
its lease runs out at most :data:`LEASE_DURATION_S` after its last heartbeat, and a standby
notices within :data:`RETRY_EVERY_S` more, so takeover takes ≤ ~11 s after the death (plus
the standby's first reconcile pass). A leader that cannot renew for a whole lease duration
(database unreachable, process paused) is deposed: its next renewal or write raises.

All times are epoch seconds read from the database (PostgreSQL's ``clock_timestamp()``,
SQLite's ``julianday('now')``: a SQLite standby is on the same host anyway), never the
daemons' own clocks.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from cellsched.errors import BadInput
from cellsched.ledger.db import Deposed, Ledger, db_now_sql
from cellsched.ledger.tables import LeaseRow
from cellsched.spec.cluster import Pool

__all__ = [
    "LEASE_DURATION_S", "RENEW_EVERY_S", "RETRY_EVERY_S", "Lease", "LeaseHeld", "Deposed",
    "DaemonState", "acquire", "renew", "release", "wait_acquire", "state", "record_gpus",
    "timings", "this_host", "pool_census", "pool_without_nodes",
]

#: How long a lease lasts after its last heartbeat (database clock). A holder that has not
#: renewed for this long is gone: a standby may take over, and the holder's writes fail.
LEASE_DURATION_S = 10
#: The holder renews this often: a lease survives four missed heartbeats.
RENEW_EVERY_S = 2
#: A standby (or a waiting ``acquire``) tries again this often.
RETRY_EVERY_S = 1

#: Tests and benchmarks may shorten the lease (seconds; renew and retry scale with it).
LEASE_ENV = "CELLSCHED_LEASE_S"
#: The host name a daemon records in the lease (default: the machine's): for containers that
#: share a host name, and for tests that play two hosts on one machine.
HOST_ENV = "CELLSCHED_LEASE_HOST"

log = logging.getLogger("cellsched.lease")


def timings() -> tuple[float, float, float]:
    """(lease duration, renew period, retry period): the constants, or scaled down from
    ``CELLSCHED_LEASE_S`` (renew = duration / 5, retry = duration / 10)."""
    raw = os.environ.get(LEASE_ENV)
    if not raw:
        return float(LEASE_DURATION_S), float(RENEW_EVERY_S), float(RETRY_EVERY_S)
    try:
        d = float(raw)
    except ValueError:
        raise BadInput(f"{LEASE_ENV}: not a number of seconds: {raw!r}") from None
    if not 0.5 <= d <= 3600:
        raise BadInput(f"{LEASE_ENV}: {raw} is out of range (0.5 to 3600 seconds)")
    return d, d * RENEW_EVERY_S / LEASE_DURATION_S, d * RETRY_EVERY_S / LEASE_DURATION_S


@dataclass(frozen=True)
class Lease:
    """The lease as its holder got it (times: database clock, epoch seconds)."""

    holder: str
    epoch: int
    host: str
    pid: int
    since: float
    renewed_at: float
    expires_at: float
    prev_renewed_at: float | None  # the previous holder's last heartbeat; None if none ever


class LeaseHeld(BadInput):
    """Another daemon holds an unexpired lease on this ledger (exit 2)."""

    def __init__(self, host: str, pid: int, since: float, expires_in: float, epoch: int = 0) -> None:
        self.host, self.pid, self.since, self.expires_in, self.epoch = host, pid, since, expires_in, epoch
        super().__init__(
            f"another daemon serves this ledger: pid {pid} on {host}, since {_hm(since, True)} "
            f"(epoch {epoch}; its lease expires in {max(0.0, expires_in):.0f} s unless renewed; "
            "use --standby to take over when it stops)"
        )


def _hm(t: float | None, seconds: bool = False) -> str:
    """A database time for people: local time, minutes (or seconds); the date if not today."""
    import datetime as dt

    if t is None:
        return "-"
    d = dt.datetime.fromtimestamp(t).astimezone()
    fmt = "%H:%M:%S" if seconds else "%H:%M"
    if d.date() != dt.datetime.now().astimezone().date():
        fmt = "%Y-%m-%d " + fmt
    return d.strftime(fmt)


def _now(s: Session, ledger: Ledger) -> float:
    return float(s.exec(text(f"SELECT {db_now_sql(ledger.is_sqlite)}")).one()[0])  # type: ignore[call-overload]


def _lease(row: LeaseRow) -> Lease:
    return Lease(row.holder, row.epoch, row.host, row.pid, row.since, row.renewed_at, row.expires_at,
                 row.prev_renewed_at)


def this_host() -> str:
    """The host name recorded in the lease: ``CELLSCHED_LEASE_HOST``, else the machine's."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def _gone(pid: int) -> bool:
    """Whether no process ``pid`` lives on this machine (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1] in (b"Z", b"X")
    except (OSError, ValueError):
        return False


def acquire(ledger: Ledger, *, host: str | None = None, pid: int | None = None,
            duration_s: float = LEASE_DURATION_S) -> Lease:
    """Take the lease (epoch + 1) unless another holder's is unexpired: then :class:`LeaseHeld`.

    A holder on this same host whose process is gone (kill -9, OOM, crash) is not waited
    for: a restart on the same host takes over at once. Safe either way: every write of the
    old holder is fenced by its epoch."""
    host = host or this_host()
    pid = os.getpid() if pid is None else pid
    with ledger.write() as s:
        now = _now(s, ledger)
        row = s.get(LeaseRow, 1)
        if row is not None and not row.released and row.expires_at > now:
            if not (row.host == host and row.pid != pid and _gone(row.pid)):
                raise LeaseHeld(row.host, row.pid, row.since, row.expires_at - now, row.epoch)
            log.info("the lease holder, pid %d on this host, is gone: taking over without waiting", row.pid)
        if row is None:
            row = LeaseRow(id=1, holder="", host="", pid=0, since=now, renewed_at=now, expires_at=now,
                           duration_s=duration_s, epoch=0)
            prev = None
        else:
            prev = row.renewed_at
        row.holder, row.host, row.pid, row.epoch = uuid.uuid4().hex, host, pid, row.epoch + 1
        row.since = row.renewed_at = now
        row.expires_at = now + duration_s
        row.duration_s = duration_s
        row.released = False
        row.prev_renewed_at = prev
        row.ray_gpus = row.declared_gpus = None
        s.add(row)
        s.flush()
        return _lease(row)


def renew(ledger: Ledger, lease: Lease, pass_ms: float | None = None) -> Lease:
    """Extend the lease by its duration from now (database clock); :class:`Deposed` if its
    epoch is no longer current, or it was released, or it has expired. ``pass_ms`` (the
    holder's last reconcile pass) is recorded for ``cellsched daemon`` and the metrics."""
    with ledger.write() as s:
        now = _now(s, ledger)
        row = s.get(LeaseRow, 1)
        if row is None or row.epoch != lease.epoch or row.holder != lease.holder:
            by = "" if row is None else f" by pid {row.pid} on {row.host} (epoch {row.epoch})"
            raise Deposed(f"lease epoch {lease.epoch} was taken over{by}")
        if row.released:
            raise Deposed(f"lease epoch {lease.epoch} was released")
        if row.expires_at <= now:
            raise Deposed(f"lease epoch {lease.epoch} expired {now - row.expires_at:.1f} s ago (database clock)")
        row.renewed_at = now
        row.expires_at = now + row.duration_s
        if pass_ms is not None:
            row.pass_ms = pass_ms
        s.add(row)
        s.flush()
        return _lease(row)


def release(ledger: Ledger, lease: Lease) -> bool:
    """Give the lease up now (a clean stop), so a standby need not wait for it to expire.
    Returns False (and changes nothing) if ``lease`` is no longer the current one."""
    with ledger.write() as s:
        now = _now(s, ledger)
        row = s.get(LeaseRow, 1)
        if row is None or row.epoch != lease.epoch or row.holder != lease.holder or row.released:
            return False
        row.released = True
        if now < row.expires_at:
            row.renewed_at = now  # the release is its last heartbeat
        row.expires_at = min(row.expires_at, now)
        s.add(row)
        return True


def record_gpus(ledger: Ledger, lease: Lease, ray_gpus: int | None, declared_gpus: int) -> None:
    """Store what the holder found at start: GPUs in Ray vs declared by the cluster config
    (fenced: a deposed holder cannot)."""
    with ledger.write(epoch=lease.epoch) as s:
        row = s.get(LeaseRow, 1)
        assert row is not None
        row.ray_gpus, row.declared_gpus = ray_gpus, declared_gpus
        s.add(row)


def wait_acquire(ledger: Ledger, stop_event: threading.Event, *, host: str | None = None,
                 pid: int | None = None, duration_s: float = LEASE_DURATION_S,
                 retry_s: float = RETRY_EVERY_S,
                 on_held: Callable[[LeaseHeld], None] | None = None) -> Lease | None:
    """The standby: try to acquire every ``retry_s`` until it works (the lease) or
    ``stop_event`` is set (None). ``on_held`` is called once per holder seen. A database
    that is briefly unreachable is retried; other errors propagate."""
    seen: tuple[str, int, int] | None = None
    while not stop_event.is_set():
        try:
            return acquire(ledger, host=host, pid=pid, duration_s=duration_s)
        except LeaseHeld as held:
            key = (held.host, held.pid, held.epoch)
            if key != seen and on_held is not None:
                on_held(held)
            seen = key
        except OperationalError as e:
            log.warning("standby: ledger unreachable (%s); retrying", str(e).splitlines()[0])
        stop_event.wait(retry_s)
    return None


@dataclass(frozen=True)
class DaemonState:
    """Who serves the ledger, as the database's clock sees it now."""

    alive: bool
    db_now: float
    holder: str | None = None
    host: str | None = None
    pid: int | None = None
    epoch: int | None = None
    since: float | None = None
    renewed_at: float | None = None
    expires_at: float | None = None
    released: bool = False
    # When no daemon is alive: its last heartbeat (or release); None if none ever ran.
    down_since: float | None = None
    ray_gpus: int | None = None
    declared_gpus: int | None = None
    pass_ms: float | None = None  # the holder's last reconcile pass
    pool_gpus: dict[str, int] | None = None  # GPUs Ray has on each pool's nodes (the holder's last view)

    @property
    def gpu_shortfall(self) -> int:
        if self.ray_gpus is None or self.declared_gpus is None:
            return 0
        return max(0, self.declared_gpus - self.ray_gpus)

    def down(self, tail: str = "windows are not being served") -> str | None:
        """None while a daemon is alive; else "no daemon since HH:MM: <tail>" (or "no daemon
        has ever served this ledger: <tail>")."""
        if self.alive:
            return None
        if self.down_since is None:
            return f"no daemon has ever served this ledger: {tail}"
        return f"no daemon since {_hm(self.down_since)}: {tail}"

    def line(self) -> str:
        """One line for people: the holder, or since when no daemon has served the ledger."""
        if not self.alive:
            return self.down() or ""
        out = (f"daemon: pid {self.pid} on {self.host} since {_hm(self.since)} (epoch {self.epoch}), "
               f"heartbeat {max(0.0, self.db_now - (self.renewed_at or 0)):.0f} s ago")
        if self.gpu_shortfall:
            out += f"; Ray has {self.ray_gpus} GPUs of the {self.declared_gpus} the cluster config declares"
        return out

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["gpu_shortfall"] = self.gpu_shortfall
        out["message"] = self.line()
        return out


def state(ledger: Ledger) -> DaemonState:
    """The daemon's state now (database clock). Reads only."""
    with ledger.read() as s:
        now = _now(s, ledger)
        row = s.get(LeaseRow, 1)
    if row is None:
        return DaemonState(alive=False, db_now=now)
    alive = not row.released and row.expires_at > now
    return DaemonState(
        alive=alive, db_now=now, holder=row.holder, host=row.host, pid=row.pid, epoch=row.epoch,
        since=row.since, renewed_at=row.renewed_at, expires_at=row.expires_at, released=row.released,
        down_since=None if alive else row.renewed_at, ray_gpus=row.ray_gpus, declared_gpus=row.declared_gpus,
        pass_ms=row.pass_ms, pool_gpus=pool_census(row),
    )


def pool_census(row: LeaseRow | None) -> dict[str, int] | None:
    """The GPUs Ray has on each pool's nodes, as the daemon last recorded them (None: never)."""
    if row is None or not row.pool_gpus:
        return None
    return {str(k): int(v) for k, v in json.loads(row.pool_gpus).items()}


def pool_without_nodes(s: Session, pool: Pool) -> str | None:
    """Why ``pool`` cannot be placed, from the daemon's last view of Ray: on a cluster whose
    pools have nodes of their own (labels or resources), one with none would have its grants
    land nowhere; None if it has nodes, or no pool has (one machine), or no daemon has looked."""
    census = pool_census(s.get(LeaseRow, 1))
    if not census or not any(census.values()) or census.get(pool.name, 1) > 0:
        return None
    from cellsched.executor.pools import pool_bundle_resources, pool_label_selector

    how = (f"resource {next(iter(pool_bundle_resources(pool)))}" if pool_bundle_resources(pool) else
           "label " + ", ".join(f"{k}={v}" for k, v in pool_label_selector(pool).items()))
    return (f"pool {pool.name}: no Ray node has its {how} (the daemon's last view; `cellsched daemon` "
            "shows it): fix the node labels or the pool's node_label/node_resource in the cluster config")
