"""How the commands print best-effort work (docs/lending.md): a submit's answer, a cancel,
the ``status`` section and the ``budget`` line, each from the JSON the command prints with
``--json`` alone (so a local ledger and a server print the same)."""

from __future__ import annotations

from typing import Any

from cellsched import fmt
from cellsched.fmt import gpu_hours, header, stamp, table

KIND = "best-effort"


def is_best_effort(item: dict[str, Any]) -> bool:
    return item.get("kind") == KIND


def tasks_line(t: dict[str, Any]) -> str:
    """``62 queued, 2 running, 0 done of 64`` (failed and cancelled only when there are some)."""
    out = f"{t['queued']} queued, {t['running']} running, {t['succeeded']} done"
    for k in ("failed", "cancelled"):
        if t.get(k):
            out += f", {t[k]} {k}"
    return f"{out} of {t['total']}"


def print_submit(data: dict[str, Any], facts: dict[str, Any]) -> None:
    """A best-effort submit's answer: queued (no window), or refused with its reason."""
    would = data.get("dry_run") and not data["existing"]
    if data["decision"] != "queued":
        r = data["refusal"]
        print(f"{'would be refused' if data.get('dry_run') else 'refused'}  {data['project']}  "
              f"{r['reason']}: {r['message']}")
        return
    be = data["best_effort"]
    pool = facts["pools"].get(be["pool"])
    gpu_type = pool["gpu_type"] if pool else be["pool"]
    again = "  (already queued)" if data["existing"] else ""
    word = "would be queued" if would else "queued"
    print(f"{word}  {data['project']}   best-effort: {tasks_line(be['tasks'])} tasks, up to "
          f"{fmt.plural(be['max_gpus'], 'GPU')} of {gpu_type} ({be['pool']}) at once{again}")
    print("  no window and no guarantee: its tasks run on idle GPUs and may be preempted (SIGTERM, "
          "then SIGKILL after the grace) and requeued")
    if data.get("best_effort_remaining_gpu_hours") is not None:
        team = facts["teams"].get(be["team"])
        period = team["period"] if team else "period"
        when = "in total" if period == "none" else f"this {period}"
        print(f"  charged for the time its tasks hold GPUs, up to {gpu_hours(be['budget_gpu_hours'])} GPU-hours, to the "
              f"best-effort allowance of team {be['team']} (remaining {when} after it: "
              f"{gpu_hours(data['best_effort_remaining_gpu_hours'])} of "
              f"{gpu_hours(data['best_effort_allowance_gpu_hours'])})")
    if would:
        print("  nothing written (dry run): submit it to queue it")
    else:
        print(f"  follow it with `cellsched status {data['project']}`; stop it with `cellsched cancel {data['project']}`")


def print_cancel(out: dict[str, Any]) -> None:
    be = out["best_effort"]
    running = out["running_tasks"]
    tail = (f"; {fmt.plural(running, 'running task')} stopped by the daemon (SIGTERM, then SIGKILL after the grace)"
            if running else "")
    print(f"cancelled  {out['project']}  best-effort: {fmt.plural(out['cancelled_tasks'], 'queued task')} "
          f"cancelled{tail}; charged {gpu_hours(be['charged_gpu_hours'])} of {gpu_hours(be['budget_gpu_hours'])} "
          "GPU-hours")


COLUMNS = ["project", "state", "pool", "queued", "running", "done", "of", "preempted", "charged GPU-h",
           "budget GPU-h", "note"]


def print_status(items: list[dict[str, Any]], title: str | None = "best-effort work") -> None:
    """The ``status`` section of best-effort submissions."""
    table(title, COLUMNS,
          [[it["project"], it["state"], it["pool"], it["tasks"]["queued"], it["tasks"]["running"],
            it["tasks"]["succeeded"], it["tasks"]["total"], it["preemptions"], gpu_hours(it["charged_gpu_hours"]),
            gpu_hours(it["budget_gpu_hours"]), it.get("note") or _ended(it)]
           for it in items],
          justify=fmt.numeric_right("project", "state", "pool", "note"))


def _ended(it: dict[str, Any]) -> str:
    t = it["tasks"]
    parts = [f"{t[k]} {k}" for k in ("failed", "cancelled") if t.get(k)]
    return ", ".join(parts)


def print_tasks(item: dict[str, Any]) -> None:
    """One submission's tasks (``status <name>``)."""
    tasks = item.get("task_list") or []
    if not tasks:
        return
    table("tasks", ["job", "index", "state", "gpus", "attempt", "preempted", header("queued"), header("started"),
                    header("ended"), "held GPU-h", "detail"],
          [[t["job"], t["index"], t["state"], t["gpus"], t["attempt"], t["preemptions"], stamp(t["queued_at"], True),
            stamp(t["started_at"], True), stamp(t["ended_at"], True), gpu_hours(t["held_gpu_hours"]), t["detail"]]
           for t in tasks],
          justify=fmt.numeric_right("job", "state", header("queued"), header("started"), header("ended"), "detail"))


def budget_line(data: dict[str, Any]) -> str | None:
    """``budget``'s best-effort line, when the team has a best-effort allowance or work."""
    if not data.get("best_effort_allowance_gpu_hours") and not data.get("best_effort"):
        return None
    return (f"  best-effort: allowance {gpu_hours(data['best_effort_allowance_gpu_hours'])}  "
            f"charged {gpu_hours(data['best_effort_charged_gpu_hours'])}  "
            f"reserved {gpu_hours(data['best_effort_reserved_gpu_hours'])}  "
            f"remaining {gpu_hours(data['best_effort_remaining_gpu_hours'])}  (GPU-hours)")


def print_budget_lines(data: dict[str, Any]) -> None:
    items = data.get("best_effort") or []
    if items:
        table("best-effort", ["project", "state", "budget", "charged"],
              [[p["project"], p["state"], gpu_hours(p["budget_gpu_hours"]), gpu_hours(p["charged_gpu_hours"])]
               for p in items],
              justify=fmt.numeric_right("project", "state"))
