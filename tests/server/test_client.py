"""The CLI as a thin client of ``cellsched server``: what it imports (typer and httpx, the
spec models only for specs: never sqlmodel, ray or the service layer), the quick way the
plain read commands take (the same output as typer's), a server it cannot reach (one line,
exit 2), the global options it ignores (a note), and the Unix socket, where the kernel
says who is calling whatever the environment claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from server_harness import Served

NOW_ISO = "2026-12-01T00:00:00Z"
HEAVY = ("sqlmodel", "sqlalchemy", "ray", "cellsched.service", "cellsched.ledger", "cellsched.core",
         "cellsched.server", "fastapi", "matplotlib")
PROBE = ("import sys, atexit\n"
         "atexit.register(lambda: print('MODULES', ' '.join(sorted({m.split('.')[0] if not m.startswith('cellsched') "
         "else '.'.join(m.split('.')[:2]) for m in sys.modules})), file=sys.stderr))\n"
         "from cellsched.cli import main\n"
         "main()\n")

SPEC = """
name = "{name}"
team = "interp"
owner = "alice"
problem = "Does the probe find it?"
{code}
[budget]
gpu_hours = 2
gpus = 1
[[jobs]]
name = "train"
run = ["python", "train.py"]
"""


def cellsched(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``cellsched ARGS`` in a process of its own; its output and the modules it loaded."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CELLSCHED_")}
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60,
                         env={**full, **env})
    lines = out.stderr.splitlines()
    modules = next((set(ln.split()[1:]) for ln in lines if ln.startswith("MODULES")), set())
    out.stderr = "\n".join(ln for ln in lines if not ln.startswith("MODULES")) + ("\n" if len(lines) > 1 else "")
    return out, modules


@pytest.fixture
def sqlite_only(env: Any) -> None:
    if not env.ledger.is_sqlite:
        pytest.skip("the client does not depend on the server's database")


def test_the_thin_client_imports_no_ledger_stack(served: Served, sqlite_only: None, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLSCHED_NOW", NOW_ISO)  # the server's clock (it runs in this process)
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "probe.py").write_text("print(1)\n")
    spec = tmp_path / "probe.toml"
    spec.write_text(SPEC.format(name="probe", code='[code]\ndir = "code"'))
    env = {**served.cli_env("alice"), "CELLSCHED_NOW": NOW_ISO}
    for args in (["submit", str(spec)], ["validate", str(spec)], ["verify", "probe", "--spec", str(spec)],
                 ["status"], ["status", "--json", "probe"], ["budget", "interp"], ["daemon"], ["audit", "--json"],
                 ["logs", "probe"], ["report", "--json"], ["cancel", "probe"]):
        out, modules = cellsched(env, *args)
        assert out.returncode == 0, (args, out.stderr)
        assert not modules & set(HEAVY), (args, modules & set(HEAVY))
        if args[0] in ("status", "budget", "daemon", "audit"):
            # The quick way: not even typer's parameter parsing (which loads pydantic).
            assert "pydantic" not in modules, args
    # The quick way (no typer parsing) and typer's print the same, exit codes included.
    for args in (["status"], ["status", "--json", "probe"], ["budget", "--json", "interp"], ["budget", "nobody"],
                 ["daemon"], ["audit"], ["status", "nothing-like-it"]):
        quick, _ = cellsched(env, *args)
        typer_way = served.cli(*args, user="alice", CELLSCHED_NOW=NOW_ISO)
        assert quick.returncode == typer_way.exit_code, args
        strip = (lambda t: t) if "--json" not in args else (
            lambda t: json.dumps([{k: v for k, v in (i.items() if isinstance(i, dict) else ())
                                   if k != "daemon"} for i in (json.loads(t) if t.startswith("[") else [json.loads(t)])]))
        assert strip(quick.stdout) == strip(typer_way.stdout), args
        assert quick.stderr == typer_way.stderr, args


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "unix:/nonexistent/cellsched.sock"])
@pytest.mark.parametrize("args", [["status"], ["status", "--json", "x"], ["cancel", "x"], ["report", "--json"]])
def test_a_server_that_cannot_be_reached_is_one_line_exit_2(url: str, args: list[str], tmp_path: Path) -> None:
    out, modules = cellsched({"CELLSCHED_SERVER": url, "XDG_CONFIG_HOME": str(tmp_path)}, *args)
    assert out.returncode == 2, out
    assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"cellsched: server {url}: cannot connect (")
    assert "sqlmodel" not in modules


def test_global_options_are_ignored_with_a_note(served: Served, sqlite_only: None, tmp_path: Path) -> None:
    r = served.cli("--db", f"sqlite:///{tmp_path / 'other.db'}", "--cluster", "nowhere.toml", "status")
    assert r.exit_code == 0
    assert r.stderr == f"cellsched: note: --cluster and --db ignored: commands go to the server {served.url}\n"
    assert not (tmp_path / "other.db").exists()
    r = served.cli("status", CELLSCHED_DB=f"sqlite:///{tmp_path / 'other.db'}")  # from the environment: silent
    assert r.exit_code == 0 and r.stderr == ""
    # CELLSCHED_SERVER=local: the local ledger, whatever the config file says.
    r = served.cli("--cluster", "nowhere.toml", "status", CELLSCHED_SERVER="local")
    assert r.exit_code == 2 and "nowhere.toml: no cluster config" in r.stderr


def test_on_the_unix_socket_the_kernel_says_who_calls(served: Served, sqlite_only: None, tmp_path: Path) -> None:
    import getpass

    spec = tmp_path / "mine.toml"
    spec.write_text(SPEC.format(name="mine", code=""))
    me = getpass.getuser()
    env = {"CELLSCHED_SERVER": served.unix, "XDG_CONFIG_HOME": str(tmp_path), "CELLSCHED_USER": "alice",
           "USER": "alice", "CELLSCHED_NOW": NOW_ISO}
    out, modules = cellsched(env, "status", "--json")
    assert (out.returncode, out.stdout) == (0, "[]\n")
    out, _ = cellsched(env, "submit", str(spec))
    assert out.returncode == 1
    assert out.stderr == f"cellsched: {me} is not a member of team interp (members: alice, bob)\n"
    out, _ = cellsched(env, "whoami", "--json")
    if out.returncode == 0:  # the auth engineer's command: who the server says we are
        assert json.loads(out.stdout)["user"] == me
