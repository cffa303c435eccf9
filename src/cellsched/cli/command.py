"""The typer command classes every ``cellsched`` command and group is built with.

Two things differ from typer's own. A usage error (an unknown option, a missing argument, a
value of the wrong type) is one line on stderr, ``cellsched: <command>: <what> (see
<command> --help)``, exit 2, like every other bad input, instead of typer's usage text and
boxed panel. And a flag (``--json``, ``--force``, ``--help``) shows no
type in ``--help``. Typer's rich help prints ``<bool>`` beside it, as if it took a value;
it takes none. Every flag gets an empty metavar (the text typer shows in that column), so
the column is blank; options that take a value keep theirs (``<int>``, ``FILE``).
"""

from __future__ import annotations

import sys
from typing import Any

from typer.core import TyperCommand, TyperGroup, _click
from typer.exceptions import Abort


def _plain_flags(params: list[Any]) -> list[Any]:
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


def usage_line(e: Any) -> str:
    """The one line a usage error prints: the command it is about, what is wrong, where help is."""
    ctx = getattr(e, "ctx", None)
    path = ctx.command_path if ctx is not None else "cellsched"
    where = path.split(" ", 1)[1] + ": " if " " in path else ""
    what = " ".join(e.format_message().split())
    return f"cellsched: {where}{what} (see {path} --help)"


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)  # typer.Exit's code (commands return None)
        except _click.exceptions.ClickException as e:
            if type(e).__name__ != "NoArgsIsHelpError":  # bare `cellsched`: the help was shown
                print(usage_line(e), file=sys.stderr)
            sys.exit(e.exit_code)
        except Abort:
            print("cellsched: aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
