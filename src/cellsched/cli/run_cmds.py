"""Run commands: serve (the daemon), daemon (who serves), logs, demo. Ray is imported only when a command runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cellsched.cli.errors import handled
from cellsched.cli.state import G, JsonFlag, backend, caller, env
from cellsched.fmt import emit_json, when


@handled
def serve(
    once: Annotated[bool, typer.Option("--once", help="One reconcile pass, then exit (1 if a step failed).")] = False,
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between passes.")] = 1.0,
    address: Annotated[Optional[str], typer.Option("--address", envvar="RAY_ADDRESS",
                                                   help="Ray cluster to use (default: RAY_ADDRESS, else a new local Ray).")] = None,
    gpus: Annotated[Optional[int], typer.Option("--gpus", min=0,
                                                help="Logical GPUs of a new local Ray (ignored with --address).")] = None,
    logs_dir: Annotated[Optional[Path], typer.Option("--logs-dir", envvar="CELLSCHED_LOGS",
                                                     help="Job logs and reports (default: logs/ beside the cluster config).")] = None,
    placement_timeout: Annotated[int, typer.Option("--placement-timeout", min=1,
                                                   help="Seconds a group may stay unplaced before it counts as a guarantee breach.")] = 10,
    connect_timeout: Annotated[float, typer.Option("--connect-timeout", min=1,
                                                   help="Seconds to wait for the Ray at --address to answer.")] = 60.0,
    standby: Annotated[bool, typer.Option("--standby", help="If another daemon holds the ledger's lease, connect to Ray and wait; take over when its lease expires.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """The daemon: reserve each grant's GPUs on Ray at its start, run its jobs, stop them at
    its end, release early and refund, write completion reports. Logs go to stderr.

    One daemon per ledger: it holds the ledger's lease. If another daemon holds it, exit 2
    naming it, or with --standby wait and take over when its lease expires (`cellsched daemon`
    shows who holds it). SIGINT/SIGTERM stops it cleanly and releases the lease.

    **Example**: RAY_ADDRESS=ray://head:10001 cellsched serve --standby
    """
    import os
    import sys

    from cellsched.runtime.daemon import RayUnresponsive, run, setup_logging
    from cellsched.runtime.reconciler import Settings

    setup_logging(verbose)
    e = env()
    settings = Settings(logs_root=logs_dir, placement_timeout_s=placement_timeout, notify_in_background=not once)
    try:
        code = run(e, address, gpus, standby=standby, interval=interval, once=once, settings=settings,
                   connect_timeout_s=connect_timeout)
    except RayUnresponsive as err:
        print(f"cellsched: {err.message}", file=sys.stderr, flush=True)
        os._exit(2)  # ray.init is still stuck in a thread: a normal exit would wait for it
    raise typer.Exit(code)


@handled
def daemon(json_out: JsonFlag = False) -> None:
    """Who serves this ledger: the lease holder (host, pid, since, epoch), its last heartbeat
    and lease expiry, Ray's GPUs against the cluster config's; or since when no daemon has.
    Exit 0 either way.

    **Example**: cellsched daemon --json
    """
    data = backend().daemon()
    if json_out:
        emit_json(data)
        return
    print(daemon_text(data))


def daemon_text(st: dict) -> str:  # type: ignore[type-arg]
    """``cellsched daemon`` for people (from its JSON): the state line, then the lease's details."""
    lines = [st["message"]]
    if st["alive"]:
        lines.append(f"  last heartbeat {when(st['renewed_at'], True)} ({st['db_now'] - st['renewed_at']:.1f} s ago), "
                     f"lease expires {when(st['expires_at'], True)} (in {st['expires_at'] - st['db_now']:.1f} s)")
    elif st["epoch"] is not None:
        how = "released" if st["released"] else "expired"
        lines.append(f"  last daemon: pid {st['pid']} on {st['host']} (epoch {st['epoch']}), lease {how} "
                     f"{when(st['expires_at'], True)}")
    if st["declared_gpus"] is not None:
        short = f", {st['gpu_shortfall']} short" if st["gpu_shortfall"] else ""
        lines.append(f"  Ray GPUs {'?' if st['ray_gpus'] is None else st['ray_gpus']} of {st['declared_gpus']} declared{short}")
    return "\n".join(lines)


@handled
def logs(
    project: Annotated[str, typer.Argument(help="Project name (or name@digest).")],
    job: Annotated[Optional[str], typer.Argument(help="One job (default: the newest attempt of every job).")] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", "-r", min=0, help="One rank (default: all; 0 with --follow).")] = None,
    attempt: Annotated[Optional[int], typer.Option("--attempt", "-a", min=1, help="One attempt (default: the newest).")] = None,
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing as the log grows, until the grant ends.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON: the grant, its attempts, and each log shown with its path, size and text.")] = False,
) -> None:
    """A project's job output, per rank, as the daemon's workers wrote it.

    **Example**: cellsched logs pythia-ablation ablate --rank 3 --follow
    """
    from cellsched.errors import BadInput
    from cellsched.runtime import logs as L

    if follow_ and job is None:
        raise BadInput("--follow needs a JOB")
    if follow_ and json_out:
        raise BadInput("--follow and --json: choose one (--json prints the logs as they are now)")
    source = backend().logs()
    if json_out:
        emit_json(logs_json(source, project, job, rank, attempt))
        return
    if follow_:
        assert job is not None
        L.follow(source, project, job, rank or 0, attempt)
        return
    L.show(source, project, job, rank, attempt)


def logs_json(source, project: str, job: str | None, rank: int | None, attempt: int | None) -> dict:  # type: ignore[no-untyped-def, type-arg]
    """``logs --json`` from a log source (the local ledger's or the server's): the listing
    (grant, attempts) and, for each log ``logs`` would print, its text as it is now (UTF-8,
    undecodable bytes replaced), its size in bytes and whether it exists yet."""
    from cellsched.runtime import logs as L

    lst = source.listing(project, job, rank, attempt)
    out = {k: lst[k] for k in ("project", "kind", "grant_state", "grant_live", "log_dir", "attempts") if k in lst}
    out.setdefault("kind", "grant")  # a server from before best-effort logs
    out["logs"] = []
    for f in lst["files"]:
        data = L._read_all(source, project, f["job"], f["attempt"], f["rank"])
        out["logs"].append({**f, "exists": data is not None, "bytes": 0 if data is None else len(data),
                            "text": None if data is None else data.decode(errors="replace")})
    return out


@handled
def demo(
    projects: Annotated[Optional[Path], typer.Option("--projects", help="Directory of specs (default: the repository's projects/).")] = None,
    workdir: Annotated[Optional[Path], typer.Option("--workdir", help="Where to put the cluster config, ledger and logs (default: a new temp dir).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=5, help="Give up after this many seconds.")] = 110.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the completion reports as JSON (the story goes to stderr).")] = False,
) -> None:
    """Fresh machine, one command: a local Ray with 8 logical GPUs, a temporary cluster and
    ledger, the example projects submitted (and one spec refused, with what would be granted
    instead), run, released early with their refunds, and reported. Exit 0 only if every
    example completed with every job succeeded.

    **Example**: cellsched demo
    """
    import logging
    import sys

    from cellsched.cli.read_cmds import print_status_table
    from cellsched.runtime.daemon import setup_logging
    from cellsched.runtime.demo import run_demo
    from cellsched.runtime.report import print_report

    setup_logging(False)
    logging.getLogger("cellsched").setLevel(logging.WARNING)  # the demo narrates itself

    def say(msg: str) -> None:
        print(msg, file=sys.stderr if json_out else sys.stdout, flush=True)

    result = run_demo(projects, caller(), say, timeout_s=timeout, workdir=workdir)
    work = result.work
    if json_out:
        emit_json(result.reports)
    else:
        print()
        print("3. Completion reports (also written as report.md and report.json beside each project's logs)")
        for r in result.reports:
            print()
            print_report(r)
        print()
        print("4. Status: what `cellsched status` shows now")
        print()
        print_status_table(result.status)
        print()
        print(f"reports, receipts and logs: {work}/logs/<project>/ ; ledger: {work}/cellsched.db")
        print(f"look around: cellsched --cluster {work}/cluster.toml status <project>   "
              f"(or logs, budget, report, audit)")
    G.cluster = work / "cluster.toml"
    if not result.ok:
        print("demo: not every example project completed successfully", file=sys.stderr)
        raise typer.Exit(1)
