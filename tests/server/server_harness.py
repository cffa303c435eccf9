"""A real ``cellsched server`` for tests: the production ``Listeners`` (uvicorn) serving an
``Env``'s ledger on a TCP port and on a Unix socket, in a thread of the test process.

:func:`start_server` (a context manager) gives a :class:`Served` with ``url``
(``http://127.0.0.1:PORT``), ``unix`` (``unix:/path``), ``env`` and ``state`` (the
server's), ``token(user)``, ``http(user)`` (an httpx client with that user's token) and
``cli(*args, user=...)`` (``cellsched`` through typer's CliRunner, as a thin client of this
server with the user's token in its own config file). tests/server/conftest.py makes a
fixture of it (``served``). Import from here (``from server_harness import ...``), not from
``conftest``: that name is every test directory's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOW = 1796083200  # 2026-12-01 00:00 UTC


@dataclass
class Served:
    env: Any
    state: Any
    url: str
    unix: str
    home: Path  # per-user config directories for the CLI live here
    tokens: dict[str, str] = field(default_factory=dict)

    def token(self, user: str) -> str:
        """A valid token for ``user`` (issued once per user, cached)."""
        if user not in self.tokens:
            from cellsched.server.tokens import issue

            self.tokens[user] = issue(self.env, user, "root-admin", NOW - 10)[1]
        return self.tokens[user]

    def http(self, user: str | None = "alice", timeout: float = 60.0):  # type: ignore[no-untyped-def]
        """An httpx client on the TCP listener, with ``user``'s token (None: no token)."""
        import httpx

        headers = {} if user is None else {"authorization": f"Bearer {self.token(user)}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def config_home(self, user: str) -> Path:
        """An XDG_CONFIG_HOME whose client.toml names this server and ``user``'s token."""
        home = self.home / user
        cfg = home / "cellsched" / "client.toml"
        if not cfg.exists():
            cfg.parent.mkdir(parents=True, exist_ok=True)
            cfg.write_text(f'server = "{self.url}"\ntoken = "{self.token(user)}"\n')
            cfg.chmod(0o600)
        return home

    def cli_env(self, user: str = "alice", **extra: str) -> dict[str, str]:
        """Environment for a ``cellsched`` process talking to this server as ``user``."""
        return {"XDG_CONFIG_HOME": str(self.config_home(user)), "CELLSCHED_SERVER": self.url, **extra}

    def cli(self, *args: str, user: str = "alice", **extra: str) -> Any:
        """``cellsched ARGS`` through this server (typer's CliRunner, in this process)."""
        from typer.testing import CliRunner

        from cellsched.cli.app import app

        return CliRunner().invoke(app, list(args), env=self.cli_env(user, **extra))


@contextlib.contextmanager
def start_server(env: Any, **state_kwargs: Any) -> Iterator[Served]:
    """``cellsched server`` for ``env`` on 127.0.0.1 (a free port) and a Unix socket, in a
    thread of this process; stopped and cleaned up on exit."""
    from cellsched.server.app import create_app
    from cellsched.server.listen import Listeners, parse_listen
    from cellsched.server.state import ServerState

    env.ledger.ensure_schema()
    state = ServerState(env, **state_kwargs)
    app = create_app(state)
    d = Path(tempfile.mkdtemp(prefix="cs-srv-"))  # short: a Unix socket path has ~100 bytes
    os.chmod(d, 0o711)
    running = Listeners(app, [parse_listen("http://127.0.0.1:0"), parse_listen(f"unix:{d / 's.sock'}")],
                        access_log=False)
    # listen.bind_tcp sets TCP_NODELAY on the listening socket (accepted ones inherit it):
    # without it every kept-alive response after the first waits ~40 ms (Nagle).
    assert running.sockets[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    t = threading.Thread(target=lambda: asyncio.run(running.serve()), daemon=True)
    t.start()
    deadline = time.monotonic() + 15
    while not running.started:
        assert time.monotonic() < deadline and t.is_alive(), "the server did not start"
        time.sleep(0.01)
    tcp, unix = running.addresses
    try:
        yield Served(env, state, tcp, unix, d / "home")
    finally:
        running.stop()
        t.join(20)
        shutil.rmtree(d, ignore_errors=True)


def example_cluster() -> str:
    """tests/conftest.py's EXAMPLE_CLUSTER (that module is not importable by name here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_cellsched_tests_root", Path(__file__).parents[1] / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.EXAMPLE_CLUSTER)




@contextlib.contextmanager
def serving(app: Any, *specs: str, **kw: Any) -> Iterator[Any]:
    """The production listeners for ``specs`` (``--listen`` strings) over ``app``, served
    from a thread until the block ends; then stopped cleanly."""
    from cellsched.server.listen import Listeners, parse_listen

    running = Listeners(app, [parse_listen(s) for s in specs], access_log=False, **kw)
    t = threading.Thread(target=lambda: asyncio.run(running.serve()), daemon=True)
    t.start()
    deadline = time.monotonic() + 15
    while not running.started:
        assert time.monotonic() < deadline and t.is_alive(), "server did not start"
        time.sleep(0.01)
    try:
        yield running
    finally:
        running.stop()
        t.join(15)
        assert not t.is_alive()


def in_child(uid: int, fn: Any, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``fn`` in a forked child that has dropped to ``uid`` (and its gid), with ``env``
    added to its environment; ``{"result": fn's JSON result, "pid": the child's pid}``
    (the test process must be root)."""
    import json

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.environ.update(env or {})
            out = {"result": fn(), "pid": os.getpid()}
        except BaseException as e:  # noqa: BLE001
            out = {"child_error": repr(e)}
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    out = json.loads(b"".join(chunks))
    assert "child_error" not in out, out
    return out
