"""Executor layer: the Protocol, the in-memory twin and the Ray adapter.

``import cellsched.executor`` never imports ray: ``RayExecutor`` is loaded on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import (
    CODE_FAILED_CODE,
    Executor,
    ExecutorError,
    Fate,
    Fenced,
    GangResult,
    GangSpec,
    InvalidGang,
    NodeInfo,
    NotReady,
    Outcome,
    Placement,
    ReservationConflict,
    ReservationState,
    ResultKey,
    RunningGang,
    UnknownReservation,
    attempt_tails,
    job_environment,
    log_tail,
)
from .memory import Behaviour, MemoryExecutor, Overlap
from .pools import placement_for, pool_capacity, pool_label_selector, pool_nodes

if TYPE_CHECKING:
    from .ray_adapter import RayExecutor

__all__ = [
    "CODE_FAILED_CODE",
    "Behaviour",
    "Executor",
    "ExecutorError",
    "Fate",
    "Fenced",
    "GangResult",
    "GangSpec",
    "InvalidGang",
    "MemoryExecutor",
    "NodeInfo",
    "NotReady",
    "Outcome",
    "Overlap",
    "Placement",
    "RayExecutor",
    "ReservationConflict",
    "ReservationState",
    "ResultKey",
    "RunningGang",
    "UnknownReservation",
    "attempt_tails",
    "job_environment",
    "log_tail",
    "placement_for",
    "pool_capacity",
    "pool_label_selector",
    "pool_nodes",
]


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":
        from .ray_adapter import RayExecutor

        return RayExecutor
    raise AttributeError(name)
