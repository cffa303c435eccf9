"""The typer command classes every ``cellsched`` command and group is built with.

One thing differs from typer's own: a flag (``--json``, ``--force``, ``--help``) shows no
type in ``--help``. Typer's rich help prints ``<bool>`` beside it, as if it took a value;
it takes none. Every flag gets an empty metavar (the text typer shows in that column), so
the column is blank; options that take a value keep theirs (``<int>``, ``FILE``).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup


def _plain_flags(params: list[Any]) -> list[Any]:
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))
