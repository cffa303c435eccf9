"""``cellsched demo``: the whole life of a project on a fresh machine, in about a minute.

A local Ray with 8 logical GPUs, a temporary cluster config (one 8-GPU H100 pool, the example
specs' teams with the current user as member and admin) and SQLite ledger, the example
specs submitted, then the reconciler runs until every grant has finished and reported.
Windows are hours long, but the jobs take seconds: each grant ends early, is refunded, and
the next waiting grant moves up, which is how the demo finishes quickly.

It tells the story as it happens: each submit's answer (and one spec written to be refused,
with what admission would grant instead), each window's GPUs reserved, each job ended, each
window released early with its refund; the CLI then prints the completion reports and the
``status`` table.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlmodel import col, select

from cellsched.errors import BadInput
from cellsched.fmt import duration, gpu_h, iso, plural, span
from cellsched.ledger.tables import GrantRow, GrantRuntimeRow, JobRunRow

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


URGENT = """\
# Written by `cellsched demo`: the same team wants 8 GPUs for 6 hours, done within 12 hours.
# The example projects have booked the pool further ahead than that, so admission refuses
# it at once and says what it would grant instead.
name = "{name}"
team = "{team}"
owner = "{owner}"
problem = "A rerun that must finish before a deadline twelve hours away."

[budget]
gpu_hours = {gpu_hours}
gpus = {gpus}
pool = "h100"
deadline = "{deadline}"

[[jobs]]
name = "rerun"
run = ["python3", "-c", "print('rerun')"]
gpus = {gpus}
"""
URGENT_HOURS = 6
URGENT_DEADLINE_S = 12 * 3600


@dataclass
class DemoResult:
    """What the demo left: whether every granted example completed with every job
    succeeded, where (``work``), their completion reports, the ``status`` items (the JSON
    ``cellsched status --json`` prints) and the refusal's submit answer."""

    ok: bool
    work: Path
    reports: list[dict[str, Any]]
    status: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)


def write_urgent(work: Path, team: str, owner: str, now: int) -> Path:
    """The spec the demo expects to be refused, with a deadline ``URGENT_DEADLINE_S`` from now."""
    path = work / "urgent-rerun.toml"
    due = now + URGENT_DEADLINE_S
    deadline = iso(due - due % 60)
    path.write_text(URGENT.format(name="urgent-rerun", team=team, owner=owner, gpus=GPUS,
                                  gpu_hours=GPUS * URGENT_HOURS, deadline=deadline))
    return path


def run_demo(projects: Path | None, user: str, say: Callable[[str], None], timeout_s: float = 110.0,
             workdir: Path | None = None, interval: float = 0.2) -> DemoResult:
    """Submit the examples (and one spec that is refused), run them to completion on a
    local Ray, telling the story through ``say`` as it happens."""
    from cellsched import ops, service
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
    say(f"demo: {plural(len(specs), 'example project')} from {src}; cluster, ledger and logs in {work}")
    say(f"demo: starting a local Ray with {GPUS} logical GPUs …")
    # Logical CPUs beyond the machine's: Ray starts at most about num_cpus worker processes at
    # once, and an 8-wide group needs 8 rank workers started together (0 CPUs each).
    ex = ray_executor("local", local_gpus=GPUS, extra_init={"num_cpus": max(os.cpu_count() or 1, 2 * GPUS),
                                                                "logging_level": logging.WARNING})
    say(f"demo: Ray is up after {duration(time.monotonic() - t0)}")
    try:
        say("")
        say("1. Submitted: each spec is sealed, then granted a window or refused, at once")
        granted: list[int] = []
        width = max(len(pid) for pid in [_pid(s) for _, s in specs] + ["urgent-rerun@" + "0" * 12])
        for _path, spec in specs:
            out = service.submit(env, spec, user, now_s())
            if out.granted and out.grant is not None:
                granted.append(out.grant.id or 0)
            say(_decision(out.to_json(), width, now_s()))
        first = specs[0][1]
        urgent = write_urgent(work, first.team, first.owner, now_s())
        out = service.submit(env, urgent, user, now_s())
        refused = [] if out.granted else [out.to_json()]
        if out.granted and out.grant is not None:
            granted.append(out.grant.id or 0)
        say(_decision(out.to_json(), width, now_s()) + f"   ({urgent.name} in the work directory)")

        say("")
        say("2. Running: at its window's start each grant's GPUs are reserved on Ray and its jobs run;")
        say("   when the last job ends the window is released early, the rest refunded, and the next")
        say("   waiting grant moves up")
        rec = Reconciler(env, ex, settings=Settings(logs_root=work / "logs"))
        story = _Story(env, granted, say, t0, width)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rec.tick()
            story.tell()
            if _all_done(env, granted):
                break
            time.sleep(interval)
        rec.drain(10)
        story.tell()
        reports = _reports(env, granted)
        status = ops.status(env, user, None, now_s())
        examples = len(specs) + (0 if refused else 1)
        ok = len(reports) == len(granted) == examples and all(r.get("succeeded") for r in reports)
        say(f"demo: finished in {duration(time.monotonic() - t0)}")
        return DemoResult(ok, work, reports, status, refused)
    finally:
        env.ledger.dispose()
        import ray

        ray.shutdown()


def _pid(spec: Any) -> str:
    from cellsched.spec.seal import digest, project_id

    return project_id(spec, digest(spec))


def _decision(out: dict[str, Any], width: int, now: int) -> str:
    """One submit's answer, as ``submit`` says it (with the alternatives of a refusal)."""
    if out["decision"] == "granted":
        g = out["grant"]
        wait = g["start"] - now
        when = "starts now" if wait <= 0 else f"starts in {duration(wait)}, or earlier if GPUs free up"
        return (f"   granted  {out['project']:<{width}}  {plural(g['width'], 'GPU')}, {gpu_h(g['gpu_hours'])}, "
                f"{span(g['start'], g['end'])} ({when})")
    r = out["refusal"]
    lines = [f"   refused  {out['project']:<{width}}  {r['reason']}: {r['message']}"]
    for a in r["alternatives"]:
        lines.append(f"   {'':<{width + 9}}  would be granted now: {a['message']}")
    return "\n".join(lines)


class _Story:
    """What changed since the last look, per grant in grant order: its GPUs reserved (it
    runs), its jobs that ended, its window released (early, with the refund)."""

    ENDED = ("completed", "expired", "cancelled")

    def __init__(self, env: Any, ids: list[int], say: Callable[[str], None], t0: float, width: int) -> None:
        self.env, self.ids, self.say, self.t0, self.width = env, ids, say, t0, width
        self.started: set[int] = set()
        self.ended: set[int] = set()
        self.runs_told: set[int] = set()

    def _line(self, verb: str, project: str, text: str) -> None:
        at = duration(time.monotonic() - self.t0)
        self.say(f"   {at:>7}  {verb:<8}  {project:<{self.width}}  {text}")

    def tell(self) -> None:
        with self.env.ledger.read() as s:
            grants = s.exec(select(GrantRow).where(col(GrantRow.id).in_(self.ids)).order_by(col(GrantRow.id))).all()
            runs = s.exec(select(JobRunRow).where(col(JobRunRow.grant_id).in_(self.ids))
                          .order_by(col(JobRunRow.id))).all()
        for g in grants:
            gid = g.id or 0
            if g.started_at is not None and gid not in self.started:
                self.started.add(gid)
                self._line("running", g.project_id, f"{plural(g.width, 'GPU')} reserved on Ray, jobs starting")
            for r in runs:
                if r.grant_id == gid and r.state != "running" and (r.id or 0) not in self.runs_told:
                    self.runs_told.add(r.id or 0)
                    self._line("job", g.project_id, _job_text(r))
            if g.state in self.ENDED and gid not in self.ended:
                self.ended.add(gid)
                held = (g.ended_at or g.end) - (g.started_at or g.ended_at or g.end)
                window = duration(g.promised_end - g.promised_start)
                how = {"completed": f"early, every job done after {duration(held)} of its {window} window",
                       "expired": f"at the end of its {window} window",
                       "cancelled": "cancelled"}[g.state]
                self._line("released", g.project_id, f"{how}: {gpu_h(g.refunded_gs / 3600)} refunded to {g.team}")


def _job_text(r: JobRunRow) -> str:
    codes = list(dict.fromkeys(json.loads(r.exit_codes)))
    exits = f"exit {codes[0]}" if len(codes) == 1 else "exit codes " + ",".join(map(str, codes))
    again = f" (attempt {r.attempt})" if r.attempt > 1 else ""
    took = duration((r.ended_at or r.started_at or 0) - (r.started_at or 0))
    return f"{r.job}{again} {r.state} on {plural(r.gpus, 'GPU')} in {took} ({exits})"


def _all_done(env: Any, ids: list[int]) -> bool:
    with env.ledger.read() as s:
        rts = s.exec(select(GrantRuntimeRow).where(col(GrantRuntimeRow.grant_id).in_(ids))).all()
        return len(rts) == len(ids) and all(r.finalized and r.notified for r in rts)


def _reports(env: Any, ids: list[int]) -> list[dict[str, Any]]:
    with env.ledger.read() as s:
        rows = s.exec(select(GrantRow).where(col(GrantRow.id).in_(ids)).order_by(col(GrantRow.id))).all()
        return [json.loads(r.report_json) for r in rows if r.report_json]
