"""The thin client: how the CLI talks to ``cellsched server``.

A server is configured by ``CELLSCHED_SERVER`` (``unix:/run/cellsched.sock`` or
``https://head:8443``) or by the user config file ``~/.config/cellsched/client.toml``
(``$XDG_CONFIG_HOME`` respected), written by ``cellsched login``::

    server = "https://head:8443"
    token = "..."              # proves who you are over TCP; the file is mode 0600
    ca = "/etc/cellsched/server.crt"   # optional: trust this certificate (self-signed setups)

Over the Unix socket no token is needed: the server asks the kernel who is calling. This
module imports only httpx and the standard library, so a command through the server starts
fast; it never imports the ledger stack or Ray.
"""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellsched.errors import BadInput, CellschedError, Denied, Failed, NotFound

TIMEOUT_S = 60.0


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cellsched" / "client.toml"


@dataclass(frozen=True)
class Remote:
    """A configured server: ``url`` (``unix:/path`` or ``http(s)://host:port``), the bearer
    ``token`` (None on the Unix socket) and ``ca`` (a certificate file to trust, or None
    for the system's)."""

    url: str
    token: str | None = None
    ca: str | None = None

    @property
    def is_unix(self) -> bool:
        return self.url.startswith("unix:")

    def client(self, timeout: float = TIMEOUT_S):  # type: ignore[no-untyped-def]
        httpx = _httpx()
        headers = {"user-agent": "cellsched-cli"}
        if self.token and not self.is_unix:
            headers["authorization"] = f"Bearer {self.token}"
        # No TLS on the socket or plain http: no certificate store to load (~40 ms a client).
        if self.is_unix:
            transport = httpx.HTTPTransport(uds=self.url.removeprefix("unix:"), verify=False)
            return httpx.Client(transport=transport, base_url="http://cellsched", headers=headers, timeout=timeout,
                                verify=False)
        tls = self.url.startswith("https:")
        verify: Any = False
        if tls:  # a CA file as an SSL context (httpx deprecates passing the path itself)
            verify = ca_context(self.ca, f"{config_path()}: ca {self.ca}") if self.ca else True
        return httpx.Client(base_url=self.url.rstrip("/"), headers=headers, timeout=timeout, verify=verify)

    def call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None,
             content: bytes | None = None, timeout: float = TIMEOUT_S) -> Any:
        """One request; the decoded JSON answer. A 4xx/5xx becomes the server's one-line
        error with its exit code; an unreachable server is one line, exit 2."""
        httpx = _httpx()
        try:
            with self.client(timeout) as c:
                r = c.request(method, path, json=json, params=_clean(params), content=content)
        except httpx.TransportError as e:
            raise BadInput(f"server {self.url}: cannot connect ({_reason(e)})") from None
        return answer(r, self.url)


# A certificate bundle is at most a few hundred kB (the system's is ~200 kB).
MAX_CA_BYTES = 10 * 1024 * 1024


def ca_context(ca: str | Path, where: str) -> Any:
    """An SSL context trusting the PEM certificates in the file ``ca``; one line starting
    with ``where`` (``--ca FILE`` or the config's ``ca FILE``) if it is not a regular
    file or holds no certificate."""
    import ssl

    from cellsched.files import read_bytes

    try:
        read_bytes(Path(ca), MAX_CA_BYTES, where)  # a regular file, of a sane size: never a pipe
    except NotFound:
        raise BadInput(f"{where}: no such file") from None
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (ssl.SSLError, ValueError):
        raise BadInput(f"{where}: not a PEM certificate (trust the server's certificate: its .crt file)") from None
    except OSError as e:
        raise BadInput(f"{where}: cannot read: {e.strerror}") from None


def _httpx():  # type: ignore[no-untyped-def]
    """httpx, without its own command line (click, rich, pygments: ~40 ms of imports the
    client never uses, loaded by ``import httpx`` whenever click is installed)."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # makes httpx skip it
        try:
            import httpx  # noqa: F401
        finally:
            if sys.modules.get("httpx._main", 0) is None:
                del sys.modules["httpx._main"]
    return sys.modules["httpx"]


def _clean(params: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if params is None else {k: v for k, v in params.items() if v is not None}


def _reason(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def answer(r: Any, url: str) -> Any:
    """The JSON of a response, or the server's error raised as the CLI's own error."""
    if r.status_code < 400:
        return r.json() if r.content else None
    try:
        body = r.json()
        message, code = str(body["error"]), int(body.get("exit_code", 1))
    except Exception:
        message, code = f"server {url} answered {r.status_code}", 1
    raise error_for(r.status_code, message, code)


def error_for(status: int, message: str, exit_code: int) -> CellschedError:
    cls: type[CellschedError]
    if status == 404:
        cls = NotFound
    elif exit_code == 2:
        cls = BadInput
    elif status in (401, 403):
        cls = Denied
    else:
        cls = Failed
    err = cls(message)
    err.exit_code = exit_code  # the server's word on the exit code wins
    return err


def configured() -> Remote | None:
    """The server to use, or None for the embedded default (a local ledger).

    ``CELLSCHED_SERVER`` wins over the config file's ``server``; the file's token and ca
    apply only to the server it names. ``CELLSCHED_SERVER=local`` forces the local ledger."""
    url = os.environ.get("CELLSCHED_SERVER") or None
    if url == "local":
        return None
    cfg = read_config()
    if url is None:
        url = cfg.get("server")
    if not url:
        return None
    same = cfg.get("server") == url
    return Remote(url=str(url), token=cfg.get("token") if same else None, ca=cfg.get("ca") if same else None)


# The client config is three short lines; anything near this is not one.
MAX_CONFIG_BYTES = 64 * 1024
CONFIG_KEYS = ("server", "token", "ca")


def read_config() -> dict[str, Any]:
    """The user config file's keys (``{}`` if there is none); one line naming the file if
    it cannot be used: not a regular file, too large, not UTF-8, not TOML, a key that is
    not a string."""
    from cellsched.files import read_bytes

    path = config_path()
    where = str(path)
    try:
        raw = read_bytes(path, MAX_CONFIG_BYTES, where)
    except NotFound:
        return {}
    except BadInput as e:
        raise BadInput(f"{e.message} (the client config, written by `cellsched login`)") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInput(f"{where}: not UTF-8 text (bad byte at offset {e.start}); "
                       "write it again with `cellsched login`") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInput(f"{where}: not valid TOML ({' '.join(str(e).split())})") from None
    for key in CONFIG_KEYS:
        value = data.get(key)
        if value is not None and not (isinstance(value, str) and value):
            shown = ("an empty string" if value == "" else str(value).lower() if isinstance(value, bool)
                     else "a number" if isinstance(value, (int, float)) else "a list" if isinstance(value, list)
                     else "a table" if isinstance(value, dict) else "a time")
            raise BadInput(f"{where}: {key}: must be a non-empty string, got {shown}")
    if "token" in data and os.name == "posix":
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            print(f"cellsched: warning: {path} holds a token and is readable by others (mode {mode:o}); "
                  "chmod 600 it", file=sys.stderr)
    return data


def write_config(server: str, token: str | None, ca: str | None = None) -> Path:
    """Write the user config file (mode 0600, created that way: the token is never
    readable by others, not even for a moment)."""
    path = config_path()
    check_config_writable()
    lines = [f"server = {_toml_str(server)}"]
    if token:
        lines.append(f"token = {_toml_str(token)}")
    if ca:
        lines.append(f"ca = {_toml_str(ca)}")
    tmp = path.with_suffix(".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        if tmp.is_file():
            tmp.unlink()
        raise BadInput(f"{path}: cannot write: {e.strerror}") from None
    return path


def check_config_writable() -> None:
    """BadInput naming the user config file if something other than a regular file is in
    its place (a directory, a named pipe): ``login`` checks it before calling the server."""
    from cellsched.files import check_writable

    path = config_path()
    if os.path.lexists(path) and not path.is_file():
        check_writable(path)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
