"""The server as the trust boundary, end to end through a real uvicorn on a Unix socket and
on TCP, over a real ledger (SQLite and PostgreSQL):

- identity cannot be claimed: a client running as another uid with ``USER=alice`` and
  ``CELLSCHED_USER=alice`` (and even alice's token) is that other user on the socket; over
  TCP the environment and headers count for nothing, only the token;
- a forged, an expired and a revoked token get 401;
- a non-admin creating a token gets 403, and so does an admin holding only a token; a user
  revoking another's token gets 403; a member of one team cancelling another team's project
  gets 403; none of them changes the ledger (its event chain head is the same after);
- TLS with a self-signed certificate (the openssl steps of docs/server.md), trusted with
  ``--ca``;
- ``cellsched server`` itself: refuses to start on open secrets, replaces a stale socket,
  never logs a token, stops cleanly on SIGTERM.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from server_harness import in_child as as_uid
from server_harness import serving
from sqlmodel import col, select

from cellsched.cli.remote import Remote
from cellsched.errors import BadInput, CellschedError, Denied
from cellsched.ledger.tables import EventRow
from cellsched.receipt import create_keys, key_paths
from cellsched.server import tokens
from cellsched.server.app import create_app
from cellsched.server.auth import Identity
from cellsched.server.listen import bind_unix, check_files, parse_listen
from cellsched.server.state import ServerState
from cellsched.service import Env, open_env

NOBODY = 65534
ROOT = os.geteuid() == 0
CLUSTER = """
admins = ["root", "root-admin"]
[[pools]]
name = "h100"
gpu_type = "H100"
gpus = 16
gpus_per_node = 8
[[teams]]
name = "interp"
members = ["alice", "bob"]
allowance_gpu_hours = 1500
[[teams]]
name = "evals"
members = ["carol"]
allowance_gpu_hours = 100
"""


@dataclass
class Served:
    env: Env
    unix: str  # unix:/path
    tcp: str  # http://127.0.0.1:port

    @property
    def sock(self) -> str:
        return self.unix.removeprefix("unix:")

    def token(self, user: str, expires: str = "90d") -> tuple[str, str]:
        info, secret = tokens.create(self.env, Identity("root", "local"), user, expires, "", now())
        return info.id, secret


def now() -> int:
    from cellsched.runtime.clock import now_s

    return now_s()


def head(env: Env) -> tuple[int, str]:
    """The ledger's event chain head: (events, hash of the last)."""
    with env.ledger.read() as s:
        rows = s.exec(select(EventRow).order_by(col(EventRow.seq))).all()
    return len(rows), rows[-1].hash if rows else ""


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(CLUSTER)
    create_keys(*key_paths(path))
    return path


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A directory other users may enter (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="cs-sec-"))
    os.chmod(d, 0o711)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def served(cluster: Path, ledger_url: str, sock_dir: Path) -> Iterator[Served]:
    """A real uvicorn (unix socket + loopback TCP) over a fresh ledger."""
    env = open_env(cluster, ledger_url)
    env.ledger.ensure_schema()
    with serving(create_app(ServerState(env)), f"unix:{sock_dir / 'cs.sock'}", "http://127.0.0.1:0") as running:
        yield Served(env, *running.addresses)
    env.ledger.dispose()


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("cellsched", timeout=10)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def raw(path: str, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """One request over the Unix socket with the standard library alone (safe in a forked
    child): (status, decoded JSON)."""
    conn = UnixHTTP(path)
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, url, body=data, headers={"content-type": "application/json", **(headers or {})})
    r = conn.getresponse()
    out = r.status, json.loads(r.read() or b"null")
    conn.close()
    return out


def in_child(uid: int, fn: Any) -> Any:
    """``fn()`` in a forked child that dropped to ``uid`` with ``USER``, ``LOGNAME`` and
    ``CELLSCHED_USER`` set to alice; its JSON result."""
    return as_uid(uid, fn, env={"USER": "alice", "LOGNAME": "alice", "CELLSCHED_USER": "alice"})["result"]


def call(url: str, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
    """Through the CLI's own client."""
    return Remote(url, token).call(method, path, **kw)


# -- identity -----------------------------------------------------------------------------


@pytest.mark.skipif(not ROOT, reason="needs root to run the client as another uid")
def test_user_alice_in_the_environment_of_another_uid_is_that_uid_on_the_socket(served: Served) -> None:
    _, alice_token = served.token("alice")
    before = head(served.env)

    def as_nobody() -> Any:
        auth = {"authorization": f"Bearer {alice_token}", "x-user": "alice", "x-remote-user": "alice"}
        return [raw(served.sock, "GET", "/api/whoami", headers=auth),
                raw(served.sock, "POST", "/api/tokens", {"user": "alice"}, headers=auth),
                raw(served.sock, "GET", "/api/tokens", headers=auth)]

    (s1, me), (s2, created), (s3, listed) = in_child(NOBODY, as_nobody)
    assert s1 == 200 and (me["user"], me["via"], me["token"], me["admin"]) == ("nobody", "socket", None, False)
    assert s2 == 403 and "nobody may not create tokens" in created["error"]
    assert (s3, listed) == (200, [])  # nobody's own tokens: none; alice's are not shown
    assert head(served.env) == before


def test_environment_and_headers_are_not_identity_over_tcp(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("USER", "LOGNAME", "CELLSCHED_USER"):
        monkeypatch.setenv(name, "alice")
    with pytest.raises(CellschedError, match="no credentials") as e:
        call(served.tcp, "GET", "/api/whoami")
    assert e.value.exit_code == 2
    import httpx

    r = httpx.get(served.tcp + "/api/whoami", headers={"x-user": "alice", "cellsched.peer": '{"uid": 0}',
                                                        "x-forwarded-for": "127.0.0.1"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    _, bob_token = served.token("bob")
    me = call(served.tcp, "GET", "/api/whoami", bob_token)
    assert (me["user"], me["via"]) == ("bob", "token")


def test_the_cli_with_user_alice_is_who_its_token_says(served: Served, tmp_path: Path) -> None:
    """The real ``cellsched whoami`` process, environment saying alice, bob's token in its
    config: bob."""
    tid, bob_token = served.token("bob")
    config = tmp_path / "xdg" / "cellsched"
    config.mkdir(parents=True)
    (config / "client.toml").write_text(f'server = "{served.tcp}"\ntoken = "{bob_token}"\n')
    (config / "client.toml").chmod(0o600)
    env = {**os.environ, "USER": "alice", "LOGNAME": "alice", "CELLSCHED_USER": "alice",
           "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    env.pop("CELLSCHED_SERVER", None)
    r = subprocess.run([sys.executable, "-c", "from cellsched.cli.app import main; main()", "whoami", "--json"],
                       env=env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"user": "bob", "via": "token", "token": tid, "admin": False,
                                    "teams": ["interp"], "server": served.tcp}


def test_forged_expired_and_revoked_tokens_get_401(served: Served) -> None:
    alice_id, alice_token = served.token("alice")
    old_id, old_secret = tokens.issue(served.env, "alice", "root", now() - 7200, expires_at=now() - 1)
    gone_id, gone_secret = served.token("alice")
    assert call(served.tcp, "DELETE", f"/api/tokens/{gone_id}", alice_token)["revoked_now"] is True
    flipped = alice_token[:-1] + ("A" if alice_token[-1] != "A" else "B")
    bad = {
        "forged": "cst_" + secrets.token_urlsafe(32),
        "one character changed": flipped,
        "expired": old_secret,
        "revoked": gone_secret,
        "too long": alice_token + "x" * 300,
    }
    for why, secret in bad.items():
        with pytest.raises(CellschedError, match="invalid, expired or revoked token") as e:
            call(served.tcp, "GET", "/api/whoami", secret)
        assert e.value.exit_code == 2, why
    import httpx

    for header in (f"Basic {alice_token}", "Bearer", alice_token, f"Token {alice_token}", f"Bearer{alice_token}"):
        r = httpx.get(served.tcp + "/api/whoami", headers={"authorization": header})
        assert r.status_code == 401, header
        assert set(r.json()) == {"error", "exit_code"} and "\n" not in r.json()["error"]
    assert call(served.tcp, "GET", "/api/whoami", alice_token)["token"] == alice_id
    assert old_id != alice_id


def test_a_non_admin_creating_a_token_gets_403_and_nothing_changes(served: Served) -> None:
    _, alice_token = served.token("alice")
    _, admin_token = served.token("root-admin")
    before = head(served.env)
    for secret, says in ((alice_token, "alice may not create tokens"), (admin_token, "not issued with a token")):
        with pytest.raises(Denied, match=says):
            call(served.tcp, "POST", "/api/tokens", secret, json={"user": "alice", "expires": "90d"})
    assert head(served.env) == before
    # The admin on the head node (root, through the socket) may.
    made = call(served.unix, "POST", "/api/tokens", json={"user": "carol", "expires": "12h", "note": "ci"})
    assert made["token"].startswith("cst_") and made["user"] == "carol"
    assert call(served.tcp, "GET", "/api/whoami", made["token"])["user"] == "carol"
    assert all("token" not in t for t in call(served.unix, "GET", "/api/tokens"))


def test_revoking_another_users_token_gets_403_and_nothing_changes(served: Served) -> None:
    _, alice_token = served.token("alice")
    carol_id, carol_token = served.token("carol")
    before = head(served.env)
    with pytest.raises(Denied, match="may not revoke"):
        call(served.tcp, "DELETE", f"/api/tokens/{carol_id}", alice_token)
    assert head(served.env) == before
    assert call(served.tcp, "GET", "/api/whoami", carol_token)["user"] == "carol"
    assert [t["id"] for t in call(served.tcp, "GET", "/api/tokens", alice_token)] != [carol_id]


# -- TLS ------------------------------------------------------------------------------------


def self_signed(where: Path) -> tuple[Path, Path]:
    """The certificate and key of docs/server.md's openssl step (for 127.0.0.1)."""
    cert, key = where / "tls.crt", where / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "825", "-subj", "/CN=cellsched", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_https_with_a_self_signed_certificate(cluster: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    env = open_env(cluster, f"sqlite:///{tmp_path / 'ledger.db'}")
    check_files(env.ledger.url, cluster, key)  # as the server does: the ledger is created 0600
    env.ledger.ensure_schema()
    _, secret = tokens.create(env, Identity("root", "local"), "alice", "1h", "", now())
    with serving(create_app(ServerState(env)), "https://127.0.0.1:0", tls_cert=cert, tls_key=key) as running:
        url = running.addresses[0]
        assert url.startswith("https://127.0.0.1:")
        assert Remote(url, secret, str(cert)).call("GET", "/api/whoami")["user"] == "alice"
        with pytest.raises(BadInput, match="cannot connect"):
            Remote(url, secret).call("GET", "/api/whoami")  # not trusted without --ca
        with pytest.raises(BadInput, match="cannot connect"):
            Remote(url.replace("https:", "http:"), secret).call("GET", "/api/whoami")
    key.chmod(0o640)
    with pytest.raises(BadInput, match="TLS key is open to group or others"):
        check_files(env.ledger.url, cluster, key)
    env.ledger.dispose()


# -- cellsched server, the process ------------------------------------------------------------


def test_startup_checks(cluster: Path, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    url = f"sqlite:///{db}"
    check_files(url, cluster)  # creates the ledger file, mode 0600
    assert db.stat().st_mode & 0o777 == 0o600
    private = key_paths(cluster)[0]
    cases = [(db, 0o644, "ledger is open"), (db, 0o620, "ledger is open"), (private, 0o640, "signing key is open"),
             (cluster, 0o666, "writable by group or others")]
    for path, mode, says in cases:
        old = path.stat().st_mode & 0o777
        path.chmod(mode)
        with pytest.raises(BadInput, match=says):
            check_files(url, cluster)
        path.chmod(old)
    wal = Path(f"{db}-wal")
    wal.write_bytes(b"")
    wal.chmod(0o644)
    with pytest.raises(BadInput, match="ledger is open"):
        check_files(url, cluster)
    wal.unlink()
    private.rename(tmp_path / "elsewhere")
    with pytest.raises(BadInput, match="no signing key"):
        check_files(url, cluster)


@pytest.mark.parametrize(("spec", "says"), [
    ("http://0.0.0.0:8080", "plain http only on a loopback"),
    ("http://10.1.2.3:8080", "plain http only on a loopback"),
    ("ftp://head:21", "use unix:/path"),
    ("https://head:99999", "port"),
    ("https://head:8443/api", "only a scheme"),
    ("unix:", "needs a path"),
])
def test_bad_listen_addresses(spec: str, says: str) -> None:
    with pytest.raises(BadInput, match=says):
        parse_listen(spec)


def test_listen_addresses() -> None:
    assert str(parse_listen("https://0.0.0.0")) == "https://0.0.0.0:8443"
    assert str(parse_listen("http://[::1]:80")) == "http://[::1]:80"
    assert str(parse_listen("http://localhost:8080")) == "http://localhost:8080"
    assert str(parse_listen("http://0.0.0.0:8080", insecure=True)) == "http://0.0.0.0:8080"
    assert parse_listen("unix:/run/cellsched/cellsched.sock").path == Path("/run/cellsched/cellsched.sock")


def test_the_socket_path_is_not_taken_from_a_live_server_or_a_file(sock_dir: Path) -> None:
    path = sock_dir / "cs.sock"
    path.write_text("not a socket")
    with pytest.raises(BadInput, match="is not a socket"):
        bind_unix(path)
    path.unlink()
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    with pytest.raises(BadInput, match="another server is listening"):
        bind_unix(path)
    live.close()  # the file stays: stale now
    sock = bind_unix(path)
    assert path.stat().st_mode & 0o777 == 0o666
    sock.close()
    with pytest.raises(BadInput, match="no directory"):
        bind_unix(sock_dir / "missing" / "cs.sock")


def cli_server(cluster: Path, db: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "CELLSCHED_CLUSTER": str(cluster), "CELLSCHED_DB": f"sqlite:///{db}"}
    env.pop("CELLSCHED_SERVER", None)
    return subprocess.Popen([sys.executable, "-c", "from cellsched.cli.app import main; main()", "server", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_server_refuses_to_start_on_an_open_ledger(cluster: Path, tmp_path: Path, sock_dir: Path) -> None:
    db = tmp_path / "ledger.db"
    db.touch(mode=0o644)
    db.chmod(0o644)
    p = cli_server(cluster, db, "--listen", f"unix:{sock_dir / 'cs.sock'}")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 2
    assert err.strip().splitlines() == [(f"cellsched: {db}: the ledger is open to group or others (mode 644); "
                                         "chmod 600 it (the server's account alone reads it)")]
    assert not (sock_dir / "cs.sock").exists()


def test_the_server_never_logs_a_token_and_stops_cleanly(cluster: Path, tmp_path: Path, sock_dir: Path) -> None:
    import httpx

    path = sock_dir / "cs.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: the server replaces it
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = cli_server(cluster, tmp_path / "ledger.db", "--listen", f"unix:{path}", "--listen", f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 60
        while True:
            assert p.poll() is None, p.communicate()
            with contextlib.suppress(OSError, json.JSONDecodeError):
                if raw(str(path), "GET", "/api/whoami")[0] == 200:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert path.stat().st_mode & 0o777 == 0o666
        made = call(f"unix:{path}", "POST", "/api/tokens", json={"user": "alice", "note": "laptop"})
        secret, tid = made["token"], made["id"]
        forged = "cst_" + secrets.token_urlsafe(32)
        tcp = f"http://127.0.0.1:{port}"
        assert call(tcp, "GET", "/api/whoami", secret)["user"] == "alice"
        with httpx.Client(base_url=tcp) as c:
            c.get("/api/whoami", headers={"authorization": f"Bearer {forged}"})
            c.get(f"/api/whoami?token={secret}&access_token={forged}")
            c.delete(f"/api/tokens/{secret}", headers={"authorization": f"Bearer {secret}"})
            c.post("/api/tokens", content=f'{{"user": "{secret}"}}', headers={"authorization": f"Bearer {secret}"})
        assert call(tcp, "DELETE", f"/api/tokens/{tid}", secret)["revoked_now"] is True
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    logs = out + err
    assert "GET /api/whoami" in logs and "/api/tokens/cst_[redacted]" in logs and "token=cst_[redacted]" in logs
    for s in (secret, forged, secret.removeprefix("cst_"), forged.removeprefix("cst_")):
        assert s not in logs
    assert "SIGTERM: shutting down" in logs
    assert not path.exists()  # removed on the way out


def test_login_writes_the_config_only_for_a_token_the_server_accepts(served: Served, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cellsched.cli.app import app

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("CELLSCHED_SERVER", raising=False)
    config = tmp_path / "xdg" / "cellsched" / "client.toml"
    tid, secret = served.token("alice")
    bad = [
        (["login", served.tcp], "cst_" + secrets.token_urlsafe(32) + "\n", 2, "invalid, expired or revoked token"),
        (["login", served.tcp], "\n", 2, "no token given"),
        (["login", "http://10.0.0.1:8080"], secret + "\n", 2, "in clear"),
        (["login", "ftp://head"], secret + "\n", 2, "use https://"),
        (["login", served.tcp, "--ca", str(tmp_path / "missing.crt")], secret + "\n", 2, "no such file"),
        (["login", served.unix, "--token", secret], "", 2, "not used on the Unix socket"),
    ]
    for args, stdin, code, says in bad:
        r = CliRunner().invoke(app, args, input=stdin)
        assert r.exit_code == code and says in r.stderr and len(r.stderr.splitlines()) == 1, (args, r.output)
        assert not config.exists()
    r = CliRunner().invoke(app, ["login", served.tcp + "/", "--json"], input=secret + "\n")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["user"] == "alice" and secret not in r.stdout
    assert config.stat().st_mode & 0o777 == 0o600 and config.parent.stat().st_mode & 0o777 == 0o700
    assert f'token = "{secret}"' in config.read_text()
    r = CliRunner().invoke(app, ["whoami", "--json"], env={"USER": "bob", "CELLSCHED_USER": "bob"})
    assert json.loads(r.stdout)["user"] == "alice" and json.loads(r.stdout)["token"] == tid
    r = CliRunner().invoke(app, ["login", served.unix])
    assert r.exit_code == 0 and "the Unix socket's peer credentials" in r.stdout
    assert "token" not in config.read_text()


def test_no_token_request_body_or_id_is_a_server_error(served: Served) -> None:
    """Hypothesis-made bodies for POST /api/tokens and ids for DELETE /api/tokens/{id}, from
    an admin on the socket: a 2xx or a one-line 4xx, never a 5xx."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=80))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                          max_leaves=8)
    bodies = st.one_of(
        values,
        st.fixed_dictionaries({"user": st.sampled_from(["alice", "carol", "root", "mallory", "", "a" * 65]) | st.text(max_size=70)},
                              optional={"expires": st.one_of(st.none(), st.sampled_from(["90d", "never", "0d", "1y"]), st.text(max_size=40)),
                                        "note": st.text(max_size=250), "extra": values}),
    )

    def check(status: int, body: Any) -> None:
        assert status < 500, body
        if status >= 400:
            assert set(body) == {"error", "exit_code"} and "\n" not in body["error"], body

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(body=bodies, tid=st.text(min_size=1, max_size=40))
    def run(body: Any, tid: str) -> None:
        check(*raw(served.sock, "POST", "/api/tokens", body))
        from urllib.parse import quote

        check(*raw(served.sock, "DELETE", "/api/tokens/" + quote(tid, safe="")))

    run()
    conn = UnixHTTP(served.sock)
    conn.request("POST", "/api/tokens", body=b'{"user": "alice", ', headers={"content-type": "application/json"})
    r = conn.getresponse()
    assert r.status == 422 and set(json.loads(r.read())) == {"error", "exit_code"}
    conn.close()


# -- the commands: one team cannot touch another's windows ---------------------------------

SPEC = """
name = "pythia-ablation"
team = "interp"
owner = "alice"
problem = "Which attention heads carry induction behaviour?"
[budget]
gpu_hours = 96
gpus = 8
pool = "h100"
[[jobs]]
name = "ablate"
run = ["python3", "ablate.py"]
gpus = 8
"""


def test_a_member_of_another_team_cancelling_gets_403_and_nothing_changes(served: Served) -> None:
    _, alice = served.token("alice")
    _, bob = served.token("bob")
    _, carol = served.token("carol")
    spec = {"file": "pythia-ablation.toml", "text": SPEC}
    # carol (team evals) may not spend interp's hours either
    before = head(served.env)
    with pytest.raises(Denied, match="carol is not a member of team interp"):
        call(served.tcp, "POST", "/api/submit", carol, json=spec)
    assert head(served.env) == before
    granted = call(served.tcp, "POST", "/api/submit", alice, json=spec)
    assert granted["decision"] == "granted"
    project = granted["project"]
    before = head(served.env)
    def grant() -> list[Any]:
        [item] = call(served.tcp, "GET", "/api/status", alice)
        return [item[k] for k in ("state", "start", "end", "gpu_hours", "refunded_gpu_hours", "ended_at")]

    status = grant()
    for who in ("pythia-ablation", project):
        with pytest.raises(Denied, match=f"carol may not cancel {project}") as e:
            call(served.tcp, "POST", "/api/cancel", carol, json={"project": who})
        assert e.value.exit_code == 1
    if ROOT:
        (code, body), = in_child(NOBODY, lambda: [raw(served.sock, "POST", "/api/cancel", {"project": project},
                                                      headers={"authorization": f"Bearer {alice}"})])
        assert code == 403 and "nobody may not cancel" in body["error"]
    assert head(served.env) == before
    assert grant() == status
    # a member of interp may
    done = call(served.tcp, "POST", "/api/cancel", bob, json={"project": project})
    assert done["state"] == "cancelled"
    assert head(served.env)[0] == before[0] + 1


def test_an_edit_of_the_cluster_config_takes_effect_at_the_next_request(served: Served,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Taking alice out of her team (or an admin out of ``admins``) while the server runs
    takes her rights away at her next request, as a command run locally would; a file
    that no longer validates, or that group or others may write, is not taken (the config
    in force stays, and the log says why)."""
    _, alice = served.token("alice")
    _, bob = served.token("bob")
    path = served.env.cluster_path
    assert call(served.tcp, "GET", "/api/whoami", alice)["teams"] == ["interp"]
    assert call(served.tcp, "POST", "/api/submit", alice,
                json={"file": "pythia-ablation.toml", "text": SPEC})["decision"] == "granted"

    def write(text: str, mode: int = 0o644) -> None:
        path.write_text(text)
        path.chmod(mode)
        st = path.stat()  # a second write may land in the same mtime tick: the size differs anyway
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    without_alice = CLUSTER.replace('members = ["alice", "bob"]', 'members = ["bob"]').replace(
        'admins = ["root", "root-admin"]', 'admins = ["root"]')
    write(without_alice)
    who = call(served.tcp, "GET", "/api/whoami", alice)
    assert who["teams"] == [] and not who["admin"]
    before = head(served.env)
    other = SPEC.replace("pythia-ablation", "pythia-ablation-2")
    with pytest.raises(Denied, match="alice is not a member of team interp"):
        call(served.tcp, "POST", "/api/submit", alice, json={"file": "p2.toml", "text": other})
    assert head(served.env) == before
    assert call(served.tcp, "GET", "/api/whoami", bob)["teams"] == ["interp"]
    # a broken file, then one others may write (naming alice again): neither is taken
    with caplog.at_level("ERROR", logger="cellsched.server"):
        write("admins = [\n")
        assert call(served.tcp, "GET", "/api/whoami", alice)["teams"] == []
        write(CLUSTER, 0o666)
        assert call(served.tcp, "GET", "/api/whoami", alice)["teams"] == []
    said = [r.getMessage() for r in caplog.records if "not read again" in r.getMessage()]
    assert len(said) == 2 and "writable by group or others" in said[1], said
    path.chmod(0o644)  # what the log line asks for: the same file, now taken
    assert call(served.tcp, "GET", "/api/whoami", alice)["teams"] == ["interp"]


def test_a_code_upload_from_someone_who_may_not_upload_is_refused_before_its_body(served: Served) -> None:
    """A caller in no team (here alice, taken out of hers after her token was issued)
    uploading code gets 403 as soon as the request's head is in: the server does not wait
    for (nor hold) a body of up to 100 MiB it would refuse anyway."""
    _, alice = served.token("alice")
    path = served.env.cluster_path
    path.write_text(CLUSTER.replace('members = ["alice", "bob"]', 'members = ["bob"]'))
    host, port = served.tcp.removeprefix("http://").split(":")
    digest = "0" * 64
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall((f"PUT /api/code/{digest} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n"
                      "Content-Type: application/octet-stream\r\nContent-Length: 50000000\r\n\r\n").encode()
                     + b"x" * 1000)  # the head, and 1,000 of the 50,000,000 bytes it announces
        got = _response(conn)  # (times out, failing, if the server waits for the rest)
    assert got.startswith("HTTP/1.1 403") and "alice may not upload code" in got, got[:300]


def _response(conn: socket.socket) -> str:
    """One HTTP response, head and body (by its Content-Length), as text."""
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(body) >= length:
                break
    return data.decode("latin-1")


def test_a_spec_naming_a_team_the_config_does_not_have_is_refused_and_not_recorded(served: Served) -> None:
    """Anyone the server knows may send such a spec, as often as they like: the answer is
    the refusal (unknown_team), and the ledger's event chain does not grow."""
    _, carol = served.token("carol")
    before = head(served.env)
    ghost = SPEC.replace('team = "interp"', 'team = "ghostteam"')
    for _ in range(3):
        out = call(served.tcp, "POST", "/api/submit", carol, json={"file": "ghost.toml", "text": ghost})
        assert out["decision"] == "refused" and out["refusal"]["reason"] == "unknown_team", out
        assert "dry_run" not in out
    assert head(served.env) == before
