"""Tokens on a real ledger (SQLite and PostgreSQL): 256-bit secrets stored only as SHA-256
hashes, expiry, revocation, who may create/list/revoke, the ledger events; and the
``token`` commands on a local ledger (no server)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text
from sqlmodel import col, select
from typer.testing import CliRunner

from cellsched.cli.app import app
from cellsched.errors import BadInput, Denied, NotFound
from cellsched.ledger import events
from cellsched.ledger.tables import EventRow, TokenRow
from cellsched.server import tokens
from cellsched.server.auth import TOKEN_PREFIX, Identity

NOW = 1_800_000_000
ADMIN = Identity("root-admin", "socket")
ALICE = Identity("alice", "token", "t-alice")
BOB = Identity("bob", "socket")


def counts(env) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    with env.ledger.read() as s:
        return len(s.exec(select(TokenRow)).all()), len(s.exec(select(EventRow)).all())


def all_text(env) -> str:  # type: ignore[no-untyped-def]
    """Every value in every ledger table, as text (to look for a secret in)."""
    out = []
    with env.ledger.read() as s:
        conn = s.connection()
        for table in sa_inspect(conn).get_table_names():
            for row in conn.execute(text(f"SELECT * FROM {table}")):
                out.extend(str(v) for v in row)
    return "\n".join(out)


@pytest.mark.parametrize(("given", "seconds"), [
    ("90d", 90 * 86400), ("12h", 12 * 3600), ("30m", 1800), ("2w", 14 * 86400), ("3600s", 3600),
    (" 7D ", 7 * 86400), ("never", None), ("none", None), (None, None),
])
def test_expiry_durations(given: str | None, seconds: int | None) -> None:
    assert tokens.parse_expires(given) == seconds


@pytest.mark.parametrize("given", ["", "0d", "90", "d", "1y", "-1d", "1.5h", "9999999d", "90 days"])
def test_bad_expiry_durations(given: str) -> None:
    with pytest.raises(BadInput, match="expires"):
        tokens.parse_expires(given)


def test_a_token_is_256_random_bits_stored_only_as_its_hash(env) -> None:  # type: ignore[no-untyped-def]
    info, secret = tokens.create(env, ADMIN, "alice", "90d", "laptop", NOW)
    assert secret.startswith(TOKEN_PREFIX)
    assert len(base64.urlsafe_b64decode(secret.removeprefix(TOKEN_PREFIX) + "=")) == 32
    assert (info.user, info.created_by, info.expires_at, info.note) == ("alice", "root-admin", NOW + 90 * 86400, "laptop")
    stored = all_text(env)
    assert secret not in stored and secret.removeprefix(TOKEN_PREFIX) not in stored
    assert tokens.lookup(env, secret, NOW) == (info.id, "alice")
    other, _ = tokens.create(env, ADMIN, "alice", "90d", "", NOW)
    assert other.id != info.id


def test_expired_and_revoked_tokens_are_not_found(env) -> None:  # type: ignore[no-untyped-def]
    info, secret = tokens.create(env, ADMIN, "alice", "1h", "", NOW)
    assert tokens.lookup(env, secret, NOW + 3599) == (info.id, "alice")
    assert tokens.lookup(env, secret, NOW + 3600) is None
    forever, secret2 = tokens.create(env, ADMIN, "bob", "never", "", NOW)
    assert tokens.lookup(env, secret2, NOW + 10 * 365 * 86400) == (forever.id, "bob")
    assert tokens.revoke(env, BOB, forever.id, NOW + 5)[1] is True
    assert tokens.lookup(env, secret2, NOW + 6) is None
    assert tokens.lookup(env, secret2 + "x", NOW) is None
    assert tokens.lookup(env, "", NOW) is None


CREATE_REFUSED = [  # (caller, user, expires, note, error)
    (Identity("alice", "socket"), "alice", "90d", "", Denied),      # not an admin
    (Identity("root-admin", "token", "t1"), "alice", "90d", "", Denied),  # a token does not mint tokens
    (ADMIN, "mallory", "90d", "", BadInput),                          # nobody the cluster knows
    (ADMIN, "alice bob", "90d", "", BadInput),
    (ADMIN, "", "90d", "", BadInput),
    (ADMIN, "alice", "forever", "", BadInput),
    (ADMIN, "alice", "90d", "two\nlines", BadInput),
    (ADMIN, "alice", "90d", "x" * 201, BadInput),
    (ADMIN, "alice", "90d", "nul\x00", BadInput),  # PostgreSQL would refuse it: a 500, not a 400
]


def test_who_may_create_which_token(env) -> None:  # type: ignore[no-untyped-def]
    before = counts(env)
    for caller, user, expires, note, error in CREATE_REFUSED:
        with pytest.raises(error):
            tokens.create(env, caller, user, expires, note, NOW)
    assert counts(env) == before
    for caller in (ADMIN, Identity("root-admin", "local")):
        assert tokens.create(env, caller, "carol", "1h", "", NOW)[0].user == "carol"


def test_admins_list_all_tokens_users_their_own(env) -> None:  # type: ignore[no-untyped-def]
    a, _ = tokens.create(env, ADMIN, "alice", "90d", "a", NOW)
    b, _ = tokens.create(env, ADMIN, "bob", "90d", "b", NOW + 1)
    r, _ = tokens.create(env, Identity("root-admin", "local"), "root-admin", "12h", "", NOW + 2)
    assert [t.id for t in tokens.listing(env, ADMIN)] == [a.id, b.id, r.id]
    assert [t.id for t in tokens.listing(env, ALICE)] == [a.id]
    assert [t.id for t in tokens.listing(env, Identity("carol", "socket"))] == []
    j = tokens.listing(env, ALICE)[0].to_json(NOW)
    assert set(j) == {"id", "user", "state", "created_by", "created_at", "expires_at", "revoked_at", "revoked_by", "note"}
    assert j["state"] == "active"
    assert tokens.listing(env, ADMIN)[2].state(NOW + 2 + 12 * 3600) == "expired"


def test_revocation_rules(env) -> None:  # type: ignore[no-untyped-def]
    a, _ = tokens.create(env, ADMIN, "alice", "90d", "", NOW)
    b, _ = tokens.create(env, ADMIN, "bob", "90d", "", NOW)
    before = counts(env)
    with pytest.raises(Denied):
        tokens.revoke(env, ALICE, b.id, NOW)
    for unknown in ("t000000000000", "\x00", "t/../x", "x" * 65):
        with pytest.raises(NotFound):
            tokens.revoke(env, ADMIN, unknown, NOW)
    assert counts(env) == before
    info, fresh = tokens.revoke(env, ALICE, a.id, NOW + 10)
    assert fresh and (info.revoked_at, info.revoked_by, info.state(NOW + 10)) == (NOW + 10, "alice", "revoked")
    info, fresh = tokens.revoke(env, ADMIN, a.id, NOW + 20)
    assert not fresh and info.revoked_at == NOW + 10
    assert tokens.revoke(env, ADMIN, b.id, NOW + 30)[1]


def test_token_changes_are_events_in_the_chain_without_secrets(env) -> None:  # type: ignore[no-untyped-def]
    a, secret = tokens.create(env, ADMIN, "alice", "90d", "laptop", NOW)
    tokens.revoke(env, ALICE, a.id, NOW + 5)
    tokens.revoke(env, ALICE, a.id, NOW + 6)  # already revoked: no second event
    with env.ledger.read() as s:
        evs = s.exec(select(EventRow).order_by(col(EventRow.seq))).all()
        assert events.audit(s).ok
    assert [(e.kind, e.subject, e.actor, e.at) for e in evs] == [
        ("token_created", a.id, "root-admin", NOW), ("token_revoked", a.id, "alice", NOW + 5)]
    assert '"user":"alice"' in evs[0].data and '"via":"socket"' in evs[0].data
    with env.ledger.read() as s:
        digest = s.get(TokenRow, a.id).sha256
    assert all(secret not in e.data and digest not in e.data for e in evs)


# -- the commands, on a local ledger ------------------------------------------------------


@pytest.fixture
def cli(cluster_file: Path, ledger_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("CELLSCHED_SERVER", "local")

    def run(*args: str, user: str = "root-admin"):  # type: ignore[no-untyped-def]
        return CliRunner().invoke(app, ["--cluster", str(cluster_file), "--db", ledger_url, *args],
                                  env={"CELLSCHED_USER": user})

    return run


def test_token_commands_on_the_local_ledger(cli, env) -> None:  # type: ignore[no-untyped-def]
    r = cli("token", "create", "--user", "alice", "--expires", "12h", "--note", "laptop")
    assert r.exit_code == 0, r.output
    secret = r.stdout.strip()
    assert secret.startswith(TOKEN_PREFIX) and "\n" not in secret  # stdout: the token alone
    assert "shown this once" in r.stderr
    tid, user = tokens.lookup(env, secret, tokens_now())
    assert user == "alice"
    r = cli("token", "list", "--json")
    assert r.exit_code == 0, r.output
    assert secret not in r.stdout
    [item] = json.loads(r.stdout)
    assert (item["id"], item["user"], item["state"], item["note"]) == (tid, "alice", "active", "laptop")
    assert item["expires_at_utc"].endswith("Z")
    r = cli("token", "list", "--json", user="bob")
    assert json.loads(r.stdout) == []
    r = cli("token", "revoke", tid, user="bob")
    assert r.exit_code == 1 and "may not revoke" in r.stderr
    r = cli("token", "revoke", tid, user="alice")
    assert r.exit_code == 0 and r.stdout.startswith("revoked")
    assert tokens.lookup(env, secret, tokens_now()) is None


def tokens_now() -> int:
    from cellsched.runtime.clock import now_s

    return now_s()


BAD_COMMANDS = [  # (args, user, exit code, what stderr says)
    (["token", "create", "--user", "alice", "--expires", "5x"], "root-admin", 2, "expires"),
    (["token", "create", "--user", "mallory"], "root-admin", 2, "mallory"),
    (["token", "create", "--user", "alice"], "alice", 1, "only admins"),
    (["token", "revoke", "t0000"], "root-admin", 2, "no token"),
    (["token", "revoke", "cst_abcdefghijklmnopqrstuvwxyz"], "root-admin", 2, "not the token"),
]


def test_bad_token_commands_are_one_line_and_write_nothing(cli, env) -> None:  # type: ignore[no-untyped-def]
    before = counts(env)
    for args, user, code, says in BAD_COMMANDS:
        r = cli(*args, user=user)
        assert r.exit_code == code, (args, r.output)
        assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr and "Traceback" not in r.output, args
        assert r.stdout == ""
    assert counts(env) == before
