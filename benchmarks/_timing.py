"""The timing rule the speed benchmarks share: on a shared machine the fastest of a few runs is the figure."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def fastest(fn: Callable[[], object], repeats: int) -> float:
    """Wall seconds of the fastest of ``repeats`` calls of ``fn``; slower runs measure the other jobs too."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best
