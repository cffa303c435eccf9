"""The completion report: what a project was granted, what it used, how each job went.

Built from ledger rows only (so a restarted daemon writes the same report), as plain JSON;
the Markdown is rendered from that JSON.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from cellsched.executor.base import attempt_tails
from cellsched.fmt import duration, gpu_seconds_as_hours, header, iso, plural, stamp, table, when
from cellsched.ledger.tables import GrantRow, JobRunRow, ProjectRow
from cellsched.runtime.plan import AttemptView, job_states
from cellsched.spec.models import ProjectSpec

REPORT_VERSION = 1


TAIL_BYTES = 2048


def _iso(t: int | None) -> str | None:
    return iso(t)


def _h(gs: int) -> float:
    return round(gs / 3600, 6)


def build_report(
    grant: GrantRow,
    project: ProjectRow,
    spec: ProjectSpec,
    runs: Sequence[JobRunRow],
    log_dir: str,
    now: int,
) -> dict[str, Any]:
    """The report as JSON-ready data (integer seconds, GPU-hours as floats for display)."""
    views = [AttemptView(r.job, r.attempt, r.state) for r in runs]
    states = job_states(spec, views)
    # A job the daemon never got to (window over, dependency failed) is "not run".
    jobs = []
    for job in spec.job_order():
        mine = sorted((r for r in runs if r.job == job.name), key=lambda r: r.attempt)
        state = states[job.name]
        if not mine and state in ("ready", "waiting", "blocked"):
            state = "not run" if state != "blocked" else "blocked"
        jobs.append({
            "name": job.name,
            "gpus": job.gpus,
            "after": list(job.after),
            "retries": job.retries,
            "state": state,
            "gpu_seconds": sum(r.gpu_seconds for r in mine),
            "gpu_hours": _h(sum(r.gpu_seconds for r in mine)),
            "attempts": [
                {
                    "attempt": r.attempt,
                    "state": r.state,
                    "exit_codes": json.loads(r.exit_codes),
                    "gpu_ids": json.loads(r.gpu_ids),
                    "started_at": r.started_at,
                    "ended_at": r.ended_at,
                    "started_at_utc": _iso(r.started_at),
                    "ended_at_utc": _iso(r.ended_at),
                    "gpu_seconds": r.gpu_seconds,
                    "gpu_hours": _h(r.gpu_seconds),
                    "detail": r.detail,
                }
                for r in mine
            ],
            # The newest attempt's output, per rank (pulled home from the nodes before the
            # report is written): what a failure said, without a trip to the log files.
            "log_tail": list(attempt_tails(log_dir, job.name, mine[-1].attempt, mine[-1].gpus, TAIL_BYTES))
            if mine else [],
        })
    used = sum(r.gpu_seconds for r in runs)
    held_s = 0
    if grant.started_at is not None:
        held_s = max(0, min(grant.ended_at or now, grant.end) - grant.started_at)
    try:
        receipt: Any = json.loads(grant.receipt)
    except ValueError:
        receipt = grant.receipt
    ok = grant.state == "completed" and all(j["state"] == "succeeded" for j in jobs)
    return {
        "report_version": REPORT_VERSION,
        "project": project.id,
        "name": project.name,
        "team": project.team,
        "owner": project.owner,
        "problem": spec.problem.strip(),
        "digest": project.digest,
        "state": grant.state,
        "succeeded": ok,
        "grant": {
            "id": grant.id,
            "pool": grant.pool,
            "width": grant.width,
            "promised_start": grant.promised_start,
            "promised_end": grant.promised_end,
            "start": grant.start,
            "end": grant.end,
            "promised_start_utc": _iso(grant.promised_start),
            "promised_end_utc": _iso(grant.promised_end),
            "started_at": grant.started_at,
            "ended_at": grant.ended_at,
            "started_at_utc": _iso(grant.started_at),
            "ended_at_utc": _iso(grant.ended_at),
        },
        "window": {
            "granted_s": grant.promised_end - grant.promised_start,
            "held_s": held_s,
            "granted_gpu_seconds": grant.charged_gs,
            "held_gpu_seconds": grant.width * held_s,
        },
        "gpu_hours": {
            "charged": _h(grant.charged_gs),
            "held": _h(grant.width * held_s),
            "used": _h(used),
            "refunded": _h(grant.refunded_gs),
            "breach": _h(grant.breach_gs),
        },
        "gpu_seconds": {
            "charged": grant.charged_gs,
            "held": grant.width * held_s,
            "used": used,
            "refunded": grant.refunded_gs,
            "breach": grant.breach_gs,
        },
        "jobs": jobs,
        "receipt": receipt,
        "log_dir": log_dir,
        "generated_at": now,
        "generated_at_utc": _iso(now),
    }


def _window_table(r: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    g, w = r["grant"], r["window"]
    return ([" ", header("start"), header("end"), "length"],
            [["granted", stamp(g["promised_start"], True), stamp(g["promised_end"], True), duration(w["granted_s"])],
             ["held", stamp(g["started_at"], True), stamp(g["ended_at"], True), duration(w["held_s"])]])


def _gpu_hours_table(r: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    gs = r["gpu_seconds"]
    rows = [["charged", gpu_seconds_as_hours(gs["charged"])], ["held", gpu_seconds_as_hours(gs["held"])],
            ["used by jobs", gpu_seconds_as_hours(gs["used"])], ["refunded", gpu_seconds_as_hours(gs["refunded"])],
            ["guarantee breach", gpu_seconds_as_hours(gs["breach"])]]
    return ["GPU-hours", " "], rows


def _jobs_table(r: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for j in r["jobs"]:
        if not j["attempts"]:
            rows.append([j["name"], str(j["gpus"]), j["state"], "-", "-", "-", "0", ""])
        for a in j["attempts"]:
            codes = ",".join("?" if c is None else str(c) for c in a["exit_codes"])
            rows.append([j["name"], str(j["gpus"]), j["state"], str(a["attempt"]), a["state"], codes or "-",
                         gpu_seconds_as_hours(a["gpu_seconds"]), a["detail"]])
    columns = ["job", "GPUs", "state", "attempt", "attempt state", "exit codes", "GPU-h", "detail"]
    if not any(row[-1] for row in rows):  # every attempt went as planned: nothing to explain
        return columns[:-1], [row[:-1] for row in rows]
    return columns, rows


def _title(r: dict[str, Any]) -> str:
    verdict = "all jobs succeeded" if r["succeeded"] else "not every job succeeded"
    return f"{r['project']} — {r['state']} ({verdict})"


def _where(r: dict[str, Any]) -> str:
    g = r["grant"]
    breach = r["gpu_seconds"]["breach"]
    lost = (f"; guarantee breach {gpu_seconds_as_hours(breach)} GPU-h (the cluster could not provide them: "
            "refunded to the team)") if breach else ""
    return f"{plural(g['width'], 'GPU')} of pool {g['pool']} (grant {g['id']}){lost}"


def _md_table(columns: list[str], rows: list[list[str]], right: int = 0) -> list[str]:
    """A GitHub-flavoured Markdown table; with ``right`` > 0, the columns from that index on
    are right-aligned (figures)."""
    def cell(x: str) -> str:
        return x.strip().replace("|", "\\|") or " "

    align = ["---:" if right and i >= right else "---" for i in range(len(columns))]
    return (["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "|".join(align) + "|"]
            + ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows])


def render_markdown(r: dict[str, Any]) -> str:
    """People's version of the report (GitHub-flavoured Markdown): the same tables
    :func:`print_report` prints, and the receipt."""
    lines = [
        f"# {_title(r)}",
        "",
        f"**Team** {r['team']} · **owner** {r['owner']} · **digest** `{r['digest']}`",
        "",
        "## Problem",
        "",
        r["problem"],
        "",
        "## Window",
        "",
        *_md_table(*_window_table(r)),
        "",
        _where(r) + ".",
        "",
        *_md_table(*_gpu_hours_table(r), right=1),
        "",
        "## Jobs",
        "",
        *_md_table(*_jobs_table(r)),
        "",
        "## Receipt",
        "",
        "```json",
        json.dumps(r["receipt"], indent=2, sort_keys=True),
        "```",
        "",
        f"Logs: `{r['log_dir']}` · report written {when(r['generated_at'], True)}",
        "",
    ]
    return "\n".join(lines)


def print_report(r: dict[str, Any]) -> None:
    """The report for a terminal: the Markdown's tables as tables (no receipt: it is in the
    files, and ``cellsched verify`` checks it)."""
    print(_title(r))
    print(f"  team {r['team']} · owner {r['owner']} · {_where(r)}")
    table(None, *_window_table(r))
    columns, rows = _gpu_hours_table(r)
    table(None, columns, rows, justify=lambda c: "left" if c == "GPU-hours" else "right")
    columns, rows = _jobs_table(r)
    table(None, columns, rows, justify=lambda c: "right" if c in ("GPUs", "attempt", "GPU-h") else "left")
