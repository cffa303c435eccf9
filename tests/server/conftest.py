"""Shared fixtures for the server's tests (the harness is ``server_harness.py``):

- ``served``: a real server (uvicorn on TCP and on a Unix socket) over the ``env``
  fixture's fresh ledger with tests/conftest.py's EXAMPLE_CLUSTER, on SQLite and on
  PostgreSQL (a :class:`server_harness.Served`);
- ``no_client_config``: no server configured for this process's CLI.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_harness import Served, start_server


@pytest.fixture
def served(env: Any) -> Iterator[Served]:
    """A real server over the ``env`` fixture's ledger (SQLite and PostgreSQL)."""
    with start_server(env) as s:
        yield s


@pytest.fixture
def no_client_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No server configured for this process's CLI (the local ledger), whatever the machine's
    user config says."""
    monkeypatch.delenv("CELLSCHED_SERVER", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "no-config"))
