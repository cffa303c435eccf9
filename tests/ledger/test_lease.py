"""The daemon lease on SQLite and PostgreSQL: acquire, renew, release; a second holder is
refused by name; expiry by the database's clock; the epoch goes up on every acquisition; a
write fenced with an old epoch raises Deposed and writes nothing; racing processes: one wins."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Iterator

import pytest
from sqlmodel import select

from cellsched.ledger import events
from cellsched.ledger.db import Ledger
from cellsched.ledger.lease import (
    LEASE_DURATION_S,
    RENEW_EVERY_S,
    RETRY_EVERY_S,
    Deposed,
    LeaseHeld,
    acquire,
    release,
    renew,
    state,
    wait_acquire,
)
from cellsched.ledger.tables import EventRow


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    led = Ledger(ledger_url)
    yield led
    led.dispose()


def test_timings_are_ordered() -> None:
    assert LEASE_DURATION_S > RENEW_EVERY_S > RETRY_EVERY_S > 0
    assert LEASE_DURATION_S + RETRY_EVERY_S <= 15  # takeover target


def test_acquire_renew_release(ledger: Ledger) -> None:
    st = state(ledger)
    assert not st.alive and st.down_since is None and st.epoch is None
    assert st.line() == "no daemon has ever served this ledger: windows are not being served"
    a = acquire(ledger, host="h1", pid=101)
    assert (a.epoch, a.host, a.pid, a.prev_renewed_at) == (1, "h1", 101, None)
    assert a.expires_at == pytest.approx(a.since + LEASE_DURATION_S)
    st = state(ledger)
    assert st.alive and (st.holder, st.host, st.pid, st.epoch) == (a.holder, "h1", 101, 1)
    assert st.since <= st.db_now < st.expires_at
    time.sleep(0.05)
    b = renew(ledger, a)
    assert b.epoch == a.epoch and b.renewed_at > a.renewed_at and b.expires_at > a.expires_at
    assert release(ledger, b)
    st = state(ledger)
    assert not st.alive and st.released and st.down_since == pytest.approx(st.renewed_at)
    assert st.line().startswith("no daemon since ")
    js = st.to_json()
    assert js["alive"] is False and js["message"] == st.line() and js["down_since"] is not None
    with pytest.raises(Deposed):
        renew(ledger, b)
    assert not release(ledger, b)  # not the current lease any more: a no-op
    c = acquire(ledger, host="h2", pid=102)  # released: free at once
    assert c.epoch == 2 and c.prev_renewed_at == pytest.approx(st.renewed_at)


def test_second_acquire_names_the_holder(ledger: Ledger) -> None:
    acquire(ledger, host="head-1", pid=4242)
    with pytest.raises(LeaseHeld) as e:
        acquire(ledger, host="head-2", pid=7)
    h = e.value
    assert (h.host, h.pid) == ("head-1", 4242) and 0 < h.expires_in <= LEASE_DURATION_S
    msg = str(h)
    assert "\n" not in msg and "head-1" in msg and "4242" in msg and "since" in msg
    assert h.exit_code == 2


def test_expiry_by_database_clock_and_epochs(ledger: Ledger) -> None:
    a = acquire(ledger, host="h", pid=1, duration_s=1)
    with ledger.write(epoch=a.epoch) as s:  # the holder's fenced write goes through
        events.append(s, 1, "fenced-ok", "x", "daemon", {})
    time.sleep(1.2)
    assert not state(ledger).alive
    with pytest.raises(Deposed, match="expired"):
        renew(ledger, a)
    with pytest.raises(Deposed, match="expired"):
        with ledger.write(epoch=a.epoch) as s:
            events.append(s, 2, "expired-write", "x", "daemon", {})
    b = acquire(ledger, host="h", pid=2, duration_s=1)
    assert b.epoch == a.epoch + 1
    assert b.prev_renewed_at == pytest.approx(a.renewed_at)
    c_epochs = []
    for _ in range(3):
        release(ledger, b)
        b = acquire(ledger, host="h", pid=3)
        c_epochs.append(b.epoch)
    assert c_epochs == [3, 4, 5]
    with ledger.read() as s:
        assert [e.kind for e in s.exec(select(EventRow))] == ["fenced-ok"]


def test_old_epoch_write_is_refused_and_writes_nothing(ledger: Ledger) -> None:
    old = acquire(ledger, host="paused", pid=1, duration_s=1)
    time.sleep(1.1)
    new = acquire(ledger, host="standby", pid=2)  # took over while the old one was paused
    with pytest.raises(Deposed, match="taken over"):
        with ledger.write(epoch=old.epoch) as s:
            events.append(s, 1, "stale", "x", "daemon", {})
    with pytest.raises(Deposed):
        renew(ledger, old)
    with ledger.write(epoch=new.epoch) as s:
        events.append(s, 2, "fresh", "x", "daemon", {})
    with ledger.read() as s:
        assert [e.kind for e in s.exec(select(EventRow))] == ["fresh"]
    release(ledger, new)
    with pytest.raises(Deposed, match="released"):
        with ledger.write(epoch=new.epoch) as s:
            events.append(s, 3, "after-release", "x", "daemon", {})


def test_write_with_epoch_on_a_ledger_without_lease(ledger: Ledger) -> None:
    with pytest.raises(Deposed, match="no daemon lease"):
        with ledger.write(epoch=1):
            pass


def test_a_gone_holder_on_this_host_is_taken_over_at_once(ledger: Ledger) -> None:
    import subprocess

    from cellsched.ledger.lease import this_host

    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: the pid is free
    a = acquire(ledger, host=this_host(), pid=dead.pid)
    b = acquire(ledger)  # this host, this process: no waiting for a's lease
    assert b.epoch == a.epoch + 1 and b.prev_renewed_at == pytest.approx(a.renewed_at)
    zombie = subprocess.Popen(["true"])  # not reaped yet: a zombie is gone too
    time.sleep(0.3)
    release(ledger, b)
    c = acquire(ledger, host=this_host(), pid=zombie.pid)
    e = acquire(ledger)
    assert e.epoch == c.epoch + 1
    zombie.wait()
    release(ledger, e)
    # alive on this host (this very process), or gone on another host: held
    d = acquire(ledger, host=this_host(), pid=os.getppid(), duration_s=5)
    with pytest.raises(LeaseHeld):
        acquire(ledger)
    release(ledger, d)
    acquire(ledger, host="elsewhere", pid=dead.pid)
    with pytest.raises(LeaseHeld):
        acquire(ledger)


def test_wait_acquire_takes_over_after_expiry(ledger: Ledger) -> None:
    import threading

    a = acquire(ledger, host="leader", pid=1, duration_s=1)
    seen: list[LeaseHeld] = []
    t = time.monotonic()
    b = wait_acquire(ledger, threading.Event(), host="standby", pid=2, duration_s=5, retry_s=0.1,
                     on_held=seen.append)
    assert b is not None and b.epoch == a.epoch + 1 and b.host == "standby"
    assert 0.5 < time.monotonic() - t < 3
    assert len(seen) == 1 and seen[0].host == "leader"
    stop = threading.Event()
    stop.set()
    assert wait_acquire(ledger, stop, host="third", pid=3) is None


def _race(url: str, go, out, done) -> None:  # type: ignore[no-untyped-def]
    led = Ledger(url)
    led.ensure_schema()
    go.wait()
    try:
        lease = acquire(led, host="racer")
        out.put(("won", lease.epoch))
    except LeaseHeld as e:
        out.put(("held", e.pid))
    finally:
        led.dispose()
    # Stay alive until every racer has answered: a holder on the same host whose process is
    # gone is rightly taken over at once, and a slow racer would then win too.
    done.wait(60)


def test_racing_processes_one_wins(ledger_url: str) -> None:
    Ledger(ledger_url).ensure_schema()
    ctx = mp.get_context("spawn")
    go, out, done = ctx.Event(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_race, args=(ledger_url, go, out, done)) for _ in range(4)]
    for p in procs:
        p.start()
    time.sleep(1.5)  # let every racer open its ledger
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    done.set()
    for p in procs:
        p.join(30)
    won = [r for r in results if r[0] == "won"]
    assert len(won) == 1 and won[0][1] == 1, results
    # every loser names the same holder: one of the racers
    named = {r[1] for r in results if r[0] == "held"}
    assert len(named) == 1 and named <= {p.pid for p in procs}


# -- the daemon loop around the lease (in-memory executor, no Ray) ---------------------------


def _serve_in_thread(env, stop):  # type: ignore[no-untyped-def]
    import threading

    from cellsched.executor import MemoryExecutor
    from cellsched.runtime.daemon import serve
    from cellsched.runtime.reconciler import Settings

    out: dict[str, int] = {}
    t = threading.Thread(target=lambda: out.setdefault("code", serve(
        env, MemoryExecutor(), interval=0.05, stop=stop,
        settings=Settings(logs_root=None, notify_in_background=False))), daemon=True)
    t.start()
    return t, out


def _until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_serve_heartbeats_then_releases_on_stop(env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import os
    import threading

    monkeypatch.setenv("CELLSCHED_LEASE_S", "1")  # renew every 0.2 s
    stop = threading.Event()
    t, out = _serve_in_thread(env, stop)
    _until(lambda: state(env.ledger).alive)
    first = state(env.ledger)
    assert first.pid == os.getpid() and first.epoch == 1
    time.sleep(1.5)  # longer than the lease: alive only because it is renewed
    later = state(env.ledger)
    assert later.alive and later.renewed_at > first.renewed_at and later.epoch == 1
    stop.set()
    t.join(10)
    assert out["code"] == 0
    st = state(env.ledger)
    assert not st.alive and st.released


def test_serve_deposed_stops_at_once_with_exit_1(env, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import threading

    from cellsched.ledger.tables import LeaseRow

    monkeypatch.setenv("CELLSCHED_LEASE_S", "1")
    stop = threading.Event()
    t, out = _serve_in_thread(env, stop)
    _until(lambda: state(env.ledger).alive)
    with env.ledger.write() as s:  # as if the daemon had been paused past its lease
        row = s.get(LeaseRow, 1)
        row.expires_at = row.renewed_at - 1
        s.add(row)
    thief = acquire(env.ledger, host="standby", pid=2)
    t.join(10)
    assert out["code"] == 1
    st = state(env.ledger)
    assert st.alive and st.holder == thief.holder  # the deposed daemon released nothing
