"""The ``cellsched`` command line (typer). ``import cellsched.cli`` loads the whole CLI."""

from cellsched.cli.app import app, main

__all__ = ["app", "main"]
