"""A ledger URL that cannot be a ledger is one BadInput line naming ``--db`` and the URL
without its password, at the first use, and nothing is created: real SQLite files and
directories, the real PostgreSQL server, and real sockets that refuse or never answer."""

from __future__ import annotations

import contextlib
import os
import socket
import string
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from cellsched.errors import BadInput
from cellsched.ledger.db import CONNECT_TIMEOUT_S, Ledger, redacted

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def open_error(url: str) -> str:
    """The one line opening ``url`` as a ledger gives; fails on anything else."""
    with pytest.raises(BadInput) as e:
        led = Ledger(url)
        try:
            led.ensure_schema()
        finally:
            led.dispose()
    msg = e.value.message
    assert e.value.exit_code == 2
    assert msg.startswith("--db ") and msg == " ".join(msg.split()), repr(msg)
    assert "Traceback" not in msg and "sqlalche.me" not in msg
    return msg


def free_port() -> int:
    """A port nothing listens on (bound and closed at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never says a word:
    a host that hangs, as a firewall that drops packets would."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# -- SQLite -------------------------------------------------------------------------------


def test_sqlite_problems_are_one_line_and_create_nothing(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_text("a text file, not a database\n" * 20)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    cases = {
        "nodir/sub/ledger.db": "no such directory: {root}/nodir/sub",
        "afile/ledger.db": "{root}/afile is not a directory",
        "notes.db": "{root}/notes.db is not a SQLite database",
        "adir": "{root}/adir is a directory, not a database file",
        "x" * 300 + ".db": "cannot open {root}/" + "x" * 300 + ".db: File name too long",
    }
    before = listing(tmp_path)
    for name, words in cases.items():
        url = f"sqlite:///{tmp_path / name}"
        assert open_error(url) == f"--db {url}: {words.format(root=tmp_path)}"
    assert listing(tmp_path) == before
    assert (tmp_path / "notes.db").read_text().startswith("a text file")


def test_sqlite_read_only_and_nul(tmp_path: Path) -> None:
    db = tmp_path / "ro.db"
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as c:
        c.execute("CREATE TABLE other (a)")
        c.commit()
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    assert open_error(url) == f"--db {url}: the database is read-only"
    assert open_error(f"sqlite:///{tmp_path}/a\x00b.db") == (
        f"--db sqlite:///{tmp_path}/a\\x00b.db: the path has a NUL character")


def test_an_empty_file_is_an_empty_ledger(tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()  # SQLite's own view: an empty file is an empty database
    led = Ledger(f"sqlite:///{tmp_path / 'empty.db'}")
    led.ensure_schema()
    led.dispose()


# -- URLs that are not ledger URLs ----------------------------------------------------------

NOT_URLS = [
    ("", "--db : unsupported database URL '' (use sqlite:///path or postgresql+psycopg://user@host/db)"),
    ("ledger.db", "--db ledger.db: unsupported database URL 'ledger.db'"),
    ("mysql://u:sekret@h/db", "--db mysql://u:***@h/db: unsupported database URL 'mysql'"),
    ("postgres://u:sekret@h/db", "--db postgres://u:***@h/db: write postgresql+psycopg://, not postgres://"),
    ("postgresql+nope://u@h/db", "--db postgresql+nope://u@h/db: no database driver 'postgresql+nope'"),
    ("sqlite+nope:///x.db", "--db sqlite+nope:///x.db: no database driver 'sqlite+nope'"),
    ("postgresql+psycopg://u:se@cret@h/db", "--db postgresql+psycopg://u:***@h/db: more than one '@'"),
    ("postgresql+psycopg://u:sekret@h/db?application_name=a@b", "--db postgresql+psycopg://u:***@b: more than one '@'"),
    ("postgresql+psycopg://u@h:port/db", "--db postgresql+psycopg://u@h:port/db: the port 'port' is not a number"),
    # query parameters libpq cannot take (docs/cli.md suggests ?connect_timeout=N)
    ("postgresql+psycopg://u:sekret@h/db?connect_timeout=abc",
     "--db postgresql+psycopg://u:***@h/db?connect_timeout=abc: bad value for connect_timeout: 'abc'"),
    ("postgresql+psycopg://u:sekret@127.0.0.1/db?foo=bar",
     "--db postgresql+psycopg://u:***@127.0.0.1/db?foo=bar: invalid connection option \"foo\""),
]


@pytest.mark.parametrize(("url", "words"), NOT_URLS, ids=[u or "empty" for u, _ in NOT_URLS])
def test_urls_that_are_no_ledger_urls(url: str, words: str) -> None:
    msg = open_error(url)
    assert msg.startswith(words), msg
    assert "sekret" not in msg and "cret" not in msg


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture
def pg(pg_available: bool) -> str:
    if not pg_available:
        pytest.skip("PostgreSQL is not reachable")
    return PG


def test_postgres_problems_are_one_line(pg: str) -> None:
    port = free_port()
    cases = {
        f"postgresql+psycopg://postgres:sekret@127.0.0.1:{port}/test":
            f"nothing answers on 127.0.0.1:{port} (connection refused: is PostgreSQL running there?)",
        "postgresql+psycopg://postgres@127.0.0.1:5432/no_such_ledger_db":
            'no database "no_such_ledger_db" on 127.0.0.1:5432',
        "postgresql+psycopg://nobody_here:sekret@127.0.0.1:5432/test": 'no user "nobody_here" on 127.0.0.1:5432',
        "postgresql+psycopg://postgres:sekret@no-such-host.invalid/test": "unknown host 'no-such-host.invalid'",
        "postgresql+psycopg://postgres@127.0.0.1:99999/test": 'the port "99999" is not a port number',
    }
    for url, words in cases.items():
        assert open_error(url) == f"--db {redacted(url)}: {words}"


def test_a_host_that_never_answers_is_given_up_on_within_the_timeout(pg: str) -> None:
    with silent_server() as port:
        t0 = time.monotonic()
        msg = open_error(f"postgresql+psycopg://u:sekret@127.0.0.1:{port}/db?connect_timeout=2")
        assert time.monotonic() - t0 < 4
        assert msg == (f"--db postgresql+psycopg://u:***@127.0.0.1:{port}/db?connect_timeout=2: "
                       f"no answer from 127.0.0.1:{port} within the connect timeout (2 s)")
        # and without a connect_timeout in the URL, the default bound holds
        t0 = time.monotonic()
        msg = open_error(f"postgresql+psycopg://u@127.0.0.1:{port}/db")
        assert time.monotonic() - t0 < CONNECT_TIMEOUT_S + 2
        assert msg.endswith(f"within the connect timeout ({CONNECT_TIMEOUT_S} s)")


def test_a_user_without_rights_to_create_the_tables(pg: str) -> None:
    admin = create_engine(pg, isolation_level="AUTOCOMMIT")
    role, schema = f"cs_noperm_{uuid.uuid4().hex[:8]}", f"cs_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = f"postgresql+psycopg://{role}@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    try:
        assert open_error(url).endswith("no schema to create the ledger's tables in "
                                        "(the URL's search_path names none this user may use)")
        with admin.connect() as c:
            c.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        assert open_error(url).endswith(
            f"the user may not create the ledger's tables: permission denied for schema {schema}")
    finally:
        with admin.connect() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            c.exec_driver_sql(f"DROP OWNED BY {role}")
            c.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()


def test_the_password_is_never_shown() -> None:
    for url, shown in [
        ("postgresql+psycopg://u:p%40ss%3Aw0rd@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql+psycopg://u:pw@h/db?password=other&sslmode=require",
         "postgresql+psycopg://u:***@h/db?password=***&sslmode=require"),
        ("postgresql+psycopg://u@h/db?sslpassword=k3y", "postgresql+psycopg://u@h/db?sslpassword=***"),
        ("postgresql+psycopg://u@/db?host=/run/postgresql", "postgresql+psycopg://u@/db?host=/run/postgresql"),
        ("sqlite:////srv/a:b@c/ledger.db", "sqlite:////srv/a:b@c/ledger.db"),  # a path has no password
        ("sqlite+pysqlcipher://:k3y@/ledger.db", "sqlite+pysqlcipher://:***@/ledger.db"),  # a passphrase has
        ("postgresql+psycopg://u:x\ny@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql+psycopg://u:pa?ss/w@h/db", "postgresql+psycopg://u:***@h/db"),
        ("postgresql+psycopg://h/db?application_name=a@b", "postgresql+psycopg://h/db?application_name=a@b"),
    ]:
        assert redacted(url) == shown


# -- generative: any bad URL ----------------------------------------------------------------

NAME = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=12)
SECRET = st.text(min_size=0, max_size=12).map(lambda s: "Zk9" + s)  # "Zk9" never occurs by chance
SCHEMES = st.sampled_from(["mysql", "oracle", "postgres", "postgresql+nope", "sqlite+nope", "http", "file",
                           "sqlite3", "pg", "mssql+pyodbc"]) | st.text(max_size=10)


@st.composite
def bad_pg_url(draw: st.DrawFn, closed_port: int) -> tuple[str, str]:
    """A PostgreSQL URL that cannot open a ledger, and its password."""
    password = draw(SECRET)
    encoded = draw(st.sampled_from([quote(password, safe=""), password.replace("@", "%40")]))
    user, db = draw(NAME), draw(NAME)
    host, port = draw(st.sampled_from([
        ("127.0.0.1", closed_port),                 # refused
        ("127.0.0.1", 5432),                        # the real server: no such db or user (below)
        ("localhost", closed_port),
        (f"{draw(NAME).strip('.-') or 'x'}.invalid", 5432),  # never resolves (RFC 2606)
        ("127.0.0.1", draw(st.integers(65536, 10**6))),      # not a port
    ]))
    if port == 5432 and host == "127.0.0.1":
        user, db = draw(st.sampled_from([("postgres", f"nodb_{db}"), (f"nouser_{user}", "test")]))
    query = draw(st.sampled_from(["", "?connect_timeout=2", f"?password={quote(password, safe='')}"]))
    return f"postgresql+psycopg://{quote(user)}:{encoded}@{host}:{port}/{quote(db)}{query}", password


def pg_or_skip() -> bool:
    try:
        eng = create_engine(PG)
        with eng.connect():
            pass
        eng.dispose()
        return True
    except Exception:
        if os.environ.get("CI"):
            raise
        return False


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLOSED = free_port()


@FUZZ
@given(st.data())
def test_any_bad_postgres_url_is_one_line_without_its_password(data: st.DataObject) -> None:
    if not pg_or_skip():
        pytest.skip("PostgreSQL is not reachable")
    url, password = data.draw(bad_pg_url(CLOSED))
    msg = open_error(url)
    assert "Zk9" not in msg, msg


@FUZZ
@given(scheme=SCHEMES, rest=st.text(max_size=30), password=SECRET)
def test_any_url_of_another_kind_is_one_line(scheme: str, rest: str, password: str) -> None:
    if scheme.startswith(("sqlite", "postgresql")) and "+" not in scheme:
        scheme = "x" + scheme
    msg = open_error(f"{scheme}://u:{quote(password, safe='')}@{rest}")
    assert "Zk9" not in msg, msg


@st.composite
def bad_sqlite_target(draw: st.DrawFn, root: Path) -> Path:
    """Somewhere under ``root`` SQLite cannot make a ledger: a missing directory, a
    directory, a file under a file, or a file that is not a database."""
    kind = draw(st.sampled_from(["missing dir", "directory", "under a file", "not a database"]))
    name = draw(NAME.filter(lambda n: n not in (".", "..")))
    if kind == "missing dir":
        return root / f"missing-{name}" / draw(NAME.filter(lambda n: n not in (".", ".."))) / "ledger.db"
    if kind == "directory":
        (root / f"dir-{name}").mkdir(exist_ok=True)
        return root / f"dir-{name}"
    if kind == "under a file":
        (root / f"file-{name}").write_text("x")
        return root / f"file-{name}" / "ledger.db"
    content = draw(st.binary(min_size=1, max_size=2000).filter(lambda b: not b.startswith(b"SQLite format 3")))
    path = root / f"junk-{name}.db"
    path.write_bytes(content.ljust(512, b"\xff"))  # long enough that SQLite reads a header
    return path


@FUZZ
@given(st.data())
def test_any_bad_sqlite_place_is_one_line_and_creates_nothing(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        path = data.draw(bad_sqlite_target(root))
        before = listing(root)
        content = path.read_bytes() if path.is_file() else None
        msg = open_error(f"sqlite:///{path}")
        assert listing(root) == before, msg
        if content is not None:
            assert path.read_bytes() == content


# -- the docs show the real lines -----------------------------------------------------------


def test_the_lines_in_cli_md_are_the_real_ones(tmp_path: Path, pg_available: bool) -> None:
    """The doc's lines, with this machine's paths and ports put in where it names others'."""
    import re as _re

    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    shown = _re.findall(r"^  cellsched: (--db .*)$", text, _re.M)
    assert len(shown) >= 7
    (tmp_path / "notes.txt").write_text("not a ledger\n" * 20)
    real = [
        open_error(f"sqlite:///{tmp_path}/nodir/cellsched.db").replace(str(tmp_path), "/srv/lab"),
        open_error(f"sqlite:///{tmp_path}/notes.txt").replace(str(tmp_path), "/srv/lab"),
        open_error("mysql://cellsched@db.lab/lab"),
    ]
    if pg_available:
        port = free_port()
        real += [
            open_error(f"postgresql+psycopg://cellsched:pw@127.0.0.1:{port}/lab")
            .replace(f"127.0.0.1:{port}", "db.lab").replace("db.lab (", "db.lab:5432 ("),
            open_error("postgresql+psycopg://postgres:pw@127.0.0.1:5432/labb")
            .replace("postgres:***@127.0.0.1:5432", "cellsched:***@db.lab").replace("127.0.0.1", "db.lab"),
            open_error("postgresql+psycopg://mallory:pw@127.0.0.1:5432/lab")
            .replace("127.0.0.1:5432/", "db.lab/").replace("127.0.0.1", "db.lab"),
        ]
        with silent_server() as port:
            real.append(open_error(f"postgresql+psycopg://cellsched@127.0.0.1:{port}/lab")
                        .replace(f"127.0.0.1:{port}/", "10.0.0.9/").replace(f"127.0.0.1:{port}", "10.0.0.9:5432"))
    for line in real:
        assert line in shown, line
    assert f"gets {CONNECT_TIMEOUT_S} s to answer" in text
