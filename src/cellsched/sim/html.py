"""``simulate --html``: one self-contained page per run, drawn with the report's renderer
(``cellsched.report.html`` for the page, ``cellsched.report.charts`` for the SVG charts).
matplotlib is imported only here, and only when a page is asked for."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cellsched.sim.metrics import busy_over_time, wait_list
from cellsched.sim.run import Replay

COLUMNS = [
    ("policy", "policy"), ("done", "done"), ("refused", "refused"), ("utilisation", "utilisation"),
    ("wait mean h", "wait_mean_s"), ("wait p50 h", "wait_p50_s"), ("wait p95 h", "wait_p95_s"),
    ("wait p99 h", "wait_p99_s"), ("bounded slowdown", "bounded_slowdown_mean"),
    ("makespan d", "makespan_s"), ("Jain", "jain_index"),
    ("fairness", "fairness_slowdown_jain"), ("promise kept", "promise_kept"),
    ("breaches", "guarantee_breaches"),
]

# A lending replay (trace with best-effort jobs): what the best-effort work did.
BE_COLUMNS = [
    ("policy", "policy"), ("best-effort jobs", "best_effort_jobs"), ("done", "best_effort_done"),
    ("completed GPU-h", "best_effort_completed_gpu_hours"), ("held GPU-h", "best_effort_held_gpu_hours"),
    ("lost GPU-h", "lost_gpu_hours"), ("preemptions", "preemptions"),
    ("wait p50 h", "best_effort_wait_p50_s"), ("wait p95 h", "best_effort_wait_p95_s"),
    ("turnaround p50 h", "best_effort_turnaround_p50_s"), ("turnaround p95 h", "best_effort_turnaround_p95_s"),
    ("utilisation", "utilisation"), ("of it guaranteed", "utilisation_guaranteed"),
    ("useful", "useful_utilisation"),
]


def cell(key: str, v: object) -> str:
    if v is None:
        return "n/a"
    if key.startswith(("wait_", "best_effort_wait_", "best_effort_turnaround_")):
        return f"{float(v) / 3600:,.1f}"  # type: ignore[arg-type]
    if key == "makespan_s":
        return f"{float(v) / 86400:,.1f}"  # type: ignore[arg-type]
    if key == "promise_kept":
        return f"{float(v):.2%}"  # type: ignore[arg-type]
    if key.endswith("gpu_hours"):
        return f"{float(v):,.1f}"  # type: ignore[arg-type]
    if isinstance(v, float):
        return f"{v:,.3f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table_rows(replays: Sequence[Replay]) -> list[list[str]]:
    """One row of ``COLUMNS`` cells per policy, for the terminal table and the page."""
    return [[cell(k, r.metrics.get(k)) for _, k in COLUMNS] for r in replays]


def be_rows(replays: Sequence[Replay]) -> list[list[str]]:
    """One row of ``BE_COLUMNS`` cells per lending replay."""
    return [[cell(k, r.metrics.get(k)) for _, k in BE_COLUMNS] for r in replays if r.lent is not None]


def write_html(path: Path, replays: Sequence[Replay], title: str, subtitle: str) -> None:
    from cellsched.report import charts, html

    plt = charts._plt()  # the report's matplotlib setup (Agg, fonts, grid)
    pal = charts.colours([r.policy for r in replays])
    table = html.table([c for c, _ in COLUMNS], table_rows(replays), numeric=[c for c, _ in COLUMNS[1:]],
                       row_keys=[r.policy for r in replays], cell_keys=[k for _, k in COLUMNS],
                       cell_values=[[r.metrics.get(k) for _, k in COLUMNS] for r in replays])

    fig, ax = plt.subplots(figsize=(charts.WIDTH_IN, charts.HEIGHT_IN))
    for r in replays:
        w = wait_list(r.engine)
        if w:
            n = len(w)
            ax.plot([x / 3600 for x in w], [(i + 1) / n for i in range(n)], color=pal[r.policy],
                    linewidth=1.6, drawstyle="steps-post", label=r.policy)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("wait from submission to start (hours, log scale above 1 h)")
    ax.set_ylabel("fraction of jobs")
    ax.set_title("wait-time CDF", loc="left")
    if len(replays) > 1:
        ax.legend(loc="lower right")
    cdf = charts.Chart("wait-cdf", "wait-time CDF", fig)

    fig, ax = plt.subplots(figsize=(charts.WIDTH_IN, charts.HEIGHT_IN))
    for r in replays:
        xs, ys = busy_over_time(r.engine, lent=r.lent)
        ax.plot(xs, ys, color=pal[r.policy], linewidth=1.2, label=r.policy)
    ax.set_xlabel("hours since the first submission")
    ax.set_ylabel("GPUs busy (fraction)")
    ax.set_ylim(0, 1.05)
    ax.set_title("utilisation over time", loc="left")
    if len(replays) > 1:
        ax.legend(loc="lower right")
    util = charts.Chart("utilisation", "utilisation over time", fig)

    teams = []
    for r in replays:
        trows = [[t["team"], f"{t['allowance_share']:.2%}", f"{t['gpu_time_share']:.2%}"] for t in r.metrics["teams"]]  # type: ignore[index]
        teams.append(f"<h3>{html.escape(r.policy)}</h3>" + html.table(["team", "allowance share", "GPU-time share"], trows,
                                                                        numeric=["allowance share", "GPU-time share"]))
    lending = []
    if any(r.lent is not None for r in replays):
        lending = [html.Section("Best-effort work", html.table(
            [c for c, _ in BE_COLUMNS], be_rows(replays), numeric=[c for c, _ in BE_COLUMNS[1:]]), id="best-effort",
            note="lent idle GPUs, preempted when a guaranteed job needs them; GPU-hours, waits in hours")]
    page = html.page(title, [
        html.Section("Policies", table, id="policies",
                     note="waits in hours, makespan in days; promise kept and breaches only for policies that promise a start"),
        *lending,
        html.Section("Wait times", cdf.html(), id="waits"),
        html.Section("Utilisation", util.html(), id="utilisation"),
        html.Section("Per team", "".join(teams), id="teams"),
    ], subtitle=subtitle, generator="cellsched simulate")
    cdf.close()
    util.close()
    _write(path, page)


def html_target(text: str) -> Path:
    """The ``--html`` file, checked before the replay so that a path it could never write
    fails at once in one line: not empty, not a directory nor anything but a regular file
    (a FIFO would block the end of a long run, /dev/full fill nothing), in an existing
    directory this process may write into. Nothing is created here."""
    import os
    import stat

    from cellsched.errors import BadInput, one_line

    if not text.strip():
        raise BadInput("--html: empty file name; give one like sim.html")
    path = Path(text)
    where = one_line(text)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise BadInput(f"--html: cannot write {where}: {e.strerror}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise BadInput(f"--html: {where} is a directory; give a file name like sim.html")
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"--html: {where} is not a regular file; give a file name like sim.html")
        if not os.access(path, os.W_OK):
            raise BadInput(f"--html: cannot write {where}: permission denied")
        return path
    parent = path.parent
    if not parent.is_dir():
        raise BadInput(f"--html: cannot write {where}: directory {one_line(str(parent))} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"--html: cannot write {where}: directory {one_line(str(parent))} is not writable")
    return path


def _write(path: Path, text: str) -> None:
    """Write the page through a temporary file beside it, renamed over it at the end: a
    write that fails (a full disk) leaves no half page, and the old one, if any, intact."""
    import os

    from cellsched.errors import BadInput, one_line

    target = Path(os.path.realpath(path))  # a symbolic link keeps pointing at the page
    tmp = target.with_name(f".cellsched-simulate-{os.getpid()}.tmp")  # short: any name stays legal
    try:
        try:
            with open(tmp, "x", encoding="utf-8") as fh:
                fh.write(text)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise BadInput(f"--html: cannot write {one_line(str(path))}: {e.strerror}") from None
