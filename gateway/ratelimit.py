"""Per-principal rate limits from the policy, in the `limits` notation slowapi uses ("60/minute").

In memory by default: one gateway process holds the counters.
"""

from __future__ import annotations

import math
import time

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

__all__ = ["RateLimiter"]


class RateLimiter:
    """hit(kind, key, rate) -> None when allowed, else the seconds until the next allowed hit."""

    def __init__(self) -> None:
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, kind: str, key: str, rate: str) -> float | None:
        item = parse(rate)
        if self._limiter.hit(item, kind, key):
            return None
        stats = self._limiter.get_window_stats(item, kind, key)
        return max(1.0, math.ceil(stats.reset_time - time.time()))
