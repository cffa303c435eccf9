"""Errors that reach the user, each with the exit code the CLI gives it.

Every error a user can cause is one of these; the CLI turns them into a single line and an
exit code in one place (``cli/errors.py``). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class CellschedError(Exception):
    """Base class: ``message`` is one line meant for a person; ``exit_code`` for the shell."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(CellschedError):
    """The user gave something unusable: a bad spec, flag, file or config (exit 2)."""

    exit_code = 2


class NotFound(BadInput):
    """A named project, team, grant or file does not exist (exit 2)."""


class Denied(CellschedError):
    """The caller may not do this (not a team member, not an admin) (exit 1)."""


class Failed(CellschedError):
    """The request was understood but did not succeed (refusal, audit failure) (exit 1)."""


# Characters a terminal or ``str.splitlines`` would take as the end of a line, and other
# controls, which must never break the one line an error is.
_BREAKS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, 0x85)} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


def one_line(text: str) -> str:
    """``text`` on one line: runs of spaces, tabs and line breaks become one space, other
    control characters are written as escapes (``\\x00``), so a message that quotes a
    file name or a value the user gave still prints as one line."""
    return " ".join(text.split()).translate(_BREAKS)
