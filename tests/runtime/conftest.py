"""Runtime tests: the session's Ray fixtures (one local Ray per test process)."""

from cellsched.executor.testing import ray_cluster, ray_leak_check  # noqa: F401
