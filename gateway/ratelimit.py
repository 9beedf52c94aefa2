"""Rate limits in the slowapi / `limits` notation ("60/minute"), keyed by principal or client address.

The counters live where slowapi's storage URI says: `memory://` (one gateway process, the default)
or a shared store for several replicas.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from slowapi import Limiter
from slowapi.util import get_remote_address

__all__ = ["RateLimiter"]


class RateLimiter:
    """hit(kind, key, rate) -> None when allowed (and counted), else the seconds until the next hit is
    allowed; spent(kind, key, rate) asks the same without counting."""

    def __init__(self, storage_uri: str = "memory://") -> None:
        self._slowapi = Limiter(
            key_func=get_remote_address, storage_uri=storage_uri, strategy="moving-window"
        )
        self._strategy = self._slowapi.limiter

    def hit(self, kind: str, key: str, rate: str) -> float | None:
        item = parse(rate)
        if self._strategy.hit(item, kind, key):
            return None
        return self._retry_after(item, kind, key)

    def spent(self, kind: str, key: str, rate: str) -> float | None:
        """Like hit, without counting: None while one more hit would be allowed."""
        item = parse(rate)
        if self._strategy.test(item, kind, key):
            return None
        return self._retry_after(item, kind, key)

    def _retry_after(self, item: RateLimitItem, kind: str, key: str) -> float:
        stats = self._strategy.get_window_stats(item, kind, key)
        return float(max(1, math.ceil(stats.reset_time - time.time())))
