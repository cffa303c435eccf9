from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from report_builders import fill_known  # noqa: E402


@pytest.fixture
def known(env):  # type: ignore[no-untyped-def]
    """``env`` holding the hand-built ledger of :func:`fill_known`."""
    fill_known(env.ledger)
    return env
