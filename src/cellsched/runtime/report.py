"""The completion report: what a project was granted, what it used, how each job went.

Built from ledger rows only (so a restarted daemon writes the same report), as plain JSON;
the Markdown is rendered from that JSON.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Sequence

from cellsched.executor.base import attempt_tails
from cellsched.ledger.tables import GrantRow, JobRunRow, ProjectRow
from cellsched.runtime.plan import AttemptView, job_states
from cellsched.spec.models import ProjectSpec

REPORT_VERSION = 1


TAIL_BYTES = 2048


def _iso(t: int | None) -> str | None:
    if t is None:
        return None
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _dur(s: int) -> str:
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def render_markdown(r: dict[str, Any]) -> str:
    """People's version of the report (GitHub-flavoured Markdown)."""
    g, w, gh = r["grant"], r["window"], r["gpu_hours"]
    verdict = "all jobs succeeded" if r["succeeded"] else "not every job succeeded"
    lines = [
        f"# {r['project']} — {r['state']} ({verdict})",
        "",
        f"**Team** {r['team']} · **owner** {r['owner']} · **digest** `{r['digest']}`",
        "",
        "## Problem",
        "",
        r["problem"],
        "",
        "## Window",
        "",
        "| | start | end | length |",
        "|---|---|---|---|",
        f"| granted | {g['promised_start_utc']} | {g['promised_end_utc']} | {_dur(w['granted_s'])} |",
        f"| held | {g['started_at_utc'] or '-'} | {g['ended_at_utc'] or '-'} | {_dur(w['held_s'])} |",
        "",
        f"{g['width']} GPUs of pool `{g['pool']}` (grant {g['id']}). GPU-hours: "
        f"charged {gh['charged']:.4g}, held {gh['held']:.4g}, used by jobs {gh['used']:.4g}, "
        f"refunded {gh['refunded']:.4g}"
        + (f", **guarantee breach {gh['breach']:.4g}** (GPU-hours the cluster could not provide, refunded to the team)"
           if r["gpu_seconds"]["breach"] else ", guarantee breach 0")
        + ".",
        "",
        "## Jobs",
        "",
        "| job | gpus | state | attempt | attempt state | exit codes | GPU-hours | detail |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for j in r["jobs"]:
        if not j["attempts"]:
            lines.append(f"| {j['name']} | {j['gpus']} | {j['state']} | - | - | - | 0 | |")
        for a in j["attempts"]:
            codes = ",".join("?" if c is None else str(c) for c in a["exit_codes"])
            lines.append(
                f"| {j['name']} | {j['gpus']} | {j['state']} | {a['attempt']} | {a['state']} | "
                f"{codes} | {a['gpu_hours']:.4g} | {a['detail']} |"
            )
    lines += [
        "",
        "## Receipt",
        "",
        "```json",
        json.dumps(r["receipt"], indent=2, sort_keys=True),
        "```",
        "",
        f"Logs: `{r['log_dir']}` · report written {r['generated_at_utc']}",
        "",
    ]
    return "\n".join(lines)
