"""Options shared by every command (--cluster, --db) and the caller's identity."""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (times as UTC ISO 8601) instead of a table.")]


@dataclass
class Globals:
    cluster: Path = Path("cluster.toml")
    db: str | None = None


G = Globals()


def caller() -> str:
    """The OS user running the command (``CELLSCHED_USER`` overrides, for tests and servers)."""
    return os.environ.get("CELLSCHED_USER") or getpass.getuser()


def env():  # type: ignore[no-untyped-def]
    from cellsched.service import open_env

    return open_env(G.cluster, G.db)
