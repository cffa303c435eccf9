"""The server's listeners, its startup checks and its logs.

``--listen`` takes ``unix:/run/cellsched/cellsched.sock`` (identity from the kernel),
``https://0.0.0.0:8443`` (tokens over TLS: ``--tls-cert``/``--tls-key``) or
``http://127.0.0.1:8080`` (plain HTTP: loopback only, unless ``insecure``, since a token
sent in clear over a network is a token given away). Every listener is its own
``uvicorn.Server`` over the one application, all in one process and one event loop.

Sockets are bound here, before anything is served, so a port in use or a socket path that
another server holds is one line and exit 2, not a traceback from inside uvicorn. The Unix
socket is mode 0666 (any local user may connect: who they are comes from the kernel, not
from the file's mode); a stale socket file is removed only if nothing answers on it.

The server refuses to start if the SQLite ledger, the signing key or the TLS key is open to
group or others, or if the cluster config (which names the admins) is writable by them.

Logs never hold a token: uvicorn's access log has the method and path only (no headers), and
every log line passes :class:`RedactSecrets` (anything shaped like a token, or a bearer
credential, in a path, a message or a traceback is replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import logging.config
import os
import re
import signal
import socket
import ssl
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn

from cellsched.errors import BadInput
from cellsched.server.auth import TOKEN_PREFIX

log = logging.getLogger("cellsched.server")

DEFAULT_PORTS = {"https": 8443, "http": 8080}
GRACEFUL_SHUTDOWN_S = 10  # open requests get this long after SIGTERM, then are cancelled
SOCKET_MODE = 0o666


@dataclass(frozen=True)
class Listener:
    """One ``--listen`` address: ``scheme`` is "unix", "http" or "https"; ``path`` for a
    Unix socket, ``host``/``port`` for TCP (port 0: any free port, for tests)."""

    scheme: str
    path: Path | None = None
    host: str = ""
    port: int = 0

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_listen(text: str, insecure: bool = False) -> Listener:
    """A ``--listen`` value, or BadInput naming what is wrong with it."""
    t = text.strip()
    if t.startswith("unix:"):
        raw = t.removeprefix("unix:").removeprefix("//")
        if not raw:
            raise BadInput(f"--listen {text}: a Unix socket needs a path (unix:/run/cellsched/cellsched.sock)")
        return Listener("unix", path=Path(raw).absolute())
    parts = urlsplit(t)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadInput(f"--listen {text}: use unix:/path, https://host:port or http://127.0.0.1:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise BadInput(f"--listen {text}: only a scheme, a host and a port")
    try:
        port = parts.port
    except ValueError:
        raise BadInput(f"--listen {text}: the port is not a number from 0 to 65535") from None
    host = parts.hostname
    if parts.scheme == "http" and not is_loopback(host) and not insecure:
        raise BadInput(f"--listen {text}: plain http only on a loopback address (tokens would cross the network "
                       "in clear); use https with --tls-cert/--tls-key, or --insecure behind a TLS proxy")
    return Listener(parts.scheme, host=host, port=DEFAULT_PORTS[parts.scheme] if port is None else port)


# -- startup checks ---------------------------------------------------------------------


def _private(path: Path, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise BadInput(f"{path}: the {what} is open to group or others (mode {mode:03o}); "
                       f"chmod 600 it (the server's account alone reads it)")


def sqlite_file(url: str) -> Path | None:
    """The SQLite ledger's file, or None (PostgreSQL, or in memory)."""
    if not url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    db = make_url(url).database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def check_files(ledger_url: str, cluster_path: Path, tls_key: Path | None = None) -> None:
    """Refuse to start (BadInput) if a secret is open to others: the SQLite ledger (and its
    WAL files), the signing key, the TLS key; or if the cluster config, which names the
    admins, is writable by others. A SQLite ledger that does not exist yet is created empty,
    mode 0600."""
    from cellsched.receipt import key_paths

    db = sqlite_file(ledger_url)
    if db is not None:
        if not db.parent.is_dir():
            raise BadInput(f"{db.parent}: no such directory for the ledger")
        if not db.exists():
            os.close(os.open(db, os.O_WRONLY | os.O_CREAT, 0o600))
        for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            if p.exists():
                _private(p, "ledger")
    key = key_paths(cluster_path)[0]
    if not key.exists():
        raise BadInput(f"{key}: no signing key (run `cellsched init` as the server's account)")
    _private(key, "signing key")
    check_cluster_mode(cluster_path)
    if tls_key is not None:
        if not tls_key.exists():
            raise BadInput(f"--tls-key {tls_key}: no such file")
        _private(tls_key, "TLS key")


def check_cluster_mode(cluster_path: Path) -> None:
    """BadInput if the cluster config, which names the admins, is writable by group or others."""
    mode = stat.S_IMODE(cluster_path.stat().st_mode)
    if mode & 0o022:
        raise BadInput(f"{cluster_path}: the cluster config is writable by group or others (mode {mode:03o}), "
                       "and it names the admins; chmod 644 it")


# -- logs ---------------------------------------------------------------------------------

# A token (``cst_...``), or anything sent as a bearer credential (12+ characters of the
# token alphabets, so that prose such as "bearer tokens" stays readable).
_SECRET = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_\-]+|(?i:(bearer)(\s+|%20|\+))[A-Za-z0-9._~+/=\-]{12,}")


def redact(text: str) -> str:
    """``text`` with anything shaped like a token, or a bearer credential, replaced."""
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}[redacted]" if m.group(1) else TOKEN_PREFIX + "[redacted]",
                       text)


class RedactSecrets(logging.Filter):
    """A handler filter: the message, its arguments and any traceback, redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def log_config(level: str = "info") -> dict[str, Any]:
    """Logging for the server: everything on stderr (journald keeps it), redacted."""
    lvl = level.upper()
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "filters": ["redact"]}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": "cellsched.server.listen.RedactSecrets"}},
        "formatters": {
            "default": {"()": "uvicorn.logging.DefaultFormatter", "use_colors": False,
                        "fmt": "%(asctime)s %(levelprefix)s %(name)s: %(message)s"},
            "access": {"()": "uvicorn.logging.AccessFormatter", "use_colors": False,
                       "fmt": '%(asctime)s %(levelprefix)s %(client_addr)s - "%(request_line)s" %(status_code)s'},
        },
        "handlers": {"default": {**handler, "formatter": "default"}, "access": {**handler, "formatter": "access"}},
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {"handlers": ["access"], "level": lvl, "propagate": False},
            "cellsched": {"handlers": ["default"], "level": lvl, "propagate": False},
        },
    }


# -- sockets ------------------------------------------------------------------------------


def bind_unix(path: Path) -> socket.socket:
    """A listening-ready Unix socket at ``path``, mode 0666. A stale socket file (nothing
    answers on it) is replaced; a live one, or anything that is not a socket, is not."""
    if not path.parent.is_dir():
        raise BadInput(f"unix:{path}: no directory {path.parent} (create it; the admin chooses who may enter it)")
    if path.is_symlink() or path.exists():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise BadInput(f"unix:{path}: exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # stale: its server is gone
        except OSError as e:
            raise BadInput(f"unix:{path}: cannot check the socket already there ({e.strerror or e})") from None
        else:
            raise BadInput(f"unix:{path}: another server is listening there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
    except OSError as e:
        sock.close()
        raise BadInput(f"unix:{path}: cannot listen ({e.strerror or e})") from None
    return sock


def bind_tcp(listener: Listener) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    try:
        sock = socket.create_server((listener.host, listener.port), family=family, backlog=2048)
    except OSError as e:
        raise BadInput(f"{listener}: cannot listen ({e.strerror or e})") from None
    # Accepted connections inherit it (Linux): without it every response after the first on
    # a kept-alive connection waits ~40 ms for the client's delayed ACK (Nagle).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _tls_context(cert: Path, key: Path) -> Callable[[Any, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    def factory(_config: Any, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        ctx = default()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    return factory


GC_THRESHOLDS = (10_000, 10, 10)  # young objects between collections (Python's default: 700)


def tune_gc() -> None:
    """The collector for a long-running server: what is loaded at start (the modules, the
    application: ~100,000 objects) is frozen out of every later collection, and the young
    generation is collected every 10,000 allocations instead of 700, so that fewer objects
    that a request drops a moment later are promoted. The full collections, which stop
    every request while they walk the whole heap (0.1 s each on a busy 2-core machine with
    the admission snapshot of 10,000 grants), come several times less often and walk less
    (``benchmarks/server.py``: 5 in a run, then 1; docs/api.md, "Measured")."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals alone: :class:`Listeners` handles them once
    for all its servers (each ``uvicorn.Server.serve`` would install its own handlers,
    the last one winning)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def,override]
        yield


class Listeners:
    """All the listeners of one server over one ASGI application.

    ``__init__`` binds every socket and loads every uvicorn config (bad input raises
    BadInput and leaves nothing behind); :meth:`serve` runs them until :meth:`stop` (or
    SIGINT/SIGTERM with ``signals``); :meth:`close` removes the Unix socket files."""

    def __init__(self, app: Any, listeners: list[Listener], tls_cert: Path | None = None,
                 tls_key: Path | None = None, access_log: bool = True) -> None:
        from cellsched.server.peercred import protocol_class

        if not listeners:
            raise BadInput("--listen: give at least one (unix:/path, https://host:port)")
        if len(set(map(str, listeners))) != len(listeners):
            raise BadInput("--listen: the same address twice")
        wants_tls = any(item.scheme == "https" for item in listeners)
        if wants_tls and (tls_cert is None or tls_key is None):
            raise BadInput("--listen https://...: needs --tls-cert and --tls-key")
        if not wants_tls and (tls_cert is not None or tls_key is not None):
            raise BadInput("--tls-cert/--tls-key: no https listener to use them")
        if tls_cert is not None and not tls_cert.is_file():
            raise BadInput(f"--tls-cert {tls_cert}: no such file")
        self.listeners = listeners
        self.sockets: list[socket.socket] = []
        self.servers: list[_Server] = []
        self._unix: list[tuple[Path, tuple[int, int]]] = []
        try:
            for i, item in enumerate(listeners):
                if item.is_unix:
                    assert item.path is not None
                    sock = bind_unix(item.path)
                    st = item.path.stat()
                    self._unix.append((item.path, (st.st_dev, st.st_ino)))
                else:
                    sock = bind_tcp(item)
                self.sockets.append(sock)
                tls = item.scheme == "https"
                config = uvicorn.Config(
                    app,
                    # TCP: httptools (C) when installed, as uvicorn's "auto" picks; the Unix
                    # socket's protocol subclasses the same one (peercred.protocol_class).
                    http=protocol_class() if item.is_unix else "auto",
                    ws="none",
                    lifespan="auto" if i == 0 else "off",  # the application starts and stops once
                    log_config=None,
                    access_log=access_log,
                    proxy_headers=False,  # no client may rewrite its address in our logs
                    server_header=False,
                    timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                    ssl_certfile=str(tls_cert) if tls else None,
                    ssl_keyfile=str(tls_key) if tls else None,
                    ssl_context_factory=_tls_context(tls_cert, tls_key) if tls and tls_cert and tls_key else None,
                )
                try:
                    config.load()
                except (OSError, ssl.SSLError) as e:
                    raise BadInput(f"--tls-cert/--tls-key: cannot load ({getattr(e, 'strerror', None) or e})") from None
                self.servers.append(_Server(config))
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self) -> list[str]:
        """Where each listener is, as a client would name it (the real port for port 0)."""
        out = []
        for item, sock in zip(self.listeners, self.sockets):
            if item.is_unix:
                out.append(str(item))
            else:
                port = sock.getsockname()[1]
                host = item.host if item.host not in ("0.0.0.0", "::") else ("127.0.0.1" if item.host == "0.0.0.0" else "::1")
                out.append(str(Listener(item.scheme, host=host, port=port)))
        return out

    @property
    def started(self) -> bool:
        return bool(self.servers) and all(s.started for s in self.servers)

    def stop(self) -> None:
        """Ask every listener to stop (from any thread): open requests get
        ``GRACEFUL_SHUTDOWN_S`` to finish; a second call stops at once."""
        for s in self.servers:
            if s.should_exit:
                s.force_exit = True
            s.should_exit = True

    async def serve(self, signals: bool = False) -> None:
        """Serve until stopped. ``signals``: the process is the server's own (``cellsched
        server``): SIGINT/SIGTERM stop it, and its garbage collector is tuned for serving
        (:func:`tune_gc`)."""
        loop = asyncio.get_running_loop()
        if signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
        if signals:
            tune_gc()
        try:
            for item, sock in zip(self.listeners, self.sockets):
                bound = item if item.is_unix else Listener(item.scheme, host=item.host, port=sock.getsockname()[1])
                log.info("listening on %s (%s)", bound, "identity from the kernel" if item.is_unix else "identity from tokens")
            await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in zip(self.servers, self.sockets)))
        finally:
            if signals and threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
            self.close()

    def _on_signal(self, sig: int) -> None:
        log.info("%s: shutting down", signal.Signals(sig).name)
        self.stop()

    def close(self) -> None:
        """Close the sockets and remove the Unix socket files that are still ours."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for path, ident in self._unix:
            with contextlib.suppress(OSError):
                st = path.lstat()
                if (st.st_dev, st.st_ino) == ident:
                    path.unlink()
        self._unix = []
