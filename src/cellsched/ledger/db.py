"""Engine from a URL, schema creation, and write transactions that serialise writers.

Every write goes through :func:`Ledger.write`, which holds the one ledger-wide write lock for
the whole transaction: ``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on
PostgreSQL. Admission reads the snapshot and writes its grant under that lock, so concurrent
submits from any number of processes can never both take the same GPUs.

A daemon write carries its lease epoch (``Ledger.write(epoch=...)``): under the lock, the
lease row must still have that epoch, not be released and not be expired by the database's
clock, else :class:`Deposed` is raised and nothing is written (``ledger/lease.py``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine, select

from cellsched.errors import BadInput, Failed
from cellsched.ledger.tables import MIGRATIONS, SCHEMA_VERSION, SchemaInfo

ADVISORY_LOCK_KEY = 0x63656C6C  # "cell"


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
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn, _rec):  # type: ignore[no-untyped-def]
            # Let SQLAlchemy's "begin" hook issue BEGIN itself (pysqlite would defer it).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn):  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

        return engine
    if url.startswith("postgres"):
        return create_engine(url, pool_pre_ping=True)
    raise BadInput(f"--db: unsupported database URL {url.split(':', 1)[0]!r} (use sqlite:/// or postgresql+psycopg://)")


class Ledger:
    """The single source of truth; open it with a URL, write through :meth:`write`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        self._ready = False

    def ensure_schema(self) -> None:
        """Create tables on first use and check the schema version."""
        if self._ready:
            return
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
                            conn.exec_driver_sql(stmt)
                    info.version = SCHEMA_VERSION
                    s.add(info)
                    s.flush()
        self._ready = True

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
