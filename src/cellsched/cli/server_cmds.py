"""Server commands: ``server`` (run it), ``token`` (create, list, revoke), ``login``,
``whoami``.

Only typer and the CLI's own small modules are imported here; the server stack (FastAPI,
uvicorn, the ledger) loads inside ``server`` and in the local (no server) branches.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from cellsched.cli.command import Command, Group
from cellsched.cli.errors import handled
from cellsched.cli.state import JsonFlag, caller, env
from cellsched.fmt import emit_json, header, iso, stamp, table, when

TIMES = ("created_at", "expires_at", "revoked_at")


def _submit_rate(text: str) -> Any:
    """``--submit-rate 120/1``: a burst of at least 1, then a positive rate a second."""
    from cellsched.errors import BadInput
    from cellsched.server.state import SubmitRate

    burst, sep, per_s = text.partition("/")
    try:
        rate = SubmitRate(int(burst), float(per_s))
    except ValueError:
        rate = None
    if not sep or rate is None or rate.burst < 1 or not 0 < rate.per_s < float("inf"):
        raise BadInput(f"--submit-rate {text}: give BURST/PER_S, a whole burst of at least 1 and a positive rate "
                       "(120/1: 120 at once, then one a second)")
    return rate


@handled
def server(
    listen: Annotated[list[str], typer.Option(
        "--listen", "-l", help="unix:/run/cellsched/cellsched.sock, https://0.0.0.0:8443 or http://127.0.0.1:8080; "
                               "repeat for several.")],
    tls_cert: Annotated[Optional[Path], typer.Option("--tls-cert", help="TLS certificate (PEM) for https listeners.")] = None,
    tls_key: Annotated[Optional[Path], typer.Option("--tls-key", help="TLS private key (PEM, mode 600).")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Allow plain http on a non-loopback address (only behind a TLS-terminating proxy).")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
    submit_rate: Annotated[str, typer.Option(
        "--submit-rate", metavar="BURST/PER_S",
        help="Submits one user may make: a burst, then so many a second (each is a ledger event); "
             "past it a 429.")] = "120/1",
) -> None:
    """Serve the ledger over HTTP: the one process that owns it, the trust boundary between teams.

    On a Unix socket the caller is the OS user the kernel reports (SO_PEERCRED); on https
    a bearer token an admin issued (`cellsched token create`). Refuses to start if the SQLite
    ledger, the signing key or the TLS key is open to group or others. Stops cleanly on
    SIGINT/SIGTERM. See docs/server.md.

    **Example**: cellsched server --listen unix:/run/cellsched/cellsched.sock --listen https://0.0.0.0:8443 --tls-cert /etc/cellsched/tls.crt --tls-key /etc/cellsched/tls.key
    """
    import asyncio
    import logging
    import logging.config

    from cellsched.errors import BadInput
    from cellsched.server.listen import Listeners, check_files, log_config, parse_listen

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise BadInput(f"--log-level {log_level}: use debug, info, warning or error")
    rate = _submit_rate(submit_rate)
    os.umask(0o077)  # whatever the server creates (the ledger's WAL files) is its own
    listeners = [parse_listen(x, insecure) for x in listen]
    e = env()
    check_files(e.ledger.url, e.cluster_path, tls_key)
    _open_ledger(e)
    logging.config.dictConfig(log_config(log_level))

    from cellsched.server.app import create_app
    from cellsched.server.state import ServerState

    app = create_app(ServerState(e, submits=rate))
    running = Listeners(app, listeners, tls_cert, tls_key)
    log = logging.getLogger("cellsched.server")
    log.info("ledger %s, cluster config %s", _shown(e.ledger.url), e.cluster_path)
    if os.geteuid() == 0:
        log.warning("running as root: run the server as a service account of its own (docs/server.md)")
    asyncio.run(running.serve(signals=True))


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _open_ledger(e) -> None:  # type: ignore[no-untyped-def]
    """Create or check the schema now, so an unreachable ledger is one line before any
    listener opens."""
    from sqlalchemy.exc import SQLAlchemyError

    from cellsched.errors import BadInput

    try:
        e.ledger.ensure_schema()
    except SQLAlchemyError as err:
        where = e.ledger.url.split("@")[-1]
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:200]
        raise BadInput(f"ledger {where}: cannot open ({reason})") from None


# -- tokens -----------------------------------------------------------------------------

token_app = typer.Typer(
    cls=Group,
    help="Bearer tokens for the server's https listener: admins create them (shown once, "
         "stored hashed); everyone lists and revokes their own.\n\n"
         "**Example**: cellsched token create --user alice --expires 90d",
    no_args_is_help=True,
)


def _remote():  # type: ignore[no-untyped-def]
    from cellsched.cli.remote import configured

    return configured()


def _local_identity():  # type: ignore[no-untyped-def]
    from cellsched.server.auth import Identity

    return Identity(caller(), "local")


def _with_utc(item: dict[str, Any]) -> dict[str, Any]:
    for k in TIMES:
        if k in item:
            item[k + "_utc"] = iso(item[k])
    return item


def _expiry(item: dict[str, Any]) -> str:
    return "never" if item.get("expires_at") is None else when(item["expires_at"])


@token_app.command("create", cls=Command)
@handled
def token_create(
    user: Annotated[str, typer.Option("--user", "-u", help="Whose token: an OS user name the cluster config knows.")],
    expires: Annotated[str, typer.Option("--expires", help="How long it is valid: 90d, 12h, 30m, 2w or never.")] = "90d",
    note: Annotated[str, typer.Option("--note", help="Where it will be used (shown in `token list`).")] = "",
    json_out: JsonFlag = False,
) -> None:
    """Create a token for a user (admins). The token is printed once, on stdout; only its
    SHA-256 is kept.

    Through the server's Unix socket when a server is configured (tokens are never created
    with a token), else directly on the ledger.

    **Example**: cellsched token create --user alice --expires 90d --note laptop
    """
    remote = _remote()
    if remote is not None:
        out = remote.call("POST", "/api/tokens", json={"user": user, "expires": expires, "note": note})
    else:
        from cellsched.runtime.clock import now_s
        from cellsched.server import tokens

        now = now_s()
        info, secret = tokens.create(env(), _local_identity(), user, expires, note, now)
        out = {**info.to_json(now), "token": secret}
    if json_out:
        emit_json(_with_utc(out))
        return
    print(f"created token {out['id']} for {out['user']}, expires {_expiry(out)}. It is shown this once: "
          f"give it to {out['user']} privately; they run `cellsched login https://<server>:8443` and paste it.",
          file=sys.stderr)
    print(out["token"])


@token_app.command("list", cls=Command)
@handled
def token_list(json_out: JsonFlag = False) -> None:
    """Tokens: every one for admins, your own for anyone else. Never the secrets.

    **Example**: cellsched token list --json
    """
    remote = _remote()
    if remote is not None:
        items = remote.call("GET", "/api/tokens")
    else:
        from cellsched.runtime.clock import now_s
        from cellsched.server import tokens

        now = now_s()
        items = [t.to_json(now) for t in tokens.listing(env(), _local_identity())]
    if json_out:
        emit_json([_with_utc(it) for it in items])
        return
    if not items:
        print("no tokens")
        return
    table(None, ["id", "user", "state", header("created"), header("expires"), "by", "note"],
          [[it["id"], it["user"], it["state"], stamp(it["created_at"]),
            "never" if it["expires_at"] is None else stamp(it["expires_at"]), it["created_by"], it["note"]]
           for it in items])


@token_app.command("revoke", cls=Command)
@handled
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (from `token list`), not the token itself.")],
    json_out: JsonFlag = False,
) -> None:
    """Revoke a token at once (admins: any; users: their own).

    **Example**: cellsched token revoke t3f9a01c2b7d4
    """
    from cellsched.errors import BadInput

    if token_id.startswith("cst_"):
        raise BadInput("token revoke: give the token's id (`cellsched token list`), not the token")
    remote = _remote()
    if remote is not None:
        from urllib.parse import quote

        out = remote.call("DELETE", f"/api/tokens/{quote(token_id, safe='')}")
    else:
        from cellsched.runtime.clock import now_s
        from cellsched.server import tokens

        now = now_s()
        info, fresh = tokens.revoke(env(), _local_identity(), token_id, now)
        out = {**info.to_json(now), "revoked_now": fresh}
    if json_out:
        emit_json(_with_utc(out))
        return
    if out["revoked_now"]:
        print(f"revoked  {out['id']} ({out['user']})")
    else:
        print(f"{out['id']} ({out['user']}) was already revoked at {when(out['revoked_at'])}")


# -- login, whoami ----------------------------------------------------------------------


def _server_url(url: str, insecure: bool) -> str:
    from urllib.parse import urlsplit

    from cellsched.errors import BadInput

    u = url.strip().rstrip("/")
    if u.startswith("unix:"):
        if not u.removeprefix("unix:"):
            raise BadInput(f"{url}: a Unix socket needs a path (unix:/run/cellsched/cellsched.sock)")
        return u
    parts = urlsplit(u)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BadInput(f"{url}: use https://host:port (or unix:/path on the head node)")
    if parts.scheme == "http" and not insecure and not _loopback(parts.hostname):
        raise BadInput(f"{url}: plain http would send the token in clear; use https (or --insecure)")
    return u


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_token() -> str:
    from cellsched.errors import BadInput

    if sys.stdin.isatty():
        import getpass

        secret = getpass.getpass("token (from your admin; not echoed): ")
    else:
        secret = sys.stdin.readline()
    secret = secret.strip()
    if not secret:
        raise BadInput("login: no token given (--token, stdin, or the prompt)")
    return secret


@handled
def login(
    url: Annotated[str, typer.Argument(help="The server: https://head:8443 (or unix:/path on the head node).")],
    token: Annotated[Optional[str], typer.Option(
        "--token", help="The token (else read from stdin, or prompted for: keeps it out of shell history).")] = None,
    ca: Annotated[Optional[Path], typer.Option(
        "--ca", help="Trust this certificate (PEM) for the server, e.g. its self-signed one.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow plain http to a non-loopback host.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """Use a server from now on: check the token with it, then store the server, the token
    and the certificate to trust in ~/.config/cellsched/client.toml (mode 600).

    Nothing is written unless the server accepts the token. On the head node use the Unix
    socket instead: no token, the kernel says who you are.

    **Example**: cellsched login https://head:8443 --ca head.crt < token.txt
    """
    from cellsched.cli.remote import Remote, ca_context, check_config_writable, write_config
    from cellsched.errors import BadInput

    server_url = _server_url(url, insecure)
    check_config_writable()
    ca_path = None
    if ca is not None:
        ca_context(ca, f"--ca {ca}")  # a PEM certificate file, checked before the server is called
        ca_path = str(ca.resolve())
    if server_url.startswith("unix:"):
        if token is not None:
            raise BadInput("--token: not used on the Unix socket (the kernel says who you are)")
        secret = None
    else:
        secret = token.strip() if token is not None else _read_token()
        if not secret:
            raise BadInput("--token: empty")
    me = Remote(server_url, secret, ca_path).call("GET", "/api/whoami")
    path = write_config(server_url, secret, ca_path)
    if json_out:
        emit_json({**me, "server": server_url, "config": str(path)})
        return
    how = f"token {me.get('token')}" if me.get("via") == "token" else "the Unix socket's peer credentials"
    print(f"logged in to {server_url} as {me['user']} ({how}); saved in {path} (mode 600)")


@handled
def whoami(json_out: JsonFlag = False) -> None:
    """Who the server (or, with none configured, the local ledger) takes you for.

    **Example**: cellsched whoami
    """
    remote = _remote()
    if remote is not None:
        me = remote.call("GET", "/api/whoami")
        me["server"] = remote.url
    else:
        me = {"user": caller(), "via": "local", "token": None, "server": None}
    if json_out:
        emit_json(me)
        return
    where = f"on {me['server']}" if me["server"] else "on the local ledger (no server configured)"
    how = {"socket": "the Unix socket's peer credentials", "token": f"token {me.get('token')}",
           "local": "the OS user"}.get(me["via"], me["via"])
    teams = me.get("teams")
    extra = "" if teams is None else f"; teams: {', '.join(teams) or 'none'}" + ("; admin" if me.get("admin") else "")
    print(f"{me['user']} {where}, by {how}{extra}")
