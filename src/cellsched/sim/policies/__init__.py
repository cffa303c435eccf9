"""Scheduling policies the simulator can replay a trace through, one module each.

``cellsched`` drives the real admission core; ``fifo``, ``easy`` and ``quota`` are the
baselines an admin compares it with. Every policy is built by ``make(name, setup)``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cellsched.sim.engine import Policy
    from cellsched.sim.setup import SimSetup

POLICIES = ("cellsched", "easy", "fifo", "quota")


def make(name: str, setup: SimSetup) -> Policy:
    """A fresh policy object for one replay."""
    if name not in POLICIES:
        from cellsched.errors import BadInput

        raise BadInput(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})")
    module = import_module(f"cellsched.sim.policies.{name}")
    return module.make(setup)
