"""Placeholder: filled in by its owner. The contract the API uses is below."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

router = APIRouter()


class Metrics:
    """The server's Prometheus instruments (its own registry)."""

    def __init__(self, state: Any) -> None:
        self.state = state

    def observe_submit(self, seconds: float, outcome: dict[str, Any]) -> None:
        """Called by the submit endpoint after each admission: its latency, and the outcome
        (the submit JSON: ``granted``, ``refusal.reason``, ``grant.team``/``pool``)."""
