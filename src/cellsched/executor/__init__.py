"""Executor layer: the Protocol, the in-memory twin and the Ray adapter.

``import cellsched.executor`` never imports ray: ``RayExecutor`` is loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    Executor,
    ExecutorError,
    Fate,
    Fenced,
    GangResult,
    GangSpec,
    InvalidGang,
    NotReady,
    Outcome,
    ReservationConflict,
    ReservationState,
    ResultKey,
    RunningGang,
    UnknownReservation,
    job_environment,
)
from .memory import Behaviour, MemoryExecutor, Overlap

if TYPE_CHECKING:
    from .ray_adapter import RayExecutor

__all__ = [
    "Behaviour",
    "Executor",
    "ExecutorError",
    "Fate",
    "Fenced",
    "GangResult",
    "GangSpec",
    "InvalidGang",
    "MemoryExecutor",
    "NotReady",
    "Outcome",
    "Overlap",
    "RayExecutor",
    "ReservationConflict",
    "ReservationState",
    "ResultKey",
    "RunningGang",
    "UnknownReservation",
    "job_environment",
]


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        from .ray_adapter import RayExecutor

        return RayExecutor
    raise AttributeError(name)
