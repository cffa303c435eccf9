"""Peer credentials through a real uvicorn: the Unix socket's requests carry the connecting
process's uid, gid and pid (``scope["cellsched.peer"]``); TCP requests carry nothing, and no
header can put it there. Also: the uvicorn internals the protocol class leans on are still
where it expects them (uvicorn is pinned; an upgrade that moves them fails here first)."""

from __future__ import annotations

import http.client
import inspect
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from server_harness import in_child, serving
from uvicorn.protocols.http.h11_impl import H11Protocol

from cellsched.server.auth import PEER_KEY
from cellsched.server.peercred import PeerCredH11Protocol, peer_of, protocol_class

NOBODY = 65534


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers with the peer the scope carries (or null)."""
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = json.dumps({"peer": scope.get(PEER_KEY)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory other users may enter (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="cs-peer-"))
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("cellsched", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def get(conn: http.client.HTTPConnection, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"null")


def test_the_uvicorn_internals_it_hooks_are_still_there() -> None:
    # Pinned: pyproject says uvicorn==0.54.0; moving it means re-reading what follows.
    assert uvicorn.__version__ == "0.54.0"
    # One protocol object per connection; connection_made(transport) is where it learns
    # the socket; the request task runs ``self.app`` (which the class wraps per connection).
    params = list(inspect.signature(H11Protocol.connection_made).parameters)
    assert params == ["self", "transport"]
    assert "self.app = config.loaded_app" in inspect.getsource(H11Protocol.__init__)
    assert "app = self.app" in inspect.getsource(H11Protocol.handle_events)
    assert PeerCredH11Protocol.connection_made is not H11Protocol.connection_made
    # Config(http=<class>) takes the class as it is.
    config = uvicorn.Config(echo_app, http=PeerCredH11Protocol, ws="none", log_config=None, lifespan="off")
    config.load()
    assert config.http_protocol_class is PeerCredH11Protocol
    # Several servers in one loop: the server takes pre-bound sockets, and its signal
    # handling is one overridable context manager (Listeners replaces it).
    assert "sockets" in inspect.signature(uvicorn.Server.serve).parameters
    assert "self.capture_signals()" in inspect.getsource(uvicorn.Server.serve)
    try:
        import httptools  # noqa: F401
    except ImportError:
        assert protocol_class() is PeerCredH11Protocol
    else:  # httptools is a dependency: this branch
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        assert issubclass(protocol_class(), HttpToolsProtocol)
        assert "app = self.app" in inspect.getsource(HttpToolsProtocol)


def test_peer_of_reads_unix_sockets_only() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        assert peer_of(a) == {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.create_connection(srv.getsockname()) as c:
        assert peer_of(c) is None
    assert peer_of(None) is None


def test_unix_requests_carry_the_peer_and_tcp_requests_do_not(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with serving(echo_app, f"unix:{path}", "http://127.0.0.1:0") as running:
        assert oct(path.stat().st_mode & 0o777) == oct(0o666)
        # TCP parses with the parser the socket's class subclasses (httptools' C one, installed).
        unix_cls, tcp_cls = (s.config.http_protocol_class for s in running.servers)
        assert unix_cls is protocol_class() and issubclass(unix_cls, tcp_cls) and tcp_cls.__module__.startswith("uvicorn.")
        conn = UnixHTTP(str(path))
        # Two requests on one kept-alive connection: both carry it.
        for _ in range(2):
            status, body = get(conn)
            assert status == 200
            assert body["peer"] == {"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid()}
        conn.close()
        port = int(running.addresses[1].rsplit(":", 1)[1])
        tcp = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        status, body = get(tcp, headers={"cellsched.peer": '{"uid": 0}', "x-cellsched-peer": "0"})
        assert (status, body) == (200, {"peer": None})
        tcp.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_a_client_of_another_uid_is_seen_as_that_uid(sock_dir: Path) -> None:
    path = sock_dir / "s.sock"
    with serving(echo_app, f"unix:{path}"):
        def fetch() -> Any:
            os.environ.update(USER="alice", LOGNAME="alice", CELLSCHED_USER="alice")
            return get(UnixHTTP(str(path)), headers={"x-user": "alice"})

        out = in_child(NOBODY, fetch)
    status, body = out["result"]
    assert status == 200
    assert body["peer"] == {"uid": NOBODY, "gid": NOBODY, "pid": out["pid"]}
