"""Read commands: budget and status (each with the daemon's state when none is alive)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cellsched.cli.errors import handled
from cellsched.cli.render import emit_json, hours, iso, local, table, tzname
from cellsched.cli.state import JsonFlag, env


@handled
def budget(
    name: Annotated[str, typer.Argument(help="A team, or a project to see its team's budget for it.")],
    json_out: JsonFlag = False,
) -> None:
    """A team's allowance this period: committed, held, used, refunded, remaining, per project.

    **Example**: cellsched budget interp --json
    """
    from cellsched import service
    from cellsched.runtime.clock import now_s

    e = env()
    b = service.budget(e, name, now_s())
    data = b.to_json()
    daemon = daemon_state(e)
    if json_out:
        data["period_start_utc"], data["period_end_utc"] = iso(data["period_start"]), iso(data["period_end"])
        data["daemon"] = daemon.to_json()
        emit_json(data)
        return
    span = "all time" if b.period == "none" else f"{local(b.period_start)} → {local(b.period_end)} {tzname()}"
    print(f"team {b.team}  ·  {b.period} {span}")
    print(
        f"  allowance {hours(data['allowance_gpu_hours'])}  committed {hours(data['committed_gpu_hours'])}  "
        f"held {hours(data['held_gpu_hours'])}  used {hours(data['used_gpu_hours'])}  "
        f"refunded {hours(data['refunded_gpu_hours'])}  remaining {hours(data['remaining_gpu_hours'])}  (GPU-hours)"
    )
    if data["projects"]:
        table(None, ["project", "state", "granted", "committed", "held", "used", "refunded"],
              [[p["project"], p["state"], hours(p["granted_gpu_hours"]), hours(p["committed_gpu_hours"]),
                hours(p["held_gpu_hours"]), hours(p["used_gpu_hours"]), hours(p["refunded_gpu_hours"])]
               for p in data["projects"]],
              justify=lambda c: "left" if c in ("project", "state") else "right")
    print_down(daemon)


@handled
def status(
    project: Annotated[Optional[str], typer.Argument(help="One project (name or name@digest); all if omitted.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Every project: state, window, progress; with a project, its jobs and attempts too.

    **Example**: cellsched status pythia-ablation
    """
    from cellsched import service
    from cellsched.runtime.clock import now_s

    e = env()
    items = service.status(e, project, now_s())
    daemon = daemon_state(e)
    if json_out:
        for it in items:
            for k in ("start", "end", "promised_start", "promised_end", "started_at", "ended_at"):
                it[k + "_utc"] = iso(it[k])
            it["daemon"] = daemon.to_json()  # the output stays a list: each item carries it
        emit_json(items)
        return
    if not items:
        print("no projects yet (submit one with `cellsched submit projects/<name>.toml`)")
        print_down(daemon)
        return
    table(None, ["project", "state", "pool", "gpus", f"start ({tzname()})", "end", "progress", "used GPU-h", "note"],
          [[it["project"], it["state"], it["pool"], it["width"], local(it["start"]), local(it["end"]),
            f"{it['progress']:.0%}", hours(it["used_gpu_hours"]),
            it.get("note") or
            (("breach " + hours(it["breach_gpu_hours"]) + " GPU-h") if it["breach_gpu_hours"] else
             ("early start" if it["start"] < it["promised_start"] else ""))]
           for it in items])
    print_down(daemon)
    if project is not None:
        jobs = items[0]["jobs"]
        if jobs:
            table("jobs", ["job", "attempt", "state", "gpus", "started", "ended", "GPU-h", "exit codes"],
                  [[j["job"], j["attempt"], j["state"], j["gpus"], local(j["started_at"], True),
                    local(j["ended_at"], True), hours(j["gpu_hours"]), ",".join(map(str, j["exit_codes"]))]
                   for j in jobs])


def daemon_state(e):  # type: ignore[no-untyped-def]
    """Who serves the ledger (``cellsched daemon``), for the daemon line and ``--json``."""
    from cellsched.ledger.lease import state

    return state(e.ledger)


def print_down(daemon) -> None:  # type: ignore[no-untyped-def]
    """The one-line daemon state, printed only when no daemon is alive."""
    line = daemon.down()
    if line:
        print(line)
