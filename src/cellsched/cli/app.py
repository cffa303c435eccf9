"""The ``cellsched`` command. Each noun lives in its own module; heavy imports stay inside
the commands so that ``cellsched budget`` answers quickly.

Nothing of the ledger stack loads here: with a server configured (``cli/remote.py``) a
command imports typer, httpx and, for specs, the spec models, and asks the server; with
none, the command loads the service layer and works on the local ledger (``cli/state.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from cellsched import __version__
from cellsched.cli import calendar_cmd, ledger_cmds, project_cmds, read_cmds, report, run_cmds, server_cmds, simulate
from cellsched.cli.command import Command, Group
from cellsched.cli.state import G

app = typer.Typer(
    name="cellsched",
    cls=Group,
    help=(
        "Guaranteed GPU windows for small research teams, on Ray.\n\n"
        "Write a project spec, submit it, get a window nobody can take away (or the reason "
        "and the nearest thing that would be granted).\n\n"
        "Exit codes: 0 ok, 1 refused or failed, 2 bad input.\n\n"
        "**Example**: cellsched init && cellsched submit projects/pythia-ablation.toml "
        "&& cellsched budget interp"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        print(f"cellsched {__version__}")
        raise typer.Exit()


@app.callback()
def _globals(
    ctx: typer.Context,
    cluster: Annotated[Path, typer.Option("--cluster", "-c", envvar="CELLSCHED_CLUSTER",
                                          help="Cluster config file (ignored through a server).")] = Path("cluster.toml"),
    db: Annotated[Optional[str], typer.Option("--db", envvar="CELLSCHED_DB",
                                              help="Ledger URL (default: cellsched.db beside the cluster config; "
                                                   "ignored through a server).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    G.cluster = cluster
    G.db = db
    G.backend = None
    # Given on the command line (not from the environment): worth a note if a server ignores
    # them. (By name: typer carries its own copy of click's ParameterSource.)
    G.given = [f"--{name}" for name in ("cluster", "db")
               if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"]
    if db is not None and not db.strip() and "--db" in G.given:
        # (``--db "$LEDGER"`` with the variable unset: not the default ledger, written to unasked.
        # An empty CELLSCHED_DB stays "not set", as an empty variable usually is.)
        raise typer.BadParameter("empty: give a ledger URL, or leave --db out for the default", param_hint="--db")


app.command("validate", cls=Command)(project_cmds.validate)
app.command("submit", cls=Command)(project_cmds.submit)
app.command("plan", cls=Command)(project_cmds.plan)
app.command("calendar", cls=Command)(calendar_cmd.calendar)
app.command("cancel", cls=Command)(project_cmds.cancel)
app.command("verify", cls=Command)(project_cmds.verify)
app.command("status", cls=Command)(read_cmds.status)
app.command("budget", cls=Command)(read_cmds.budget)
app.command("init", cls=Command)(ledger_cmds.init)
app.command("audit", cls=Command)(ledger_cmds.audit)

app.command("serve", cls=Command)(run_cmds.serve)
app.command("daemon", cls=Command)(run_cmds.daemon)
app.command("demo", cls=Command)(run_cmds.demo)
app.command("logs", cls=Command)(run_cmds.logs)
app.command("report", cls=Command)(report.report)
app.command("simulate", cls=Command)(simulate.simulate)
app.command("server", cls=Command)(server_cmds.server)
app.add_typer(server_cmds.token_app, name="token")
app.command("login", cls=Command)(server_cmds.login)
app.command("whoami", cls=Command)(server_cmds.whoami)


def main() -> None:
    code = _served_read(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    app()


# Read commands that, through a server, run without typer's parsing: it loads pydantic to
# coerce parameters (~80 ms, of a 200 ms budget for `cellsched status`). Only the plainest
# command lines take this way: the command, at most its positional arguments (none starting
# with "-") and --json; anything else (--help, global options, no server) goes through typer.
_FAST = {"status": (0, 1), "budget": (1, 1), "daemon": (0, 0), "audit": (0, 0)}


def _served_read(argv: list[str]) -> int | None:
    if not argv or argv[0] not in _FAST:
        return None
    rest = argv[1:]
    json_out = "--json" in rest
    args = [a for a in rest if a != "--json"]
    lo, hi = _FAST[argv[0]]
    if rest.count("--json") > 1 or not lo <= len(args) <= hi or any(a.startswith("-") or not a for a in args):
        return None
    from cellsched.cli.remote import configured

    try:
        remote = configured()
    except Exception:  # noqa: BLE001 - an unreadable config file: typer's way says so
        return None
    if remote is None:
        return None
    G.cluster, G.db, G.given, G.backend = Path("cluster.toml"), None, [], None
    command = {"status": read_cmds.status, "budget": read_cmds.budget,
               "daemon": run_cmds.daemon, "audit": ledger_cmds.audit}[argv[0]]
    try:
        command(*args, json_out=json_out)
    except typer.Exit as e:
        return int(e.exit_code)
    return 0
