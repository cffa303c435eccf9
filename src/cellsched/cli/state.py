"""Options shared by every command (--cluster, --db), the caller's identity, and where a
command's data comes from: its backend.

:class:`Local` (the embedded default) runs ``cellsched.ops`` on the local ledger for the OS
user; :class:`Served` asks ``cellsched server`` (``CELLSCHED_SERVER`` or the user config
file, see ``cli/remote.py``), which runs the same ``ops`` for the caller it proved. Both
answer with the JSON ``--json`` prints, and the commands render only from it. Served
imports httpx and nothing of the ledger stack (no sqlmodel, no ray, no service layer).
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from cellsched.cli.remote import Remote
    from cellsched.ops import CodeNow, SpecIn
    from cellsched.spec.code import Snapshot

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON (times as UTC ISO 8601) instead of a table.")]


@dataclass
class Globals:
    cluster: Path = Path("cluster.toml")
    db: str | None = None
    # Which of --cluster/--db were given on the command line (a server ignores them).
    given: list[str] = field(default_factory=list)
    backend: Any = None


G = Globals()


def caller() -> str:
    """The OS user running the command (``CELLSCHED_USER`` overrides, for tests and servers).
    Local mode only: through a server, the server proves who is calling."""
    return os.environ.get("CELLSCHED_USER") or getpass.getuser()


def env():  # type: ignore[no-untyped-def]
    from cellsched.service import open_env

    return open_env(G.cluster, G.db)


def backend() -> Local | Served:
    """The backend for this command: the configured server, else the local ledger."""
    if G.backend is None:
        from cellsched.cli.remote import configured

        remote = configured()
        if remote is not None and G.given:
            import sys

            print(f"cellsched: note: {' and '.join(G.given)} ignored: commands go to the server {remote.url}",
                  file=sys.stderr)
        G.backend = Local() if remote is None else Served(remote)
    return G.backend  # type: ignore[no-any-return]


def _now() -> int:
    from cellsched.runtime.clock import now_s

    return now_s()


def _default_url() -> str:
    from cellsched.ledger.db import default_url

    return default_url(G.cluster)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite ledger URL (None: not SQLite, or in memory)."""
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    return None


def _sqlite_missing(url: str) -> bool:
    file = _sqlite_file(url)
    return file is not None and not file.exists()


class Local:
    """The embedded default: ``cellsched.ops`` on the local ledger, for the OS user."""

    remote = None

    def __init__(self) -> None:
        self._env: Any = None
        self._empty: Any = None  # read_env's stand-in for a SQLite ledger not created yet

    def env(self):  # type: ignore[no-untyped-def]
        if self._env is None:
            self._env = env()
        return self._env

    def read_env(self):  # type: ignore[no-untyped-def]
        """``env()`` for a command that only reads the ledger: a SQLite ledger file that is
        not there is read as the empty ledger it stands for, and not created (a read command,
        or one given a name that is not there, writes nothing)."""
        if self._env is not None or not _sqlite_missing(G.db or _default_url()):
            return self.env()
        if self._empty is None:  # (its own: a write that follows, as --take's, opens the real one)
            from cellsched.service import open_env

            self._empty = open_env(G.cluster, "sqlite://")
        return self._empty

    def validate(self, specs: list[SpecIn]) -> list[dict[str, Any]]:
        from cellsched import ops

        return ops.validate_specs(None, caller(), specs, _now())

    def submit(self, spec: SpecIn, snapshot: Snapshot | None, dry_run: bool = False,
               replace: bool = False) -> dict[str, Any]:
        from cellsched import ops

        e = self.read_env() if dry_run else self.env()
        return ops.submit(e, caller(), spec, _now(), snapshot=snapshot, dry_run=dry_run, replace=replace)

    def calendar(self, pool: str | None, days: int, fit: str | None, team: str | None) -> dict[str, Any]:
        from cellsched import ops

        return ops.calendar(self.read_env(), caller(), _now(), pool=pool, days=days, fit=fit, team=team)

    def cluster(self) -> dict[str, Any]:
        from cellsched import ops

        return ops.cluster(self.env(), caller(), 0)

    def cancel(self, project: str) -> dict[str, Any]:
        from cellsched import ops

        return ops.cancel(self.read_env(), caller(), project, _now())

    def verify(self, project: str, spec: SpecIn | None, code_now: CodeNow | None) -> dict[str, Any]:
        from cellsched import ops

        return ops.verify(self.read_env(), caller(), project, _now(), spec=spec, code_now=code_now)

    def status(self, project: str | None, everything: bool = False) -> list[dict[str, Any]]:
        from cellsched import ops

        return ops.status(self.read_env(), caller(), project, _now(), everything)

    def budget(self, name: str) -> dict[str, Any]:
        from cellsched import ops

        return ops.budget(self.read_env(), caller(), name, _now())

    def report(self, since: int | None, until: int | None, team: str | None,
               last: int | None = None) -> dict[str, Any]:
        from cellsched import ops

        now = _now()
        e = self.read_env()
        return ops.report(e, caller(), since, until, team, now, last=last)

    def audit(self) -> dict[str, Any]:
        from cellsched import ops
        from cellsched.errors import NotFound
        from cellsched.ledger.db import Ledger

        url = G.db or _default_url()
        if _sqlite_missing(url):  # "ok, 0 events" for the wrong path would be a lie
            raise NotFound(f"{_sqlite_file(url)}: no ledger here (run `cellsched init`, or pass --db)")
        return ops.audit(Ledger(url), caller(), _now())

    def daemon(self) -> dict[str, Any]:
        from cellsched import ops

        return ops.daemon(self.read_env(), caller(), _now())

    def logs(self) -> Any:
        """A ``runtime.logs.LogSource``."""
        from cellsched.runtime.logs import LocalLogs

        return LocalLogs(self.read_env())


class Served:
    """``cellsched server``: each command one request (``docs/api.md``)."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def validate(self, specs: list[SpecIn]) -> list[dict[str, Any]]:
        return self.remote.call("POST", "/api/validate", json={"specs": [s.model_dump() for s in specs]})  # type: ignore[no-any-return]

    def submit(self, spec: SpecIn, snapshot: Snapshot | None, dry_run: bool = False,
               replace: bool = False) -> dict[str, Any]:
        params = {"replace": "true"} if replace else None
        if dry_run:  # decided on the code's digest alone: nothing uploaded, nothing written
            return self.remote.call("POST", "/api/plan", json=spec.model_dump(), params=params)  # type: ignore[no-any-return]
        if snapshot is not None:
            self.upload_code(snapshot.digest, snapshot.blob)
        return self.remote.call("POST", "/api/submit", json=spec.model_dump(), params=params)  # type: ignore[no-any-return]

    def calendar(self, pool: str | None, days: int, fit: str | None, team: str | None) -> dict[str, Any]:
        return self.remote.call("GET", "/api/calendar", params={  # type: ignore[no-any-return]
            "pool": pool, "days": days, "fit": fit, "team": team})

    def upload_code(self, digest: str, blob: bytes) -> dict[str, Any]:
        """Store a code snapshot on the server unless it holds it already (content-addressed)."""
        from cellsched.errors import NotFound

        try:
            return self.remote.call("GET", f"/api/code/{digest}")  # type: ignore[no-any-return]
        except NotFound:
            pass
        return self.remote.call("PUT", f"/api/code/{digest}", content=blob, timeout=600.0)  # type: ignore[no-any-return]

    def cluster(self) -> dict[str, Any]:
        return self.remote.call("GET", "/api/cluster")  # type: ignore[no-any-return]

    def cancel(self, project: str) -> dict[str, Any]:
        return self.remote.call("POST", "/api/cancel", json={"project": project})  # type: ignore[no-any-return]

    def verify(self, project: str, spec: SpecIn | None, code_now: CodeNow | None) -> dict[str, Any]:
        body = {"project": project, "spec": None if spec is None else spec.model_dump(),
                "code_now": None if code_now is None else code_now.model_dump()}
        return self.remote.call("POST", "/api/verify", json=body)  # type: ignore[no-any-return]

    def status(self, project: str | None, everything: bool = False) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"project": project}
        if everything:  # (a server from before --all answers without it)
            params["all"] = "true"
        return self.remote.call("GET", "/api/status", params=params)  # type: ignore[no-any-return]

    def budget(self, name: str) -> dict[str, Any]:
        return self.remote.call("GET", "/api/budget", params={"name": name})  # type: ignore[no-any-return]

    def report(self, since: int | None, until: int | None, team: str | None,
               last: int | None = None) -> dict[str, Any]:
        return self.remote.call("GET", "/api/report", params={  # type: ignore[no-any-return]
            "since": since, "until": until, "team": team, "last": last})

    def audit(self) -> dict[str, Any]:
        return self.remote.call("GET", "/api/audit")  # type: ignore[no-any-return]

    def daemon(self) -> dict[str, Any]:
        return self.remote.call("GET", "/api/daemon")  # type: ignore[no-any-return]

    def logs(self) -> Any:
        return ServedLogs(self.remote)


class ServedLogs:
    """A ``runtime.logs.LogSource`` on the server."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def listing(self, project: str, job: str | None, rank: int | None, attempt: int | None) -> dict[str, Any]:
        return self.remote.call("GET", "/api/logs", params={  # type: ignore[no-any-return]
            "project": project, "job": job, "rank": rank, "attempt": attempt})

    def read(self, project: str, job: str, attempt: int, rank: int, offset: int) -> dict[str, Any]:
        return self.remote.call("GET", "/api/logs/read", params={  # type: ignore[no-any-return]
            "project": project, "job": job, "attempt": attempt, "rank": rank, "offset": offset})
