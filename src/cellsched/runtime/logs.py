"""Reading job logs: ``<log_dir>/<job>/attempt-<n>/rank-<r>.log`` (written by the rank
workers), found through the ledger."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from sqlmodel import col, select

from cellsched.errors import NotFound
from cellsched.ledger.tables import LIVE_STATES, GrantRow, GrantRuntimeRow, JobRunRow
from cellsched.service import Env, find_grant


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


@dataclass(frozen=True)
class Attempt:
    job: str
    attempt: int
    state: str
    gpus: int


def rank_log(log_dir: str | Path, job: str, attempt: int, rank: int) -> Path:
    return Path(log_dir) / job / f"attempt-{attempt}" / f"rank-{rank}.log"


def locate(env: Env, project: str) -> tuple[GrantRow, str, list[Attempt]]:
    """The project's newest grant, its log directory and its attempts (oldest first)."""
    with env.ledger.read() as s:
        g = find_grant(s, project)
        rt = s.get(GrantRuntimeRow, g.id)
        runs = s.exec(select(JobRunRow).where(JobRunRow.grant_id == g.id).order_by(col(JobRunRow.id))).all()
        log_dir = rt.log_dir if rt is not None else str(log_dir_for(logs_root_for(env), g))
        return g, log_dir, [Attempt(r.job, r.attempt, r.state, r.gpus) for r in runs]


def show(env: Env, project: str, job: str | None, rank: int | None, attempt: int | None,
         out: IO[str] = sys.stdout) -> int:
    """Print logs; returns how many files were printed."""
    g, log_dir, runs = locate(env, project)
    if not runs:
        print(f"{g.project_id} has no job attempts yet (grant {g.state}); logs will be in {log_dir}", file=out)
        return 0
    picked = _pick(runs, job, attempt)
    n = 0
    for a in picked:
        ranks = [rank] if rank is not None else list(range(a.gpus))
        for r in ranks:
            p = rank_log(log_dir, a.job, a.attempt, r)
            if len(picked) > 1 or len(ranks) > 1:
                print(f"==> {a.job} attempt {a.attempt} ({a.state}) rank {r} <==", file=out)
            if p.exists():
                out.write(p.read_text(errors="replace"))
                n += 1
            else:
                print(f"(no log at {p})", file=out)
    out.flush()
    return n


def _pick(runs: list[Attempt], job: str | None, attempt: int | None) -> list[Attempt]:
    if job is None:
        latest: dict[str, Attempt] = {}
        for a in runs:
            latest[a.job] = a
        return list(latest.values())
    mine = [a for a in runs if a.job == job]
    if not mine:
        raise NotFound(f"no attempts of job {job!r} (jobs with attempts: {', '.join(sorted({a.job for a in runs}))})")
    if attempt is None:
        return [mine[-1]]
    hit = [a for a in mine if a.attempt == attempt]
    if not hit:
        raise NotFound(f"job {job!r} has no attempt {attempt} (attempts: {', '.join(str(a.attempt) for a in mine)})")
    return hit


def follow(env: Env, project: str, job: str, rank: int, attempt: int | None = None,
           out: IO[str] = sys.stdout, poll_s: float = 0.2, wait_s: float | None = None) -> None:
    """Print one rank's log as it grows; switch to a retry's log when one starts; stop when
    the grant is over and the log is drained (or after ``wait_s``, for tests)."""
    t_end = None if wait_s is None else time.monotonic() + wait_s
    current: tuple[int, Path] | None = None
    pos = 0
    while True:
        g, log_dir, runs = locate(env, project)
        mine = [a for a in runs if a.job == job and (attempt is None or a.attempt == attempt)]
        if mine and (current is None or (attempt is None and mine[-1].attempt != current[0])):
            a = mine[-1]
            if current is not None:
                _drain(current[1], pos, out)
                print(f"==> {job} attempt {a.attempt} <==", file=out)
            current, pos = (a.attempt, rank_log(log_dir, job, a.attempt, rank)), 0
        if current is not None:
            pos = _drain(current[1], pos, out)
        running = any(a.state == "running" for a in mine)
        if g.state not in LIVE_STATES and not running:
            return
        if t_end is not None and time.monotonic() > t_end:
            return
        time.sleep(poll_s)


def _drain(path: Path, pos: int, out: IO[str]) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read()
    except FileNotFoundError:
        return pos
    if data:
        out.write(data.decode(errors="replace"))
        out.flush()
    return pos + len(data)
