"""``cellsched simulate``: replay a trace through the admission core and the baselines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cellsched.cli.errors import handled
from cellsched.cli.state import G
from cellsched.fmt import emit_json, plural, table

POLICY_HELP = "cellsched, easy, fifo or quota; repeat for several (default: all four)."


@handled
def simulate(
    trace: Annotated[Path, typer.Option("--trace", help="CSV: job_id,submit_s,duration_s,gpus,team[,requested_s][,class] (class: guaranteed or best-effort).")],
    cluster: Annotated[Optional[Path], typer.Option("--cluster", help="Cluster config (pools, optional teams and policy). Default: the global --cluster (cellsched --cluster FILE simulate ...), CELLSCHED_CLUSTER or cluster.toml.")] = None,
    policy: Annotated[Optional[list[str]], typer.Option("--policy", "-p", help=POLICY_HELP)] = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", help="Replace the pools with one pool of N GPUs.")] = None,
    estimate_factor: Annotated[float, typer.Option("--estimate-factor", help="Requested run time = true duration x this (when the trace has no requested_s).")] = 1.5,
    allowance_scale: Annotated[float, typer.Option("--allowance-scale", help="Multiply every team allowance (e.g. 0.8 to study refusals).")] = 1.0,
    pull_forward: Annotated[Optional[str], typer.Option("--pull-forward", help="start_now, hold_oldest, hold_when_busy or compact: how cellsched pulls waiting grants forward (default: the cluster's policy.pull_forward).")] = None,
    estimate_noise: Annotated[float, typer.Option("--estimate-noise", help="Per job, multiply the estimate factor by a seeded log-normal draw of this sigma (at least 1.0 overall); 0: none.")] = 0.0,
    noise_seed: Annotated[int, typer.Option("--noise-seed", help="Seed of --estimate-noise.")] = 1,
    expect_every: Annotated[int, typer.Option("--expect-every", help="cellsched: estimate the expected start of every N-th waiting job and measure it (0: off).")] = 20,
    best_effort_share: Annotated[float, typer.Option("--best-effort-share", help="Make this share of the jobs (0 to 1, drawn by --best-effort-seed) best-effort: no window, run on idle GPUs, preempted when a guaranteed job needs them.")] = 0.0,
    best_effort_seed: Annotated[int, typer.Option("--best-effort-seed", help="Seed of --best-effort-share.")] = 1,
    checkpoint_interval: Annotated[int, typer.Option("--checkpoint-interval", help="Best-effort jobs checkpoint every C seconds of run: a preempted job keeps the work up to its last checkpoint (0: none, all work since its start is lost).")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON for programs instead of a table.")] = False,
    html_file: Annotated[Optional[str], typer.Option("--html", metavar="FILE", help="Also write a self-contained HTML report with charts (checked before the replay: an existing directory to write into, not a directory or device).")] = None,
) -> None:
    """Replay a job trace on a virtual clock through cellsched's admission core and baselines.

    Prints one row per policy, then the refusals by reason. Trace teams the cluster file does
    not name are refused every job (unknown_team): said on stderr and in the output. A
    cluster file with no teams gives every trace team its own demand as allowance.

    **Example**: cellsched simulate --trace jobs.csv --cluster examples/sim-cluster.toml --policy cellsched --policy easy
    """
    from cellsched.errors import BadInput
    from cellsched.sim.html import html_target
    from cellsched.sim.limits import check_options
    from cellsched.sim.policies import POLICIES
    from cellsched.sim.run import replay
    from cellsched.sim.setup import build_setup
    from cellsched.sim.trace import load_trace
    from cellsched.spec.cluster import PULL_FORWARD_RULES
    from cellsched.spec.load import load_cluster

    names = list(dict.fromkeys(policy or ["cellsched", "easy", "fifo", "quota"]))
    for p in names:
        if p not in POLICIES:
            raise BadInput(f"--policy: unknown policy {p!r} (choose from {', '.join(POLICIES)})")
    if pull_forward is not None and pull_forward not in PULL_FORWARD_RULES:
        *most, last = PULL_FORWARD_RULES
        raise BadInput(f"--pull-forward: must be {', '.join(most)} or {last}, got {pull_forward!r}")
    # Everything the user typed is checked before anything is read or replayed: a bad value
    # must not cost a long replay first (docs/simulate.md gives each option's range).
    check_options(gpus=gpus, estimate_factor=estimate_factor, allowance_scale=allowance_scale,
                  estimate_noise=estimate_noise, noise_seed=noise_seed, expect_every=expect_every,
                  best_effort_share=best_effort_share, best_effort_seed=best_effort_seed,
                  checkpoint_interval=checkpoint_interval)
    html_path = html_target(html_file) if html_file is not None else None
    cluster_path = cluster if cluster is not None else G.cluster
    config = load_cluster(cluster_path)
    if pull_forward is not None:
        config = config.model_copy(update={"policy": config.policy.model_copy(update={"pull_forward": pull_forward})})
    from cellsched.sim.trace import add_estimate_noise, mark_best_effort

    tr = add_estimate_noise(load_trace(trace, estimate_factor), estimate_noise, noise_seed)
    if best_effort_share:
        tr = mark_best_effort(tr, best_effort_share, best_effort_seed)
    setup = build_setup(tr, config, gpus, allowance_scale, expect_every, checkpoint_interval)
    err = sys.stderr
    if tr.bad_rows or not json_out:
        print(tr.summary_line(), file=err)
    notes = missing_teams_notes(tr, config, cluster_path)
    for note in notes:
        print(f"cellsched: warning: {note}", file=err)
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
        emit_json({
            "trace": tr.summary(),
            "gpus": setup.gpus,
            "estimate_factor": estimate_factor,
            "estimate_noise": estimate_noise,
            "noise_seed": noise_seed,
            "allowance_scale": allowance_scale,
            "pull_forward": config.policy.pull_forward,
            "best_effort_share": best_effort_share if best_effort_share else None,
            "best_effort_seed": best_effort_seed if best_effort_share else None,
            "checkpoint_interval_s": checkpoint_interval,
            "missing_teams": missing_teams(tr, config),
            "notes": notes,
            "policies": {r.policy: r.metrics for r in replays},
        })
        return
    from cellsched.sim.html import COLUMNS, table_rows

    table(f"{setup.gpus:,} GPUs · {len(tr.jobs):,} jobs · pull_forward {config.policy.pull_forward} "
          "(waits in hours, makespan in days" + ("; done, refused, waits and promises of the guaranteed jobs, "
                                                  "utilisation with the best-effort work" if setup.lends else "") + ")",
          [c for c, _ in COLUMNS], table_rows(replays),
          justify=lambda c: "left" if c == "policy" else "right")
    reasons = sorted({k for r in replays for k in r.metrics["refused_by_reason"]})  # type: ignore[attr-defined]
    if reasons:
        print()
        table("refusals by reason (jobs)", ["policy", *reasons],
              [[r.policy, *(f"{r.metrics['refused_by_reason'].get(k, 0):,}" for k in reasons)]  # type: ignore[attr-defined]
               for r in replays],
              justify=lambda c: "left" if c == "policy" else "right")
    if setup.lends:
        from cellsched.sim.html import BE_COLUMNS, be_rows

        print()
        table(f"best-effort work lent idle GPUs ({tr.best_effort_from}; checkpoint every "
              f"{f'{checkpoint_interval:,} s' if checkpoint_interval else 'never: all work since a start is lost'}; "
              "GPU-hours, waits in hours)",
              [c for c, _ in BE_COLUMNS], be_rows(replays), justify=lambda c: "left" if c == "policy" else "right")
    teams = [t["team"] for t in replays[0].metrics["teams"]] if replays else []  # type: ignore[index]
    if teams:
        print()
        table("waits per team (mean / p95, hours)", ["policy", *teams],
              [[r.policy, *(_team_cell(t) for t in r.metrics["teams"])] for r in replays],  # type: ignore[attr-defined]
              justify=lambda c: "left" if c == "policy" else "right")
    for r in replays:
        acc = r.metrics.get("expected_start")
        if acc:
            print()
            table(f"{r.policy}: expected start against promise, jobs that waited at least 1 h "
                  f"(every {acc['every']}th waiting job: {acc['waited_1h']:,} of {acc['sampled']:,} sampled)",
                  ["estimate", "|error| / wait p50", "p90"],
                  [["expected start", _pct(acc["expected_err_p50"]), _pct(acc["expected_err_p90"])],
                   ["promise", _pct(acc["promise_err_p50"]), _pct(acc["promise_err_p90"])]],
                  justify=lambda c: "left" if c == "estimate" else "right")
    for note in notes:
        print(f"note: {note}")
    if html_path is not None:
        print(f"wrote {html_path}", file=err)


def _team_cell(t: dict) -> str:  # type: ignore[type-arg]
    if t.get("wait_mean_s") is None:
        return "n/a"
    return f"{t['wait_mean_s'] / 3600:,.1f} / {t['wait_p95_s'] / 3600:,.1f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def missing_teams(tr, config) -> list[str]:  # type: ignore[no-untyped-def]
    """Trace teams the cluster file does not name, in the trace's order (none when the file
    names no teams: then every trace team gets its demand as allowance)."""
    if not config.teams:
        return []
    known = {t.name for t in config.teams}
    return [t for t in tr.teams() if t not in known]


def missing_teams_notes(tr, config, path: Path) -> list[str]:  # type: ignore[no-untyped-def]
    """The one line saying which trace teams are not in the cluster file, and what it costs."""
    missing = missing_teams(tr, config)
    if not missing:
        return []
    gone = set(missing)
    jobs = sum(1 for j in tr.jobs if j.team in gone)
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return [f"{plural(len(missing), 'trace team')} not in {path} ({shown}): cellsched and quota refuse all "
            f"{plural(jobs, 'job')} of them (unknown_team); add the teams to the file, or remove every team "
            "from it to give each trace team its demand as allowance"]
