"""The report for a terminal: rich tables printed from the dict :func:`compute.build` returns."""

from __future__ import annotations

from typing import Any

from cellsched import fmt
from cellsched.fmt import console, duration, header, numeric_right, pct, stamp, table

PROJECT_ROWS = 20
CALENDAR_ROWS = 10


def gpu_hours(x: float | None, *, fixed: bool = False) -> str:
    """GPU-hours for people: :func:`cellsched.fmt.gpu_hours` (the one rule)."""
    return fmt.gpu_hours(x, fixed=fixed)


def hours(x: float | None) -> str:
    return fmt.gpu_hours(x)


def start_offset(project: dict[str, Any]) -> str:
    """A project's actual start against the promised one: ``12 min`` late, ``early 2 h``, ``-``."""
    if project.get("started_early_s"):
        return "early " + duration(project["started_early_s"])
    return duration(project["start_delay_s"])


def headline_rows(r: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, label, text) for the headline figures: the terminal and HTML both use these."""
    u = r["utilisation"]
    b = r["guarantee_breaches"]
    w = r["wait"]
    return [
        ("capacity_gpu_hours", "capacity", hours(r["capacity_gpu_hours"]) + " GPU-h"),
        ("granted_gpu_hours", "granted (windows as they stand)", hours(r["granted_gpu_hours"]) + " GPU-h"),
        ("refunded_gpu_hours", "refunded (released early)", hours(r["refunded_gpu_hours"]) + " GPU-h"),
        ("held_gpu_hours", "held (reserved, elapsed)", hours(r["held_gpu_hours"]) + " GPU-h"),
        ("used_gpu_hours", "used by jobs", hours(r["used_gpu_hours"]) + " GPU-h"),
        ("idle_reserved_gpu_hours", "idle while reserved", hours(r["idle_reserved_gpu_hours"]) + " GPU-h"),
        ("unreserved_gpu_hours", "unreserved", hours(r["unreserved_gpu_hours"]) + " GPU-h"),
        ("committed_gpu_hours", "committed (ahead, in period)", hours(r["committed_gpu_hours"]) + " GPU-h"),
        ("utilisation.used_over_capacity", "utilisation (used / capacity)", pct(u["used_over_capacity"])),
        ("utilisation.used_over_held", "used / held", pct(u["used_over_held"])),
        ("guarantee_breaches.count", "guarantee breaches",
         f"{b['count']} ({hours(b['gpu_hours'])} GPU-h)"),
        ("admissions.granted", "admitted", str(r["admissions"]["granted"])),
        ("refusals.count", "refused", str(r["refusals"]["count"])),
        ("wait.p50_s", "wait submit → start p50", duration(w["p50_s"])),
        ("wait.p95_s", "wait submit → start p95", duration(w["p95_s"])),
    ]


def print_report(r: dict[str, Any]) -> None:
    p = r["period"]
    who = f"team {r['team']}" if r["team"] else "all teams"
    print(f"cluster utilisation  ·  {who}  ·  {fmt.span(p['since'], p['until'])}")
    if r["empty"]:
        print(f"  nothing in this period: no grants, job runs or decisions between "
              f"{stamp(p['since'])} and {fmt.when(p['until'])}.")
        print(f"  capacity {hours(r['capacity_gpu_hours'])} GPU-h, all unreserved.")
        return
    if p["elapsed_until"] < p["until"]:
        print(f"  (period runs past now, {fmt.when(p['now'])}: held, used and utilisation cover the part "
              "until now; capacity for utilisation is the elapsed part)")
    table(None, ["figure", "value"], [(label, text) for _k, label, text in headline_rows(r)],
          justify=lambda c: "right" if c == "value" else "left")
    if r["refusals"]["by_reason"]:
        table("refusals by reason", ["reason", "count"], sorted(r["refusals"]["by_reason"].items()),
              justify=lambda c: "right" if c == "count" else "left")
    teams = [t for t in r["teams"] if t["grants"] or t["in_config"]]
    if teams:
        table("teams (GPU-hours)",
              ["team", "allowance", "granted", "used", "refunded", "remaining", "share of cluster",
               "share of allowance", header("runs out")],
              [[t["team"],
                "-" if t["allowance_gpu_hours"] is None else f"{hours(t['allowance_gpu_hours'])}/{t['period']}",
                hours(t["granted_gpu_hours"]), hours(t["used_gpu_hours"]), hours(t["refunded_gpu_hours"]),
                _remaining(t),
                pct(t["share_of_cluster"]), pct(t["share_of_allowance"]),
                _runs_out(t)]
               for t in teams],
              justify=lambda c: "left" if c in ("team", header("runs out")) else "right")
    lending = r.get("lending") or {}
    if lending.get("by"):
        table(f"lent to best-effort work (GPU-hours; {lending['preemptions']} preemptions)",
              ["lender", "borrower", "GPU-hours"],
              [(x["lender"], x["borrower"], gpu_hours(x["gpu_hours"])) for x in lending["by"]],
              justify=numeric_right("lender", "borrower"))
    table("pools (GPU-hours)", ["pool", "GPUs", "capacity", "granted", "held", "used", "idle reserved", "utilisation"],
          [[pl["pool"], pl["gpus"], hours(pl["capacity_gpu_hours"]), hours(pl["granted_gpu_hours"]),
            hours(pl["held_gpu_hours"]), hours(pl["used_gpu_hours"]), hours(pl["idle_reserved_gpu_hours"]),
            pct(pl["utilisation"])] for pl in r["pools"]],
          justify=lambda c: "left" if c == "pool" else "right")
    projects = r["projects"]
    if projects:
        shown = projects[:PROJECT_ROWS]
        table(f"projects (whole windows; {len(projects)} in period)",
              ["project", "team", "state", "GPUs", "granted GPU-h", "used GPU-h", "refunded GPU-h",
               header("promised start"), header("actual start"), "delay"],
              [[x["project"], x["team"], x["state"], x["gpus"], hours(x["granted_gpu_hours"]),
                hours(x["used_gpu_hours"]), hours(x["refunded_gpu_hours"]), stamp(x["promised_start"]),
                stamp(x["started_at"]), start_offset(x)] for x in shown],
              justify=lambda c: "right" if c in ("GPUs", "granted GPU-h", "used GPU-h", "refunded GPU-h",
                                                 "delay") else "left")
        if len(projects) > len(shown):
            print(f"  … {len(projects) - len(shown)} more (see --json or --html)")
    upcoming = [(pl["pool"], g) for pl in r["pools"] for g in pl["calendar"]["grants"] if g["start"] >= p["now"]]
    if upcoming:
        upcoming.sort(key=lambda x: (x[1]["start"], x[1]["grant"]))
        table("calendar: next grants to start", ["pool", "project", "team", "GPUs", header("start"), header("end")],
              [[pool, g["project"], g["team"], g["gpus"], stamp(g["start"]), stamp(g["end"])]
               for pool, g in upcoming[:CALENDAR_ROWS]],
              justify=lambda c: "right" if c == "GPUs" else "left")
        if len(upcoming) > CALENDAR_ROWS:
            print(f"  … {len(upcoming) - CALENDAR_ROWS} more ahead")
    console()  # keeps rich's import where tables already paid for it


def _remaining(t: dict[str, Any]) -> str:
    if t["remaining_gpu_hours"] is None:
        return "-"
    if t.get("overdrawn_gpu_hours"):
        return f"0 (overdrawn by {hours(t['overdrawn_gpu_hours'])})"
    return hours(t["remaining_gpu_hours"])


def _runs_out(t: dict[str, Any]) -> str:
    f = t["forecast"]
    if f is None:
        return "-"
    if f["runs_out_at"] is not None:
        return stamp(f["runs_out_at"])
    return f["note"]
