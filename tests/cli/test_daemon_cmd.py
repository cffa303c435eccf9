"""`cellsched daemon` and the daemon line of status/budget/report, on SQLite and PostgreSQL;
`serve` refusing to start (lease held, unknown schema, unreachable --address) with one line
and exit 2, before Ray is ever started."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cellsched.cli.app import app
from cellsched.ledger.db import Ledger
from cellsched.ledger.lease import acquire, record_gpus, release, state
from cellsched.ledger.tables import SCHEMA_VERSION, SchemaInfo

NOW = "2026-12-01T00:00:00Z"

SPEC = """
name = "{name}"
team = "interp"
owner = "alice"
problem = "Does the ablation change the loss?"
[budget]
gpu_hours = 16
gpus = 8
[[jobs]]
name = "train"
run = ["python", "train.py"]
gpus = 8
"""


@pytest.fixture
def ledger(ledger_url: str):  # type: ignore[no-untyped-def]
    led = Ledger(ledger_url)
    yield led
    led.dispose()


@pytest.fixture
def cli(cluster_file: Path, ledger_url: str):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def run(*args: str, now: str = NOW) -> Any:
        return runner.invoke(app, ["--cluster", str(cluster_file), "--db", ledger_url, *args],
                             env={"CELLSCHED_USER": "alice", "CELLSCHED_NOW": now})

    return run


def as_json(r: Any) -> Any:
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_daemon_never_then_alive_then_down(cli, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    r = cli("daemon")
    assert r.exit_code == 0 and r.stdout.strip() == "no daemon has ever served this ledger: windows are not being served"
    js = as_json(cli("daemon", "--json"))
    assert js["alive"] is False and js["down_since"] is None and js["epoch"] is None

    lease = acquire(ledger, host="head-7", pid=31337)
    record_gpus(ledger, lease, ray_gpus=8, declared_gpus=16)
    r = cli("daemon")
    assert r.exit_code == 0, r.output
    first = r.stdout.splitlines()[0]
    assert first.startswith("daemon: pid 31337 on head-7 since ") and "(epoch 1)" in first
    assert "Ray has 8 GPUs of the 16" in first
    assert "last heartbeat" in r.stdout and "lease expires" in r.stdout and "8 short" in r.stdout
    js = as_json(cli("daemon", "--json"))
    assert (js["alive"], js["host"], js["pid"], js["epoch"]) == (True, "head-7", 31337, 1)
    assert (js["ray_gpus"], js["declared_gpus"], js["gpu_shortfall"]) == (8, 16, 8)
    assert js["renewed_at"] <= js["db_now"] < js["expires_at"] and js["since_utc"].endswith("Z")

    release(ledger, lease)
    r = cli("daemon")
    assert r.exit_code == 0
    assert r.stdout.startswith("no daemon since ") and "windows are not being served" in r.stdout
    assert "last daemon: pid 31337 on head-7 (epoch 1), lease released" in r.stdout
    js = as_json(cli("daemon", "--json"))
    assert js["alive"] is False and js["down_since"] == pytest.approx(js["renewed_at"])


def test_status_budget_report_show_a_missing_daemon(cli, ledger: Ledger, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "a.toml"
    spec.write_text(SPEC.format(name="a"))
    assert cli("submit", str(spec)).exit_code == 0
    later = "2026-12-01T00:30:00Z"  # the window has started; nobody serves it
    r = cli("status", now=later)
    assert r.exit_code == 0, r.output
    assert "no daemon has ever served this ledger: this window is not being served" in r.stdout
    assert r.stdout.rstrip().endswith("no daemon has ever served this ledger: windows are not being served")
    items = as_json(cli("status", "--json", now=later))
    assert items[0]["note"] == "no daemon has ever served this ledger: this window is not being served"
    assert items[0]["daemon"]["alive"] is False
    # before its start the window is not burning: no note
    assert as_json(cli("status", "--json", now="2026-11-30T23:00:00Z"))[0]["note"] == ""
    r = cli("budget", "interp", now=later)
    assert r.exit_code == 0 and "windows are not being served" in r.stdout
    rep = as_json(cli("report", "--json", "--since", "2026-11-30", "--until", "2026-12-02", now=later))
    assert rep["daemon"]["alive"] is False

    lease = acquire(ledger, host="h", pid=1)
    items = as_json(cli("status", "--json", now=later))
    assert items[0]["note"] == "" and items[0]["daemon"]["alive"] is True
    for args in (("status",), ("budget", "interp")):
        assert "not being served" not in cli(*args, now=later).stdout
    release(ledger, lease)
    items = as_json(cli("status", "--json", now=later))
    assert items[0]["note"].startswith("no daemon since ") and items[0]["note"].endswith("this window is not being served")


def test_serve_refuses_while_another_daemon_holds_the_lease(cli, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    acquire(ledger, host="head-1", pid=4242)
    r = cli("serve", "--gpus", "0")
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cellsched: another daemon serves this ledger: pid 4242 on head-1, since ")
    assert state(ledger).pid == 4242  # untouched


def test_serve_unreachable_address_exits_2_and_releases(cli, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = cli("serve", "--address", f"127.0.0.1:{port}")
    assert r.exit_code == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("cellsched:")]
    assert err == [f"cellsched: --address 127.0.0.1:{port}: no Ray cluster answers there (Connection refused)"]
    assert "Traceback" not in r.output
    st = state(ledger)
    assert not st.alive and st.released  # the lease it took is given back


def test_serve_on_a_newer_schema_exits_2(cli, ledger: Ledger) -> None:  # type: ignore[no-untyped-def]
    with ledger.write() as s:
        info = s.get(SchemaInfo, 1)
        info.version = 999
        s.add(info)
    r = cli("serve", "--gpus", "0")
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        f"cellsched: ledger schema version 999 is newer than this cellsched understands ({SCHEMA_VERSION}); "
        "upgrade cellsched"]


def test_serve_unresponsive_address_exits_2_in_bounded_time(cluster_file: Path, ledger: Ledger,
                                                            ledger_url: str) -> None:
    """A port that accepts connections but is no Ray: ray.init would retry for minutes."""
    import os
    import subprocess
    import sys
    import time

    cli = str(Path(sys.executable).parent / "cellsched")
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        t = time.monotonic()
        r = subprocess.run([cli, "--cluster", str(cluster_file), "serve", "--address", f"127.0.0.1:{port}",
                            "--connect-timeout", "2"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "CELLSCHED_DB": ledger_url, "RAY_AUTH_MODE": "disabled"})
        took = time.monotonic() - t
    assert r.returncode == 2, r.stderr
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("cellsched:")]
    assert ours == [f"cellsched: --address 127.0.0.1:{port}: Ray did not answer within 2 s"], r.stderr
    assert "Traceback" not in r.stderr and took < 30
    st = state(ledger)
    assert not st.alive and st.released
