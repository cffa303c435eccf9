"""Project specs for service tests, built in code (the loader has its own tests)."""

from __future__ import annotations

from typing import Any

from cellsched.spec.models import ProjectSpec

H = 3600
T0 = 1796083200  # 2026-12-01 00:00 UTC
JAN = 1798761600  # 2027-01-01 00:00 UTC


def iso(t: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def spec(name: str, team: str = "interp", gpus: int = 8, hours: float = 16, *, owner: str = "alice",
         problem: str = "a question", replaces: str | None = None, **budget: Any) -> ProjectSpec:
    """A one-job spec; ``budget`` takes pool, gpu_type, not_before, deadline (epoch ints)."""
    b: dict[str, Any] = {"gpu_hours": hours, "gpus": gpus}
    for key, value in budget.items():
        b[key] = iso(value) if key in ("not_before", "deadline") else value
    data: dict[str, Any] = {
        "name": name, "team": team, "owner": owner, "problem": problem, "budget": b,
        "jobs": [{"name": "train", "run": ["python", "train.py"], "gpus": gpus}],
    }
    if replaces:
        data["replaces"] = replaces
    return ProjectSpec.model_validate(data)
