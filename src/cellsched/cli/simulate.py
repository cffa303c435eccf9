"""``cellsched simulate``: replay a trace through the admission core and the baselines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cellsched.cli.errors import handled

POLICY_HELP = "cellsched, easy, fifo or quota; repeat for several (default: all four)."


@handled
def simulate(
    trace: Annotated[Path, typer.Option("--trace", help="CSV: job_id,submit_s,duration_s,gpus,team[,requested_s].")],
    cluster: Annotated[Path, typer.Option("--cluster", help="Cluster config (pools, optional teams and policy).")],
    policy: Annotated[Optional[list[str]], typer.Option("--policy", "-p", help=POLICY_HELP)] = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", help="Replace the pools with one pool of N GPUs.")] = None,
    estimate_factor: Annotated[float, typer.Option("--estimate-factor", help="Requested run time = true duration x this (when the trace has no requested_s).")] = 1.5,
    allowance_scale: Annotated[float, typer.Option("--allowance-scale", help="Multiply every team allowance (e.g. 0.8 to study refusals).")] = 1.0,
    pull_forward: Annotated[Optional[str], typer.Option("--pull-forward", help="start_now or compact: how cellsched pulls waiting grants forward (default: the cluster's policy.pull_forward).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for programs instead of a table.")] = False,
    html_path: Annotated[Optional[Path], typer.Option("--html", help="Also write a self-contained HTML report with charts.")] = None,
) -> None:
    """Replay a job trace on a virtual clock through cellsched's admission core and baselines.

    **Example**: cellsched simulate --trace jobs.csv --cluster examples/sim-cluster.toml --policy cellsched --policy easy
    """
    from cellsched.errors import BadInput
    from cellsched.sim.policies import POLICIES
    from cellsched.sim.run import replay
    from cellsched.sim.setup import build_setup
    from cellsched.sim.trace import load_trace
    from cellsched.spec.load import load_cluster

    names = list(dict.fromkeys(policy or ["cellsched", "easy", "fifo", "quota"]))
    for p in names:
        if p not in POLICIES:
            raise BadInput(f"--policy: unknown policy {p!r} (choose from {', '.join(POLICIES)})")
    if pull_forward not in (None, "start_now", "compact"):
        raise BadInput(f"--pull-forward: must be start_now or compact, got {pull_forward!r}")
    config = load_cluster(cluster)
    if pull_forward is not None:
        config = config.model_copy(update={"policy": config.policy.model_copy(update={"pull_forward": pull_forward})})
    tr = load_trace(trace, estimate_factor)
    setup = build_setup(tr, config, gpus, allowance_scale)
    err = sys.stderr
    if tr.bad_rows or not json_out:
        print(tr.summary_line(), file=err)
    replays = []
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    show = console.is_terminal and len(tr.jobs) >= 5000
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not show) as bar:
        for p in names:
            task = bar.add_task(f"replaying {p}", total=len(tr.jobs))
            replays.append(replay(setup, p, lambda n, task=task: bar.update(task, completed=n)))
    if html_path is not None:
        from cellsched.sim.html import write_html

        write_html(html_path, replays, "cellsched simulate",
                   f"{tr.summary_line()} · {setup.gpus:,} GPUs · pull_forward {config.policy.pull_forward}")
    if json_out:
        from cellsched.cli.render import emit_json

        emit_json({
            "trace": tr.summary(),
            "gpus": setup.gpus,
            "estimate_factor": estimate_factor,
            "allowance_scale": allowance_scale,
            "pull_forward": config.policy.pull_forward,
            "policies": {r.policy: r.metrics for r in replays},
        })
        return
    from cellsched.cli.render import table
    from cellsched.sim.html import COLUMNS, table_rows

    table(f"{setup.gpus:,} GPUs · {len(tr.jobs):,} jobs · pull_forward {config.policy.pull_forward} "
          "(waits in hours, makespan in days)",
          [c for c, _ in COLUMNS], table_rows(replays),
          justify=lambda c: "left" if c == "policy" else "right")
    if html_path is not None:
        print(f"wrote {html_path}", file=err)
