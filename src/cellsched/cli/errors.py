"""The one place that turns errors into a message line and an exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from cellsched.errors import CellschedError

F = TypeVar("F", bound=Callable[..., Any])

OK, REFUSED, BAD_INPUT = 0, 1, 2


def fail(message: str, code: int) -> typer.Exit:
    print(f"cellsched: {message}", file=sys.stderr)
    return typer.Exit(code)


def handled(fn: F) -> F:
    """Run a command so that a :class:`CellschedError` becomes one line and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CellschedError as e:
            raise fail(e.message, e.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper  # type: ignore[return-value]
