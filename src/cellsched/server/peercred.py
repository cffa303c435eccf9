"""Who is on the other end of a Unix socket, as the kernel says (``SO_PEERCRED``).

uvicorn does not hand the socket to the application, so this is a small subclass of its
HTTP protocol (passed as ``Config(http=...)``; one protocol object per connection): when the
connection is made it reads the peer's pid, uid and gid from the socket, and wraps the
connection's application so that every request on it carries
``scope["cellsched.peer"] = {"uid", "gid", "pid"}``. On any other kind of socket (TCP, TLS)
nothing is set, and nothing a client sends can set it: scope keys do not come from headers.

The credentials are the connecting process's at ``connect()`` time; a process that hands
its connected socket to another (``SCM_RIGHTS``) lends it its own identity, as with any
Unix-socket service.

This leans on uvicorn's internals (``connection_made`` and the per-connection ``self.app``
that ``handle_events`` runs), which is why uvicorn is pinned in ``pyproject.toml`` and
``tests/server/test_peercred.py`` checks those hooks: an upgrade that moves them fails there.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from cellsched.server.auth import PEER_KEY

_UCRED = struct.Struct("3i")  # struct ucred: pid_t pid; uid_t uid; gid_t gid (Linux)


def peer_of(sock: Any) -> dict[str, int] | None:
    """``{"uid", "gid", "pid"}`` of a connected Unix socket's peer; None for any other
    socket, or where the platform has no ``SO_PEERCRED``."""
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    if uid < 0:  # the kernel's "no credentials" (-1): never treat it as a user
        return None
    return {"uid": uid, "gid": gid, "pid": pid}


class WithPeer:
    """The application for one connection: every HTTP request's scope gets the peer."""

    def __init__(self, app: Any, peer: dict[str, int]) -> None:
        self.app, self.peer = app, peer

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, PEER_KEY: dict(self.peer)}
        await self.app(scope, receive, send)


class _PeerCredMixin:
    """Read the peer's credentials when the connection is made; a Unix socket whose peer
    cannot be read is closed at once (never served without an identity)."""

    app: Any
    peer: dict[str, int] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[misc]
        sock = transport.get_extra_info("socket")
        if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
            return
        try:
            self.peer = peer_of(sock)
        except OSError:
            self.peer = None
        if self.peer is None:
            transport.close()
            return
        self.app = WithPeer(self.app, self.peer)


class PeerCredH11Protocol(_PeerCredMixin, H11Protocol):
    """uvicorn's h11 protocol with the peer's credentials in every request's scope."""


@functools.cache
def protocol_class() -> type[asyncio.Protocol]:
    """The protocol class for the Unix socket listener: httptools' if uvicorn would pick it
    (installed), else h11's, each with the peer credentials."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return PeerCredH11Protocol

    class PeerCredHttpToolsProtocol(_PeerCredMixin, HttpToolsProtocol):  # type: ignore[misc]
        """uvicorn's httptools protocol with the peer's credentials in every request's scope."""

    return PeerCredHttpToolsProtocol
