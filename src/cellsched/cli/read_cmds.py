"""Read commands: budget and status (each with the daemon's state when none is alive)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cellsched import fmt
from cellsched.cli.errors import handled
from cellsched.cli.state import JsonFlag, backend
from cellsched.fmt import emit_json, gpu_hours, header, stamp, table


@handled
def budget(
    name: Annotated[str, typer.Argument(help="A team, or a project to see its team's budget for it.")],
    json_out: JsonFlag = False,
) -> None:
    """A team's allowance this period: committed, held, used, refunded, remaining, per project;
    and its best-effort allowance: charged, reserved by queued work, remaining.

    **Example**: cellsched budget interp --json
    """
    data = backend().budget(name)
    if json_out:
        emit_json(data)
        return
    span = "all time" if data["period"] == "none" else fmt.span(data["period_start"], data["period_end"])
    print(f"team {data['team']}  ·  {data['period']} {span}")
    print(
        f"  allowance {gpu_hours(data['allowance_gpu_hours'])}  committed {gpu_hours(data['committed_gpu_hours'])}  "
        f"held {gpu_hours(data['held_gpu_hours'])}  used {gpu_hours(data['used_gpu_hours'])}  "
        f"refunded {gpu_hours(data['refunded_gpu_hours'])}  remaining {gpu_hours(data['remaining_gpu_hours'])}  "
        "(GPU-hours)"
    )
    from cellsched.cli import best_effort

    line = best_effort.budget_line(data)
    if line:
        print(line)
    if data.get("overdrawn_gpu_hours"):
        print(f"  overdrawn {gpu_hours(data['overdrawn_gpu_hours'])} GPU-hours: the allowance is below what is "
              "already granted (the grants stand; new submits wait for the next period)")
    if data["projects"]:
        table(None, ["project", "state", "granted", "committed", "held", "used", "refunded"],
              [[p["project"], p["state"], gpu_hours(p["granted_gpu_hours"]), gpu_hours(p["committed_gpu_hours"]),
                gpu_hours(p["held_gpu_hours"]), gpu_hours(p["used_gpu_hours"]), gpu_hours(p["refunded_gpu_hours"])]
               for p in data["projects"]],
              justify=fmt.numeric_right("project", "state"))
    best_effort.print_budget_lines(data)
    print_down(data["daemon"])


@handled
def status(
    project: Annotated[Optional[str], typer.Argument(help="One project (name or name@digest); all if omitted.")] = None,
    json_out: JsonFlag = False,
    everything: Annotated[bool, typer.Option("--all", help="Also projects that ended more than 7 days ago.")] = False,
) -> None:
    """Every live project, and those that ended in the last 7 days: state, window, progress;
    with a project, its jobs and attempts too.

    Best-effort work is its own section: tasks queued, running and done, preemptions,
    GPU-hours charged of its budget; with its name, every task.

    **Example**: cellsched status pythia-ablation
    """
    b = backend()
    items = b.status(project, everything)
    if json_out:
        emit_json(items)
        return
    if not items:
        if everything:
            print("no projects yet (submit one with `cellsched submit projects/<name>.toml`)")
        else:  # (older ones would not be counted in an empty list: --all says)
            print("no projects live or ended in the last 7 days (submit one with `cellsched submit "
                  "projects/<name>.toml`; `cellsched status --all` lists older ones)")
        # Nothing to carry it in the list: ask for the daemon's state on its own.
        print_down(b.daemon())
        return
    from cellsched.cli import best_effort

    if best_effort.is_best_effort(items[0]) and project is not None:  # one best-effort submission
        best_effort.print_status(items, None)
        print_down(items[0]["daemon"])
        best_effort.print_tasks(items[0])
        return
    borrowers = [it for it in items if best_effort.is_best_effort(it)]
    older, since = items[0].get("older_not_listed") or 0, items[0].get("listed_since")
    items = [it for it in items if not best_effort.is_best_effort(it)]
    if items:
        print_status_table(items)
    if borrowers:
        best_effort.print_status(borrowers)
    if older:  # (names no longer live, left out: ``--all`` lists them)
        print(f"and {fmt.plural(older, 'project')} that ended before {fmt.when(since)}: `cellsched status --all`")
    if not items:
        print_down(borrowers[0]["daemon"])
        return
    if project is not None:
        from cellsched.cli.project_cmds import expected_line

        it = items[0]
        line = expected_line(it.get("expected_start"), it.get("expected_start_basis"), it["start"])
        if line:
            print(line)
    print_down(items[0]["daemon"])
    if project is not None:
        jobs = items[0]["jobs"]
        if jobs:
            table("jobs", ["job", "attempt", "state", "gpus", header("started"), header("ended"), "GPU-h",
                           "exit codes"],
                  [[j["job"], j["attempt"], j["state"], j["gpus"], stamp(j["started_at"], True),
                    stamp(j["ended_at"], True), gpu_hours(j["gpu_hours"]), ",".join(map(str, j["exit_codes"]))]
                   for j in jobs],
                  justify=fmt.numeric_right("job", "state", header("started"), header("ended"), "exit codes"))


STATUS_COLUMNS = ["project", "state", "pool", "gpus", header("start"), header("end"), "progress", "used GPU-h",
                  "note"]
EXPECTED = header("expected")  # after start, when a grant waits


def print_status_table(items: list[dict]) -> None:  # type: ignore[type-arg]
    """The ``status`` table from its JSON items (``cellsched demo`` prints the same). With
    a waiting grant among them, its expected start beside its start (``expected (UTC)``)."""
    rows = [[it["project"], it["state"], it["pool"], it["width"], stamp(it["start"]), stamp(it["end"]),
             f"{it['progress']:.0%}", gpu_hours(it["used_gpu_hours"]), status_note(it)] for it in items]
    columns = list(STATUS_COLUMNS)
    cells = [expected_cell(it) for it in items]
    if any(cells):
        columns.insert(5, EXPECTED)
        for row, cell in zip(rows, cells):
            row.insert(5, cell)
    table(None, columns, rows,
          justify=fmt.numeric_right("project", "state", "pool", header("start"), EXPECTED, header("end"), "note"))


def expected_cell(it: dict) -> str:  # type: ignore[type-arg]
    """A waiting grant's expected start (``cellsched.expected``); blank once its window has
    begun, or for a grant no longer live."""
    if it.get("expected_start") is None or it.get("expected_start_basis") == "started":
        return ""
    return stamp(it["expected_start"])


def status_note(it: dict) -> str:  # type: ignore[type-arg]
    """A grant's note: the service's, else the GPU-hours lost to a breach, else an early start."""
    if it.get("note"):
        return str(it["note"])
    if it["breach_gpu_hours"]:
        return f"breach {fmt.gpu_h(it['breach_gpu_hours'])}"
    return "early start" if it["start"] < it["promised_start"] else ""


def print_down(daemon: dict) -> None:  # type: ignore[type-arg]
    """The one-line daemon state (``daemon`` JSON), printed only when no daemon is alive."""
    if not daemon["alive"]:
        print(daemon["message"])
