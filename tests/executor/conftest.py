"""Executor tests: the shared Ray fixtures plus an executor that cleans up after itself."""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from cellsched.executor.testing import ray_cluster, ray_leak_check  # noqa: F401


@pytest.fixture
def rex(ray_leak_check: Any) -> Iterator[Any]:
    """A RayExecutor; every reservation left behind by the test is released before the
    leak check runs, so one failing test cannot cascade into the next."""
    from cellsched.executor import RayExecutor

    ex = RayExecutor(peer_grace_s=2.0)
    yield ex
    for name in ex.reservations():
        ex.release(name)
