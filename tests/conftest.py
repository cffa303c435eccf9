"""Shared fixtures: ledger URLs for SQLite and PostgreSQL, each test in its own database.

PostgreSQL: ``CELLSCHED_TEST_PG`` (default the machine's server, database ``test``); each
test gets a fresh schema (via ``search_path`` in the URL, so other processes see it too),
dropped afterwards. If the server is unreachable the PostgreSQL variants are skipped
locally, but fail under CI (``CI=true``) so a broken setup cannot pass silently.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

PG_URL = os.environ.get("CELLSCHED_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def _pg_engine():  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture(scope="session")
def pg_available() -> bool:
    try:
        eng = _pg_engine()
        with eng.connect() as c:
            c.exec_driver_sql("SELECT 1")
        eng.dispose()
        return True
    except Exception:
        if os.environ.get("CI"):
            raise
        return False


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path, pg_available: bool) -> Iterator[str]:
    """A URL to an empty ledger database, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    if not pg_available:
        pytest.skip("PostgreSQL is not reachable")
    with pg_schema_url() as url:
        yield url


@pytest.fixture
def ledger_urls(tmp_path: Path, pg_available: bool) -> Iterator[dict[str, str]]:
    """Both databases at once, for a test that runs them side by side: ``{"sqlite": URL,
    "postgres": URL}`` (without PostgreSQL where it is unreachable and CI is not set)."""
    urls = {"sqlite": f"sqlite:///{tmp_path / 'ledger.db'}"}
    if not pg_available:
        yield urls
        return
    with pg_schema_url() as url:
        yield {**urls, "postgres": url}


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A URL to a fresh, empty PostgreSQL schema on the test server, dropped afterwards."""
    schema = "cs_" + uuid.uuid4().hex[:12]
    eng = _pg_engine()
    with eng.connect() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with eng.connect() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        eng.dispose()


EXAMPLE_CLUSTER = """
admins = ["root-admin"]
[policy]
grace_s = 5
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
max_gpus = 8
[[teams]]
name = "pretraining"
members = ["dave"]
allowance_gpu_hours = 20000
"""


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    """A small cluster config (16 H100s, three teams) with its signing key."""
    from cellsched.receipt import create_keys, key_paths

    path = tmp_path / "cluster.toml"
    path.write_text(EXAMPLE_CLUSTER)
    create_keys(*key_paths(path))
    return path


@pytest.fixture
def env(cluster_file: Path, ledger_url: str):  # type: ignore[no-untyped-def]
    """A service environment over the small cluster, on SQLite and on PostgreSQL."""
    from cellsched.service import open_env

    e = open_env(cluster_file, ledger_url)
    yield e
    e.ledger.dispose()


@pytest.hookimpl(tryfirst=True)  # before xdist names each item's group from its markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first: ``slow`` tests (each a minute or more, mostly waiting on Ray and
    daemons), then the other Ray tests, then the rest, each in collection order. Under
    ``-n 2 --dist loadgroup`` (README) the two workers then start on the long ones side by
    side and fill in with short ones, instead of one worker ending the run alone on them."""
    def rank(item: pytest.Item) -> int:
        return 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("ray") else 2

    items.sort(key=rank)
    # Every Ray test on one worker, one after another (``--dist loadgroup``): one local Ray at
    # a time, and the timing-bound tests never share the machine with a second Ray; the other
    # worker takes everything else.
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under ``--dist loadgroup`` xdist tells each Ray test's group by a ``@ray`` suffix on
    its node id. A pytest/xdist pair that loses the suffix (pytest 9.2 with xdist 3.8) spreads
    the Ray tests over both workers without a word: two local Rays at once, and the
    timing-bound tests then fail at random. Stop at collection instead."""
    if not session.config.getoption("loadgroup", False):
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("ray") and not i.nodeid.endswith("@ray")]
    if lost:
        import sys

        msg = (f"--dist loadgroup does not group the Ray tests (pytest {pytest.__version__}): {lost[0]} "
               "has no @ray suffix; see the pytest pin in pyproject.toml")
        sys.__stderr__.write(msg + "\n")  # a worker's own exception reaches the controller as a bare crash
        raise pytest.UsageError(msg)
