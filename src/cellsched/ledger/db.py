"""Engine from a URL, schema creation, and write transactions that serialise writers.

Every write goes through :func:`Ledger.write`, which holds the one ledger-wide write lock for
the whole transaction: ``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on
PostgreSQL. Admission reads the snapshot and writes its grant under that lock, so concurrent
submits from any number of processes can never both take the same GPUs.

A URL that cannot serve as a ledger (no such directory, not a database, no server, no such
database or user, a wrong password, a host that does not answer within
:data:`CONNECT_TIMEOUT_S`) is one :class:`BadInput` line naming ``--db`` and the URL without
its password, raised by :func:`make_engine` or at the first use (:meth:`Ledger.ensure_schema`,
which :meth:`Ledger.read` and :meth:`Ledger.write` call first). Once the ledger has been
opened, a lost connection stays the driver's ``OperationalError``: the daemon and its
standby retry those.

A daemon write carries its lease epoch (``Ledger.write(epoch=...)``): under the lock, the
lease row must still have that epoch, not be released and not be expired by the database's
clock, else :class:`Deposed` is raised and nothing is written (``ledger/lease.py``).
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from sqlalchemy import event, exc
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, SQLModel, create_engine, select

from cellsched.errors import BadInput, Failed, one_line
from cellsched.ledger.tables import MIGRATIONS, SCHEMA_VERSION, SchemaInfo

ADVISORY_LOCK_KEY = 0x63656C6C  # "cell"
# How long opening a PostgreSQL connection may take before the host counts as unreachable
# (libpq's connect_timeout, per address tried); a URL's own ?connect_timeout= wins.
CONNECT_TIMEOUT_S = 5
SQLITE_BUSY_S = 60


class Deposed(Failed):
    """A daemon write (or lease renewal) whose lease epoch is no longer the ledger's current,
    live lease: another daemon took over, or the lease expired by the database's clock. The
    daemon that gets it must stop acting at once (exit 1)."""


def db_now_sql(is_sqlite: bool) -> str:
    """SQL for the database's clock as epoch seconds (float). SQLite's is the host's own
    clock (its standbys can only be on the same host); PostgreSQL's is the server's."""
    if is_sqlite:
        return "((julianday('now') - 2440587.5) * 86400.0)"
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS double precision)"


def default_url(cluster_path: Path) -> str:
    """The ledger URL: ``CELLSCHED_DB`` if set, else a SQLite file beside the cluster config."""
    env = os.environ.get("CELLSCHED_DB")
    if env:
        return env
    return f"sqlite:///{(cluster_path.resolve().parent / 'cellsched.db').as_posix()}"


def make_engine(url: str) -> Engine:
    """An engine for a ledger URL; a URL that is not one is :class:`BadInput` (nothing is
    opened here: a database that cannot be reached is found at the first use)."""
    shown = redacted(url)
    if not url.startswith(("sqlite:", "sqlite+", "postgresql:", "postgresql+", "postgres:")):
        scheme = url.split(":", 1)[0] if ":" in url else url
        raise BadInput(f"--db {shown}: unsupported database URL {one_line(scheme)!r} "
                       "(use sqlite:///path or postgresql+psycopg://user@host/db)")
    if url.startswith("postgres:"):
        raise BadInput(f"--db {shown}: write postgresql+psycopg://, not postgres://")
    head, password, _ = _split_password(url)
    if password is not None and _at_signs(url) > 1:
        # Which '@' ends the password is anyone's guess: hide up to the last one.
        shown = redacted(head + "***" + url[url.rindex("@"):])
        raise BadInput(f"--db {shown}: more than one '@': write an '@' in the password (or anywhere "
                       "but before the host) as %40")
    try:
        return _make_engine(url)
    except exc.NoSuchModuleError:
        driver = url.split(":", 1)[0]
        raise BadInput(f"--db {shown}: no database driver {one_line(driver)!r} "
                       "(use sqlite:///path or postgresql+psycopg://user@host/db)") from None
    except (exc.ArgumentError, ValueError, TypeError, ImportError) as e:
        reason = _first_line(e)
        if m := re.fullmatch(r"invalid literal for int\(\) with base 10: '(.*)'", reason):
            reason = f"the port {m.group(1)!r} is not a number"
        raise BadInput(f"--db {shown}: {_scrub(reason, url)}") from None


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_S, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy's "begin" hook issue BEGIN itself (pysqlite would defer it).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_S * 1000}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

        return engine
    parsed = make_url(url)
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_S}
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


# -- what is wrong with a URL, in plain words -------------------------------------------------


def _at_signs(url: str) -> int:
    """How many '@' ``url`` has after its scheme."""
    return url.split("://", 1)[-1].count("@")


def _split_password(url: str) -> tuple[str, str | None, str]:
    """``url`` as (up to ``user:``, the password, from ``@`` on), read as SQLAlchemy does
    (the password runs from the first ':' after the user to the first '@'); the password
    is None when there is none. A SQLite path (``sqlite:///...``) has none."""
    if "://" not in url:
        return url, None, ""
    scheme, rest = url.split("://", 1)
    at = rest.find("@")
    if at < 0 or (scheme.startswith("sqlite") and rest.startswith("/")):
        return url, None, ""
    user, colon, password = rest[:at].partition(":")
    if not colon or "/" in user:
        return url, None, ""
    return f"{scheme}://{user}:", password, rest[at:]


def _password(url: str) -> str | None:
    return _split_password(url)[1]


def redacted(url: str) -> str:
    """``url`` as it may be shown: its password (in the user part or as ``password=`` in the
    query) replaced by ``***``, on one line."""
    head, password, tail = _split_password(url)
    shown = url if password is None else f"{head}***{tail}"
    shown = re.sub(r"(?i)([?&](?:ssl)?password=)[^&]*", r"\1***", shown)
    return one_line(shown)


def _scrub(text: str, url: str) -> str:
    """``text`` (a driver's message) without the URL's password, should it quote it."""
    secrets = {_password(url) or ""}
    for m in re.finditer(r"(?i)[?&](?:ssl)?password=([^&]*)", url):
        secrets.add(m.group(1))
    for secret in list(secrets):
        secrets.add(unquote(secret))
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 3:  # shorter ones would blot out ordinary words; no driver quotes them
            text = text.replace(secret, "***")
    return one_line(text)


def _first_line(e: BaseException) -> str:
    text = str(getattr(e, "orig", None) or e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _sqlite_path(url: str) -> Path | None:
    try:
        db = make_url(url).database
    except Exception:
        return None
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def _unopenable(path: Path) -> str:
    """Why SQLite could not open ``path``, as far as the file system tells."""
    where = one_line(str(path))
    try:
        parent = path.parent
        if not parent.exists():
            return f"no such directory: {one_line(str(parent))}"
        if not parent.is_dir():
            return f"{one_line(str(parent))} is not a directory"
        if path.is_dir():
            return f"{where} is a directory, not a database file"
        if not os.access(path if path.exists() else parent, os.R_OK | os.W_OK):
            return f"cannot open {where}: permission denied"
    except OSError as e:  # e.g. a name too long for the file system
        return f"cannot open {where}: {e.strerror}"
    return f"cannot open {where}"


def _sqlite_reason(text: str, url: str) -> str:
    low = text.lower()
    path = _sqlite_path(url)
    where = one_line(str(path)) if path is not None else "the database"
    if path is not None and ("unable to open database file" in low or "file name too long" in low):
        return _unopenable(path)
    if "not a database" in low:
        return f"{where} is not a SQLite database"
    if "readonly" in low or "read-only" in low:
        return f"{where} is read-only"
    if "locked" in low:
        return f"{where} is locked by another process (waited {SQLITE_BUSY_S} s)"
    if "null" in low and "byte" in low:
        return "the path has a NUL character"
    if "disk i/o error" in low:
        return f"disk I/O error on {where}"
    return one_line(text)


def _server(url: str) -> str:
    try:
        u = make_url(url)
    except Exception:
        return "the server"
    host = u.query.get("host") or u.host or "localhost"
    host = host if isinstance(host, str) else ",".join(host)
    return one_line(f"{host}:{u.port or 5432}") if not host.startswith("/") else one_line(host)


_QUOTED = r'"([^"]*)"'


def _postgres_reason(text: str, url: str) -> str:
    low = text.lower()
    server = _server(url)
    if m := re.search(r'database ' + _QUOTED + ' does not exist', text):
        return f'no database "{m.group(1)}" on {server}'
    if m := re.search(r'role ' + _QUOTED + ' does not exist', text):
        return f'no user "{m.group(1)}" on {server}'
    if m := re.search(r'password authentication failed for user ' + _QUOTED, text):
        return f'wrong password for user "{m.group(1)}" on {server}'
    if "no password supplied" in low or "fe_sendauth" in low:
        return f"{server} asks for a password and the URL has none"
    if m := re.search(r'no pg_hba.conf entry for host ' + _QUOTED + r', user ' + _QUOTED, text):
        return f'{server} does not let user "{m.group(2)}" in from {m.group(1)} (pg_hba.conf)'
    if "connection refused" in low:
        return f"nothing answers on {server} (connection refused: is PostgreSQL running there?)"
    if "timeout expired" in low or "timed out" in low:
        return f"no answer from {server} within the connect timeout ({_timeout(url)} s)"
    if m := re.search(r"failed to resolve host '([^']*)'|could not translate host name " + _QUOTED, text):
        return f"unknown host {(m.group(1) or m.group(2))!r}"
    if "network is unreachable" in low or "no route to host" in low:
        return f"cannot reach {server} (no route to it)"
    if m := re.search(r"invalid port number: " + _QUOTED, text):
        return f'the port "{m.group(1)}" is not a port number'
    if "no such file or directory" in low and "socket" in low:
        return f"no PostgreSQL socket at {server}"
    if "invalid response" in low or "closed the connection unexpectedly" in low or "unexpected response" in low:
        return f"{server} answered, but not as PostgreSQL does ({_driver_words(text)})"
    if "permission denied" in low:
        return f"the user may not create the ledger's tables: {_driver_words(text)}"
    if "no schema has been selected" in low:
        return "no schema to create the ledger's tables in (the URL's search_path names none this user may use)"
    if "read-only transaction" in low:
        return f"{server} is read-only (a standby?)"
    return _driver_words(text)


def _timeout(url: str) -> str:
    try:
        return str(make_url(url).query.get("connect_timeout") or CONNECT_TIMEOUT_S)
    except Exception:
        return str(CONNECT_TIMEOUT_S)


def _driver_words(text: str) -> str:
    """A driver's message's first line without its boilerplate prefixes."""
    text = (text.strip().splitlines() or [""])[0]
    text = re.sub(r'^(connection failed: )?(connection to server (at|on socket) "[^"]*"( \([^)]*\))?,'
                  r'( port \d+)? failed: )?', "", text.strip())
    return text.removeprefix("FATAL:").strip() or "cannot connect"


def unusable(e: BaseException, url: str) -> BadInput | None:
    """The :class:`BadInput` for a failure to open ``url`` as a ledger, or None when ``e``
    says nothing about the URL (a bug, which keeps its traceback)."""
    orig = getattr(e, "orig", None) or e
    sqlstate = getattr(orig, "sqlstate", None) or ""
    if isinstance(e, exc.DBAPIError) or isinstance(e, (sqlite3.Error, ValueError)) or _is_psycopg(orig):
        if isinstance(e, (exc.IntegrityError, exc.DataError)) or (
            isinstance(e, (exc.ProgrammingError, exc.InternalError))
            # permission denied; no schema to create in; a read-only transaction (a standby)
            and sqlstate not in ("42501", "3F000", "25006")
            and not isinstance(orig, sqlite3.Error)
            and not _bad_conninfo(orig)
        ):
            return None
    elif not isinstance(e, (exc.ArgumentError, exc.NoSuchModuleError)):
        return None
    text = str(orig).strip() or type(orig).__name__
    reason = _sqlite_reason(text, url) if url.startswith("sqlite") else _postgres_reason(text, url)
    return BadInput(f"--db {redacted(url)}: {_scrub(reason, url)}")


# libpq's words for a URL's query parameters it cannot take (``?connect_timeout=abc``,
# ``?foo=bar``): psycopg raises them as a ProgrammingError before connecting.
_CONNINFO = re.compile(r"^(bad value for \S+:|invalid connection option |missing \"=\" after |"
                       r"invalid dsn|unterminated quoted string)")


def _bad_conninfo(e: BaseException) -> bool:
    return _is_psycopg(e) and not getattr(e, "sqlstate", None) and bool(_CONNINFO.match(str(e).strip()))


def _is_psycopg(e: BaseException) -> bool:
    return type(e).__module__.split(".")[0] == "psycopg"


class Ledger:
    """The single source of truth; open it with a URL, write through :meth:`write`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        self._ready = False

    def ensure_schema(self) -> None:
        """Create tables on first use and check the schema version. A URL that cannot be
        opened as a ledger is one :class:`BadInput` line naming ``--db``."""
        if self._ready:
            return
        try:
            self._ensure_schema()
        except Exception as e:
            bad = unusable(e, self.url)
            if bad is None:
                raise
            self.engine.dispose()
            raise bad from None
        self._ready = True

    def _ensure_schema(self) -> None:
        from cellsched.ledger import tables  # noqa: F401  (registers the tables)

        with self._connection(write=True) as conn:
            if not self.is_sqlite:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
            SQLModel.metadata.create_all(conn)
            with Session(bind=conn) as s:
                info = s.get(SchemaInfo, 1)
                if info is None:
                    s.add(SchemaInfo(id=1, version=SCHEMA_VERSION))
                    s.flush()
                elif info.version > SCHEMA_VERSION:
                    raise BadInput(
                        f"ledger schema version {info.version} is newer than this cellsched "
                        f"understands ({SCHEMA_VERSION}); upgrade cellsched"
                    )
                elif info.version < SCHEMA_VERSION:
                    # Under the same lock as everything else: two processes never migrate twice.
                    for version in range(info.version + 1, SCHEMA_VERSION + 1):
                        for stmt in MIGRATIONS.get(version, ()):
                            if callable(stmt):
                                stmt(conn)
                            else:
                                conn.exec_driver_sql(stmt)
                    info.version = SCHEMA_VERSION
                    s.add(info)
                    s.flush()

    @contextlib.contextmanager
    def _connection(self, write: bool) -> Iterator:  # type: ignore[type-arg]
        with self.engine.connect() as conn:
            conn.info["write"] = write
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def write(self, epoch: int | None = None) -> Iterator[Session]:
        """A session holding the ledger-wide write lock; commits on success, else rolls back.

        With ``epoch`` (a daemon's lease epoch), raises :class:`Deposed` before anything is
        written unless that epoch is the ledger's current, live lease."""
        self.ensure_schema()
        with self._connection(write=True) as conn:
            if not self.is_sqlite:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY})")
            if epoch is not None:
                self._fence(conn, epoch)
            with Session(bind=conn, expire_on_commit=False) as s:
                yield s
                s.flush()

    def _fence(self, conn, epoch: int) -> None:  # type: ignore[no-untyped-def]
        row = conn.exec_driver_sql(
            f"SELECT epoch, released, expires_at, {db_now_sql(self.is_sqlite)} FROM cs_lease WHERE id = 1"
        ).first()
        if row is None:
            raise Deposed(f"lease epoch {epoch}: this ledger has no daemon lease")
        current, released, expires_at, now = row
        if current != epoch:
            raise Deposed(f"lease epoch {epoch} was taken over (the ledger is at epoch {current})")
        if released:
            raise Deposed(f"lease epoch {epoch} was released")
        if expires_at <= now:
            raise Deposed(f"lease epoch {epoch} expired {now - expires_at:.1f} s ago (database clock)")

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session on a consistent snapshot."""
        self.ensure_schema()
        with self._connection(write=False) as conn:
            with Session(bind=conn, expire_on_commit=False) as s:
                yield s

    def dispose(self) -> None:
        self.engine.dispose()


def schema_version(session: Session) -> int:
    info = session.exec(select(SchemaInfo)).first()
    return 0 if info is None else info.version
