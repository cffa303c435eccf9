"""``cellsched demo``: the whole life of a project on a fresh machine, in about a minute.

A local Ray with 8 logical GPUs, a temporary cluster config (one 8-GPU H100 pool, the example
specs' teams with the current user as member and admin) and SQLite ledger, the example
specs submitted, then the reconciler runs until every grant has finished and reported.
Windows are hours long, but the jobs take seconds: each grant ends early, is refunded, and
the next waiting grant moves up, which is how the demo finishes quickly.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from sqlmodel import col, select

from cellsched.errors import BadInput
from cellsched.ledger.tables import GrantRow, GrantRuntimeRow

GPUS = 8

CLUSTER = """\
# Written by `cellsched demo`: one 8-GPU H100 pool (logical GPUs on a local Ray).
admins = [{user}]

[policy]
grace_s = 5
min_notice_s = 0

[[pools]]
name = "h100"
gpu_type = "H100"
gpus = {gpus}
gpus_per_node = {gpus}
"""

TEAM = """
[[teams]]
name = "{team}"
members = [{user}]
allowance_gpu_hours = 100000
"""


def find_projects(explicit: Path | None = None) -> Path:
    """The example specs: ``--projects``, else the repository's ``projects/`` (editable
    install), else ``./projects``."""
    import cellsched

    candidates = [explicit] if explicit else [
        Path(cellsched.__file__).resolve().parents[2] / "projects",
        Path.cwd() / "projects",
    ]
    for c in candidates:
        if c is not None and c.is_dir() and any(_spec_files(c)):
            return c
    raise BadInput("no example projects found (pass --projects DIR with *.toml/*.yaml/*.json specs)")


def _spec_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix in (".toml", ".yaml", ".yml", ".json"))


def write_cluster(dir: Path, user: str, teams: list[str], gpus: int = GPUS) -> Path:
    from cellsched.receipt import create_keys, key_paths

    q = json.dumps(user)
    text = CLUSTER.format(user=q, gpus=gpus) + "".join(TEAM.format(team=t, user=q) for t in teams)
    path = dir / "cluster.toml"
    path.write_text(text)
    create_keys(*key_paths(path))
    return path


def run_demo(projects: Path | None, user: str, say: Callable[[str], None], timeout_s: float = 110.0,
             workdir: Path | None = None, interval: float = 0.2) -> tuple[bool, Path, list[dict[str, Any]]]:
    """Returns (every grant completed with every job succeeded, workdir, reports)."""
    from cellsched import service
    from cellsched.runtime.clock import now_s
    from cellsched.runtime.daemon import ray_executor
    from cellsched.runtime.reconciler import Reconciler, Settings
    from cellsched.spec.load import load_spec

    t0 = time.monotonic()
    src = find_projects(projects)
    specs = [(p, load_spec(p)) for p in _spec_files(src)]
    work = workdir or Path(tempfile.mkdtemp(prefix="cellsched-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = write_cluster(work, user, sorted({s.team for _, s in specs}))
    env = service.open_env(cluster, f"sqlite:///{(work / 'cellsched.db').as_posix()}")
    say(f"demo: {len(specs)} example projects from {src}; cluster, ledger and logs in {work}")

    say(f"demo: starting a local Ray with {GPUS} logical GPUs …")
    # Logical CPUs beyond the machine's: Ray starts at most about num_cpus worker processes at
    # once, and an 8-wide group needs 8 rank workers started together (0 CPUs each).
    ex = ray_executor("local", local_gpus=GPUS, extra_init={"num_cpus": max(os.cpu_count() or 1, 2 * GPUS)})
    say(f"demo: Ray up after {time.monotonic() - t0:.1f} s")
    try:
        granted: list[int] = []
        for path, spec in specs:
            out = service.submit(env, spec, user, now_s())
            if out.granted and out.grant is not None:
                g = out.grant
                granted.append(g.id or 0)
                wait = g.start - now_s()
                when = "now" if wait <= 0 else f"in {wait / 3600:.1f} h (or earlier, if capacity frees up)"
                say(f"  granted  {out.project_id:<32} {g.width} GPUs, {g.charged_gs / 3600:g} GPU-h, starts {when}")
            else:
                r = out.refusal
                say(f"  refused  {out.project_id:<32} {r.reason if r else '?'}: {r.message if r else ''}")
        rec = Reconciler(env, ex, settings=Settings(logs_root=work / "logs"))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rec.tick()
            if _all_done(env, granted):
                break
            time.sleep(interval)
        rec.drain(10)
        reports = _reports(env, granted)
        ok = len(reports) == len(granted) == len(specs) and all(r.get("succeeded") for r in reports)
        say(f"demo: finished in {time.monotonic() - t0:.1f} s")
        return ok, work, reports
    finally:
        env.ledger.dispose()
        import ray

        ray.shutdown()


def _all_done(env: Any, ids: list[int]) -> bool:
    with env.ledger.read() as s:
        rts = s.exec(select(GrantRuntimeRow).where(col(GrantRuntimeRow.grant_id).in_(ids))).all()
        return len(rts) == len(ids) and all(r.finalized and r.notified for r in rts)


def _reports(env: Any, ids: list[int]) -> list[dict[str, Any]]:
    with env.ledger.read() as s:
        rows = s.exec(select(GrantRow).where(col(GrantRow.id).in_(ids)).order_by(col(GrantRow.id))).all()
        return [json.loads(r.report_json) for r in rows if r.report_json]
