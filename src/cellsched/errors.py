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
