"""Order statistics shared by the utilisation report and the simulator: one percentile
definition, so a ``p95`` means the same in ``cellsched report`` and ``cellsched simulate``."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[int], q: float, *, presorted: bool = False) -> int | None:
    """The nearest-rank ``q``-th percentile (``q`` in percent, 0 < q <= 100): the smallest
    value with at least ``q``% of the values at or below it. Always one of the values (an
    observed wait, never one interpolated between two jobs), so integers stay integers and
    every run gives the same answer. None when there are no values."""
    if not values:
        return None
    v = values if presorted else sorted(values)
    k = max(0, math.ceil(q * len(v) / 100) - 1)
    return v[min(k, len(v) - 1)]
