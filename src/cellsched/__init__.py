"""cellsched: guaranteed GPU windows for small research teams, on Ray."""

__version__ = "0.1.0"
