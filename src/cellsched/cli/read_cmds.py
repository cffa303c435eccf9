"""Read commands: budget and status (each with the daemon's state when none is alive)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cellsched.cli.errors import handled
from cellsched.cli.render import emit_json, hours, local, table, tzname
from cellsched.cli.state import JsonFlag, backend


@handled
def budget(
    name: Annotated[str, typer.Argument(help="A team, or a project to see its team's budget for it.")],
    json_out: JsonFlag = False,
) -> None:
    """A team's allowance this period: committed, held, used, refunded, remaining, per project.

    **Example**: cellsched budget interp --json
    """
    data = backend().budget(name)
    if json_out:
        emit_json(data)
        return
    span = ("all time" if data["period"] == "none" else
            f"{local(data['period_start'])} → {local(data['period_end'])} {tzname()}")
    print(f"team {data['team']}  ·  {data['period']} {span}")
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
    print_down(data["daemon"])


@handled
def status(
    project: Annotated[Optional[str], typer.Argument(help="One project (name or name@digest); all if omitted.")] = None,
    json_out: JsonFlag = False,
) -> None:
    """Every project: state, window, progress; with a project, its jobs and attempts too.

    **Example**: cellsched status pythia-ablation
    """
    b = backend()
    items = b.status(project)
    if json_out:
        emit_json(items)
        return
    if not items:
        print("no projects yet (submit one with `cellsched submit projects/<name>.toml`)")
        # Nothing to carry it in the list: ask for the daemon's state on its own.
        print_down(b.daemon())
        return
    table(None, ["project", "state", "pool", "gpus", f"start ({tzname()})", "end", "progress", "used GPU-h", "note"],
          [[it["project"], it["state"], it["pool"], it["width"], local(it["start"]), local(it["end"]),
            f"{it['progress']:.0%}", hours(it["used_gpu_hours"]),
            it.get("note") or
            (("breach " + hours(it["breach_gpu_hours"]) + " GPU-h") if it["breach_gpu_hours"] else
             ("early start" if it["start"] < it["promised_start"] else ""))]
           for it in items])
    print_down(items[0]["daemon"])
    if project is not None:
        jobs = items[0]["jobs"]
        if jobs:
            table("jobs", ["job", "attempt", "state", "gpus", "started", "ended", "GPU-h", "exit codes"],
                  [[j["job"], j["attempt"], j["state"], j["gpus"], local(j["started_at"], True),
                    local(j["ended_at"], True), hours(j["gpu_hours"]), ",".join(map(str, j["exit_codes"]))]
                   for j in jobs])


def print_down(daemon: dict) -> None:  # type: ignore[type-arg]
    """The one-line daemon state (``daemon`` JSON), printed only when no daemon is alive."""
    if not daemon["alive"]:
        print(daemon["message"])
