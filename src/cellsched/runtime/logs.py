"""Reading job logs: ``<log_dir>/<job>/attempt-<n>/rank-<r>.log`` (written by the rank
workers), found through the ledger.

``show`` and ``follow`` print from a :class:`LogSource`: the ledger and files on this host
(:class:`LocalLogs`, what an ``Env`` gives), or ``cellsched server``'s API (the CLI's remote
mode); both answer with ``cellsched.ops``' JSON (``logs`` and ``log_read``), so what is
printed is the same either way. Importing this module loads no database code: the thin
client uses it.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from cellsched.errors import Denied, NotFound

if TYPE_CHECKING:
    from cellsched.ledger.tables import GrantRow
    from cellsched.service import Env


def logs_root_for(env: Env, root: Path | None = None) -> Path:
    """Where job logs and reports go: ``root`` (serve's ``--logs-dir``), else
    ``CELLSCHED_LOGS``, else ``logs/`` beside the cluster config."""
    if root is not None:
        return Path(root)
    if os.environ.get("CELLSCHED_LOGS"):
        return Path(os.environ["CELLSCHED_LOGS"])
    return env.base_dir / "logs"


def log_dir_for(root: Path, grant: GrantRow) -> Path:
    """``<root>/<project>/<digest12>-g<grant>/``."""
    return root / grant.project / f"{grant.digest[:12]}-g{grant.id}"


def be_log_dir(root: Path, project: str, digest: str, be_id: int) -> Path:
    """A best-effort submission's: ``<root>/<project>/<digest12>-be<id>/`` (its tasks' job
    directories are ``<job>-<index>``)."""
    return root / project / f"{digest[:12]}-be{be_id}"


@dataclass(frozen=True)
class Attempt:
    job: str
    attempt: int
    state: str
    gpus: int


@dataclass(frozen=True)
class Owner:
    """Whose logs: a grant's (``kind`` "grant") or a best-effort submission's."""
    kind: str
    team: str
    project_id: str
    state: str
    live: bool


def rank_log(log_dir: str | Path, job: str, attempt: int, rank: int) -> Path:
    """The log a rank worker writes (``executor.base.attempt_path``: the executor's name for it)."""
    from cellsched.executor.base import attempt_path

    return Path(attempt_path(str(log_dir), job, attempt, rank, "log"))


def locate(env: Env, project: str) -> tuple[Owner, str, list[Attempt]]:
    """The project's newest grant (else its newest best-effort submission), its log directory
    and its attempts (oldest first)."""
    from sqlmodel import col, select

    from cellsched.ledger.tables import LIVE_STATES, GrantRuntimeRow, JobRunRow
    from cellsched.service import find_grant

    with env.ledger.read() as s:
        try:
            g = find_grant(s, project)
        except NotFound:
            return _locate_best_effort(env, s, project)
        rt = s.get(GrantRuntimeRow, g.id)
        runs = s.exec(select(JobRunRow).where(JobRunRow.grant_id == g.id).order_by(col(JobRunRow.id))).all()
        log_dir = rt.log_dir if rt is not None else str(log_dir_for(logs_root_for(env), g))
        owner = Owner("grant", g.team, g.project_id, g.state, g.state in LIVE_STATES)
        return owner, log_dir, [Attempt(r.job, r.attempt, r.state, r.gpus) for r in runs]


def _locate_best_effort(env: Env, s: Any, project: str) -> tuple[Owner, str, list[Attempt]]:
    """A best-effort submission's attempts, from its ``be_started`` and ``be_ended`` events:
    one per start of a task (job ``<job>-<index>``), "running" until it ended, then its
    outcome ("succeeded", "failed", "preempted", "lost", ...). The log directory is the one
    the daemon named when it started a task (else the default under the logs root)."""
    import json

    from sqlmodel import col, select

    from cellsched.ledger import best_effort as be_ledger
    from cellsched.ledger.tables import BE_LIVE_STATES, EventRow

    rows = be_ledger.find(s, project)
    if not rows:
        raise NotFound(f"no grant or best-effort submission for project {project!r}")
    be = rows[0]
    owner = Owner("best-effort", be.team, be.project_id, be.state, be.state in BE_LIVE_STATES)
    log_dir = str(be_log_dir(logs_root_for(env), be.project, be.digest, be.id or 0))
    found: dict[tuple[str, int], Attempt] = {}
    q = (select(EventRow).where(EventRow.subject == be.project_id)
         .where(col(EventRow.kind).in_(("be_started", "be_ended"))).order_by(col(EventRow.seq)))
    for e in s.exec(q).all():
        d = json.loads(e.data)
        if d.get("be") != be.id:
            continue
        key = (f"{d['job']}-{d['index']}", int(d["attempt"]))
        if e.kind == "be_started":
            found[key] = Attempt(key[0], key[1], "running", int(d["gpus"]))
            log_dir = d.get("log_dir", log_dir)
        elif key in found:
            found[key] = Attempt(key[0], key[1], str(d["outcome"]), found[key].gpus)
    return owner, log_dir, list(found.values())


def pick(runs: list[Attempt], job: str | None, attempt: int | None) -> list[Attempt]:
    """The attempts ``logs`` shows: the newest of every job, or of ``job``, or ``attempt``."""
    if job is None:
        latest: dict[str, Attempt] = {}
        for a in runs:
            latest[a.job] = a
        return list(latest.values())
    mine = [a for a in runs if a.job == job]
    if not mine:
        if not runs:
            raise NotFound(f"no attempts of job {job!r}: no job of this project has started yet")
        raise NotFound(f"no attempts of job {job!r} (jobs with attempts: {', '.join(sorted({a.job for a in runs}))})")
    if attempt is None:
        return [mine[-1]]
    hit = [a for a in mine if a.attempt == attempt]
    if not hit:
        raise NotFound(f"job {job!r} has no attempt {attempt} (attempts: {', '.join(str(a.attempt) for a in mine)})")
    return hit


_pick = pick  # the name it had


def read_chunk(path: Path, offset: int, limit: int, within: str | Path | None = None) -> tuple[bytes, int, bool]:
    """Up to ``limit`` bytes of ``path`` from ``offset``: (data, file size, exists).

    Only a regular file, reached without a symbolic link: not the log itself (opened with
    O_NOFOLLOW) nor, with ``within``, any directory between it and ``within`` (the grant's
    log directory). A job whose user may write the log directory could otherwise point its
    log at any file the server's account can read (a key, a password file) and read it back
    through ``logs``; a FIFO would hang the read. Refused (Denied), one line."""
    if within is not None:
        real, top = os.path.realpath(path.parent), os.path.realpath(within)
        if real != top and not real.startswith(top + os.sep):
            raise Denied(f"{path}: a directory on its way is a symbolic link out of the log directory; not read")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return b"", 0, False
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Denied(f"{path}: a symbolic link, not a log; not read") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise Denied(f"{path}: not a regular file; not read")
        f.seek(max(0, offset))
        return f.read(limit), st.st_size, True


class LogSource(Protocol):
    """Where logs come from: ``listing`` is ``ops.logs``' JSON, ``read`` is ``ops.log_read``'s."""

    def listing(self, project: str, job: str | None, rank: int | None, attempt: int | None) -> dict[str, Any]: ...

    def read(self, project: str, job: str, attempt: int, rank: int, offset: int) -> dict[str, Any]: ...


class LocalLogs:
    """Logs on this host, found through the local ledger."""

    def __init__(self, env: Env) -> None:
        self.env = env

    def listing(self, project: str, job: str | None, rank: int | None, attempt: int | None) -> dict[str, Any]:
        from cellsched import ops

        return ops.logs(self.env, "", project, job, rank, attempt, 0)

    def read(self, project: str, job: str, attempt: int, rank: int, offset: int) -> dict[str, Any]:
        from cellsched import ops

        return ops.log_read(self.env, "", project, job, attempt, rank, offset, 0)


def _source(where: Any) -> LogSource:
    return where if hasattr(where, "listing") else LocalLogs(where)


def _read_all(source: LogSource, project: str, job: str, attempt: int, rank: int, offset: int = 0) -> bytes | None:
    """The log's bytes from ``offset`` to its end as it is now (None: no such file)."""
    parts = []
    while True:
        r = source.read(project, job, attempt, rank, offset)
        if not r["exists"]:
            return None if not parts else b"".join(parts)
        data = base64.b64decode(r["data_b64"])
        parts.append(data)
        offset = r["next_offset"]
        if not data or offset >= r["size"]:
            return b"".join(parts)


def show(where: Env | LogSource, project: str, job: str | None, rank: int | None, attempt: int | None,
         out: IO[str] | None = None) -> int:
    """Print logs (to ``out``, default stdout at the call); returns how many files were printed."""
    out = out or sys.stdout
    source = _source(where)
    lst = source.listing(project, job, rank, attempt)
    if not lst["attempts"]:
        print(f"{lst['project']} has no job attempts yet ({lst.get('kind', 'grant')} {lst['grant_state']}); "
              f"logs will be in {lst['log_dir']}", file=out)
        return 0
    n = 0
    for f in lst["files"]:
        if lst["headers"]:
            print(f"==> {f['job']} attempt {f['attempt']} ({f['state']}) rank {f['rank']} <==", file=out)
        data = _read_all(source, project, f["job"], f["attempt"], f["rank"])
        if data is not None:
            out.write(data.decode(errors="replace"))
            n += 1
        else:
            print(f"(no log at {f['path']})", file=out)
    out.flush()
    return n


def follow(where: Env | LogSource, project: str, job: str, rank: int, attempt: int | None = None,
           out: IO[str] | None = None, poll_s: float = 0.2, wait_s: float | None = None) -> None:
    """Print one rank's log as it grows; switch to a retry's log when one starts; stop when
    the grant is over and the log is drained (or after ``wait_s``, for tests)."""
    out = out or sys.stdout
    source = _source(where)
    t_end = None if wait_s is None else time.monotonic() + wait_s
    current: int | None = None
    pos = 0
    while True:
        lst = source.listing(project, None, None, None)
        mine = [a for a in lst["attempts"] if a["job"] == job and (attempt is None or a["attempt"] == attempt)]
        if mine and (current is None or (attempt is None and mine[-1]["attempt"] != current)):
            a = mine[-1]
            if current is not None:
                pos = _drain(source, project, job, current, rank, pos, out)
                print(f"==> {job} attempt {a['attempt']} <==", file=out)
            current, pos = a["attempt"], 0
        if current is not None:
            pos = _drain(source, project, job, current, rank, pos, out)
        running = any(a["state"] == "running" for a in mine)
        if not lst["grant_live"] and not running:
            return
        if t_end is not None and time.monotonic() > t_end:
            return
        time.sleep(poll_s)


def _drain(source: LogSource, project: str, job: str, attempt: int, rank: int, pos: int, out: IO[str]) -> int:
    data = _read_all(source, project, job, attempt, rank, pos)
    if data:
        out.write(data.decode(errors="replace"))
        out.flush()
        pos += len(data)
    return pos
