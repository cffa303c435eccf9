"""The utilisation report as one HTML file and as PNG charts, from the dict of
:func:`cellsched.report.compute.build` (the same dict ``--json`` prints)."""

from __future__ import annotations

from typing import Any

from cellsched.report import html
from cellsched.report.charts import Chart
from cellsched.fmt import duration, gpu_hours, pct, span, stamp, when
from cellsched.report.terminal import start_offset

PROJECT_ROWS = 200
CALENDAR_ROWS = 50


def lookup(data: dict[str, Any], dotted: str) -> Any:
    """``lookup(r, "utilisation.used_over_held")``: a value by dotted path."""
    v: Any = data
    for part in dotted.split("."):
        v = v[part]
    return v


def gh(x: float | None) -> str:
    """GPU-hours for a page: thousands separated, one decimal, small figures never shown as
    zero (:func:`cellsched.fmt.gpu_hours`)."""
    return gpu_hours(x, fixed=True)


def _day(t: int | None) -> str:
    """A time in a page whose headers and notes name the zone (UTC): ``2026-12-01 00:00``."""
    return stamp(t)


def headline(r: dict[str, Any]) -> list[html.Stat]:
    """The headline figures, each tagged with its JSON key and exact value."""
    u, b, w = r["utilisation"], r["guarantee_breaches"], r["wait"]
    stats = [html.Stat(label, gh(lookup(r, key)), "GPU-h", key=key, value=lookup(r, key)) for key, label in (
        ("capacity_gpu_hours", "capacity"),
        ("granted_gpu_hours", "granted (windows as they stand)"),
        ("refunded_gpu_hours", "refunded (released early)"),
        ("held_gpu_hours", "held (reserved, elapsed)"),
        ("used_gpu_hours", "used by jobs"),
        ("idle_reserved_gpu_hours", "idle while reserved"),
        ("unreserved_gpu_hours", "unreserved"),
        ("committed_gpu_hours", "committed (ahead, in period)"),
    )]
    stats += [
        html.Stat("utilisation (used / capacity)", pct(u["used_over_capacity"]), key="utilisation.used_over_capacity",
                  value=u["used_over_capacity"]),
        html.Stat("used / held", pct(u["used_over_held"]), key="utilisation.used_over_held", value=u["used_over_held"]),
        html.Stat("guarantee breaches", str(b["count"]), f"grants, {gh(b['gpu_hours'])} GPU-h",
                  key="guarantee_breaches.count", value=b["count"], bad=b["count"] > 0),
        html.Stat("breached GPU-hours", gh(b["gpu_hours"]), "GPU-h", key="guarantee_breaches.gpu_hours",
                  value=b["gpu_hours"], bad=b["gpu_hours"] > 0),
        html.Stat("admitted", str(r["admissions"]["granted"]), "grants", key="admissions.granted",
                  value=r["admissions"]["granted"]),
        html.Stat("refused", str(r["refusals"]["count"]), "submits", key="refusals.count", value=r["refusals"]["count"]),
        html.Stat("wait submit → start, p50", duration(w["p50_s"]), key="wait.p50_s", value=w["p50_s"]),
        html.Stat("wait submit → start, p95", duration(w["p95_s"]), key="wait.p95_s", value=w["p95_s"]),
    ]
    return stats


def report_charts(r: dict[str, Any]) -> list[Chart]:
    """Every chart of the report, drawn once (for the HTML and for ``--png``)."""
    from cellsched.report import charts

    if r["empty"]:
        return []
    p = r["period"]
    now = p["now"]
    out: list[Chart] = []
    parts = {"used": r["used_gpu_hours"], "idle while reserved": r["idle_reserved_gpu_hours"]}
    others = r["elapsed_capacity_gpu_hours"] - r["unreserved_gpu_hours"] - r["held_gpu_hours"]
    if r["team"] and others > 1e-9:
        parts["held by other teams"] = others
    parts["unreserved"] = r["unreserved_gpu_hours"]
    out.append(charts.stacked_bar("Elapsed capacity: used, idle while reserved, unreserved", parts,
                                  unit="GPU-hours", name="capacity"))
    marker = (now, "now") if p["since"] < now < p["until"] else None
    for pl in r["pools"]:
        if not pl.get("in_config", True):
            continue  # a pool gone from the config: its figures are in the table, no chart
        tl = pl["timeline"]
        out.append(charts.stacked_panels(
            f"Pool {pl['pool']} ({pl['gpus']} × {pl['gpu_type']}): capacity vs reserved vs used, by team",
            tl["starts"],
            [("reserved (granted windows)", tl["reserved_gpus"]), ("used by jobs", tl["used_gpus"])],
            ylabel="GPUs (mean per bucket)", xlabel=f"time (UTC; buckets of {duration(tl['bucket_s'])})",
            line=("capacity", tl["capacity_gpus"]), name=f"pool-{pl['pool']}-timeline", step=tl["bucket_s"],
            vline=marker,
        ))
        cal = pl["calendar"]
        if cal["grants"]:
            out.append(charts.stacked_area(
                f"Pool {pl['pool']}: calendar ahead, GPUs reserved by team (the gap under capacity is free)",
                cal["starts"], cal["reserved_gpus"], ylabel="GPUs reserved (mean per bucket)",
                xlabel=f"time (UTC; buckets of {duration(cal['bucket_s'])})",
                lines={"capacity": [cal["capacity_gpus"]] * len(cal["starts"])},
                name=f"pool-{pl['pool']}-calendar", step=cal["bucket_s"],
            ))
    burn: dict[str, tuple[list[int], list[float | None]]] = {}
    fc: dict[str, tuple[list[int], list[float]]] = {}
    for t in r["teams"]:
        bd = t["burndown"]
        if not bd or not bd["allowance_gpu_hours"]:
            continue
        a = bd["allowance_gpu_hours"]
        burn[t["team"]] = (bd["times"], [100 * v / a for v in bd["remaining_gpu_hours"]])
        f = t["forecast"]
        ref = p["elapsed_until"]
        rem = t["remaining_gpu_hours"]
        if f and f["rate_gpu_hours_per_day"] > 0 and rem > 0:
            end = f["runs_out_at"] or t["allowance_period_end"] or p["until"]
            left = rem - f["rate_gpu_hours_per_day"] * (end - ref) / 86400
            fc[t["team"]] = ([ref, end], [100 * rem / a, 100 * max(0.0, left) / a])
    if burn:
        out.append(charts.lines("Allowance burn-down: remaining after bookings, with forecast at the current rate",
                                burn, ylabel="remaining (% of the period's allowance)", name="burndown",
                                dashed=fc, hline=(0.0, "used up")))
    reasons = r["refusals"]["by_reason"]
    if reasons:
        out.append(charts.bar("Refusals by reason", list(reasons), list(reasons.values()), ylabel="refusals (count)",
                              xlabel="reason", name="refusals", horizontal=True, colour="#e15759"))
    return out


def report_page(r: dict[str, Any], charts: list[Chart] | None = None) -> str:
    """The whole report as one self-contained HTML document."""
    if charts is None:
        charts = report_charts(r)
    by_name = {c.name: c for c in charts}
    p = r["period"]
    who = f"team {r['team']}" if r["team"] else "all teams"
    title = "cellsched: cluster utilisation"
    sub = f"{who} · {span(p['since'], p['until'])} · generated for {when(p['now'])}"
    if r["empty"]:
        body = (f'<p class="empty" id="empty">Nothing in this period: no grants, job runs or decisions between '
                f"{html.escape(_day(p['since']))} and {html.escape(when(p['until']))}.</p>")
        body += html.stats([html.Stat("capacity (all unreserved)", gh(r["capacity_gpu_hours"]), "GPU-h",
                                      key="capacity_gpu_hours", value=r["capacity_gpu_hours"])])
        return html.page(title, [html.Section("Summary", body, id="summary")], subtitle=sub)

    sections: list[html.Section] = []
    note = None
    if p["elapsed_until"] < p["until"]:
        note = (f"The period runs past now ({when(p['now'])}): held, used, idle and utilisation cover the "
                "elapsed part; utilisation divides by the elapsed capacity.")
    body = html.stats(headline(r))
    if "capacity" in by_name:
        body += by_name["capacity"].html()
    sections.append(html.Section("Summary", body, id="summary", note=note))

    # Decisions
    dec = r["admissions"]
    w = r["wait"]
    body = html.table(["decision", "count"], [[k, v] for k, v in dec.items()], numeric={"count"})
    if r["refusals"]["by_reason"]:
        body += "<h3>Refusals by reason</h3>" + html.table(
            ["reason", "count"], list(r["refusals"]["by_reason"].items()), numeric={"count"},
            row_keys=[f"refusals.by_reason.{k}" for k in r["refusals"]["by_reason"]],
            cell_keys=[None, ""], cell_values=[[None, v] for v in r["refusals"]["by_reason"].values()])
        if "refusals" in by_name:
            body += by_name["refusals"].html()
    src = w["sources"]
    body += (f'<p class="note">Wait from submit to start over {w["count"]} grants submitted in the period: '
             f'p50 {html.escape(duration(w["p50_s"]))}, p95 {html.escape(duration(w["p95_s"]))} '
             f'({src["measured"]} measured starts, {src["granted_start"]} granted window starts; '
             f'{w["started_late"]} started later than promised).</p>')
    sections.append(html.Section("Admissions, refusals and waiting", body, id="decisions"))

    # Teams
    cols = ["team", "allowance", "granted", "used", "refunded", "remaining", "share of cluster",
            "share of allowance", "runs out (UTC)"]
    keys = [None, "allowance_gpu_hours", "granted_gpu_hours", "used_gpu_hours", "refunded_gpu_hours",
            "remaining_gpu_hours", "share_of_cluster", "share_of_allowance", None]
    teams = r["teams"]
    rows, values = [], []
    for t in teams:
        f = t["forecast"]
        runs_out = "-" if f is None else (_day(f["runs_out_at"]) if f["runs_out_at"] else f["note"])
        allowance = "-" if t["allowance_gpu_hours"] is None else f"{gh(t['allowance_gpu_hours'])} / {t['period']}"
        remaining = gh(t["remaining_gpu_hours"])
        if t.get("overdrawn_gpu_hours"):
            remaining += f" (overdrawn by {gh(t['overdrawn_gpu_hours'])})"
        rows.append([t["team"], allowance, gh(t["granted_gpu_hours"]), gh(t["used_gpu_hours"]),
                     gh(t["refunded_gpu_hours"]), remaining, pct(t["share_of_cluster"]),
                     pct(t["share_of_allowance"]), runs_out])
        values.append([None if k is None else t[k] for k in keys])
    body = html.table(cols, rows, numeric=set(cols[1:8]), row_keys=[f"teams.{t['team']}" for t in teams],
                      cell_keys=keys, cell_values=values)
    body += ('<p class="note">GPU-hours. Granted, used and refunded are inside the period; allowance and remaining '
             "are for the allowance period containing the report's end (remaining = what `cellsched budget` shows). "
             "Share of cluster = the team's reserved GPU-hours / all reserved; share of allowance = its allowance "
             "over the period / all teams' allowances.</p>")
    if "burndown" in by_name:
        body += by_name["burndown"].html()
    sections.append(html.Section("Teams", body, id="teams"))

    # Pools
    body = html.table(
        ["pool", "GPUs", "capacity GPU-h", "granted GPU-h", "held GPU-h", "used GPU-h", "idle reserved GPU-h", "utilisation"],
        [[pl["pool"], pl["gpus"], gh(pl["capacity_gpu_hours"]), gh(pl["granted_gpu_hours"]), gh(pl["held_gpu_hours"]),
          gh(pl["used_gpu_hours"]), gh(pl["idle_reserved_gpu_hours"]), pct(pl["utilisation"])] for pl in r["pools"]],
        numeric={"GPUs", "capacity GPU-h", "granted GPU-h", "held GPU-h", "used GPU-h", "idle reserved GPU-h", "utilisation"})
    for pl in r["pools"]:
        c = by_name.get(f"pool-{pl['pool']}-timeline")
        if c is not None:
            body += c.html()
    sections.append(html.Section("Pools over time", body, id="pools"))

    # Calendar
    body = ""
    for pl in r["pools"]:
        cal = pl["calendar"]
        c = by_name.get(f"pool-{pl['pool']}-calendar")
        body += f"<h3>Pool {html.escape(pl['pool'])}</h3>"
        if c is None:
            body += '<p class="note">No grants ahead: the whole pool is free.</p>'
            continue
        body += c.html()
        shown = cal["grants"][:CALENDAR_ROWS]
        body += html.table(["project", "team", "GPUs", "start (UTC)", "end (UTC)", "state"],
                           [[g["project"], g["team"], g["gpus"], _day(g["start"]), _day(g["end"]), g["state"]]
                            for g in shown], numeric={"GPUs"})
        if len(cal["grants"]) > len(shown):
            body += f'<p class="note">… and {len(cal["grants"]) - len(shown)} more (see --json).</p>'
    sections.append(html.Section("Calendar ahead", body, id="calendar",
                                 note=f"Live windows from {when(p['now'])} on: who holds what, when."))

    # Projects
    projects = r["projects"]
    shown = projects[:PROJECT_ROWS]
    body = html.table(
        ["project", "team", "pool", "GPUs", "state", "granted GPU-h", "used GPU-h", "used / granted",
         "promised start (UTC)", "actual start (UTC)", "start delay", "refunded GPU-h"],
        [[x["project"], x["team"], x["pool"], x["gpus"], x["state"], gh(x["granted_gpu_hours"]),
          gh(x["used_gpu_hours"]), pct(x["used_over_granted"]), _day(x["promised_start"]), _day(x["started_at"]),
          start_offset(x), gh(x["refunded_gpu_hours"])] for x in shown],
        numeric={"GPUs", "granted GPU-h", "used GPU-h", "used / granted", "start delay", "refunded GPU-h"})
    if len(projects) > len(shown):
        body += f'<p class="note">Showing the first {len(shown)} of {len(projects)} (see --json for all).</p>'
    sections.append(html.Section("Projects: window granted vs used, promised vs actual start", body, id="projects",
                                 note="Whole windows of the grants that touch the period."))

    if r["guarantee_breaches"]["grants"]:
        body = html.table(["grant", "project", "team", "pool", "breach GPU-h in period", "whole grant"],
                          [[b["grant"], b["project"], b["team"], b["pool"], gh(b["breach_gpu_hours"]),
                            gh(b["grant_breach_gpu_hours"])]
                           for b in r["guarantee_breaches"]["grants"]],
                          numeric={"breach GPU-h in period", "whole grant"})
        sections.append(html.Section("Guarantee breaches", body, id="breaches"))
    return html.page(title, sections, subtitle=sub)
