"""Rate limits in the slowapi / `limits` notation ("60/minute"), keyed by principal or client address.

The counters live where the storage URI says: `memory://` (one gateway process, the default) keeps
them in this process, as moving windows of hit times; any other URI (Redis, for several replicas)
goes through slowapi's `limits` storage, with the same moving-window strategy.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from limits import RateLimitItem, parse
from slowapi import Limiter
from slowapi.util import get_remote_address

__all__ = ["MovingWindows", "RateLimiter"]

#: Stale windows dropped at most per call (a call adds at most one).
_PRUNE_PER_CALL = 8


@functools.lru_cache(maxsize=256)
def _rate(rate: str) -> tuple[int, float]:
    """(hits allowed, window in seconds) of a rate such as "60/minute" or "10 per 2 seconds"."""
    item = parse(rate)
    return item.amount, float(item.get_expiry())


class MovingWindows:
    """In-process moving windows: a hit is allowed when fewer than `amount` hits were counted in the
    last `window` seconds. One deque of monotonic hit times per key, kept by (kind, amount, window)
    least recently hit first, so a window whose last hit has left it is dropped from the front, a
    few on each call: memory follows the keys hit within their window, with no sweep. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, int, float], OrderedDict[str, deque[float]]] = {}

    def hit(self, kind: str, key: str, rate: str) -> float | None:
        return self._check(kind, key, rate, count=True)

    def spent(self, kind: str, key: str, rate: str) -> float | None:
        return self._check(kind, key, rate, count=False)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def _check(self, kind: str, key: str, rate: str, *, count: bool) -> float | None:
        amount, window = _rate(rate)
        with self._lock:
            now = self._clock()  # read under the lock: the buckets stay in the order of their hits
            bucket = self._buckets.setdefault((kind, amount, window), OrderedDict())
            _prune(bucket, now - window)
            hits = bucket.get(key)
            if hits is None:
                if amount < 1:
                    return _retry(now, now, window)
                if count:
                    bucket[key] = deque((now,), maxlen=amount)
                return None
            while hits and hits[0] <= now - window:
                hits.popleft()
            if len(hits) >= amount:
                return _retry(hits[0], now, window)
            if count:
                hits.append(now)
                bucket.move_to_end(key)
            return None


def _prune(bucket: OrderedDict[str, deque[float]], horizon: float, most: int = _PRUNE_PER_CALL) -> None:
    """Drop up to `most` windows whose last hit is at or before `horizon` (nothing left in them),
    least recently hit first: each call drops more than it can add, so stale keys never pile up."""
    for _ in range(most):
        if not bucket:
            return
        key, hits = next(iter(bucket.items()))
        if hits and hits[-1] > horizon:
            return
        del bucket[key]


def _retry(oldest: float, now: float, window: float) -> float:
    return float(max(1, math.ceil(oldest + window - now)))


class RateLimiter:
    """hit(kind, key, rate) -> None when allowed (and counted), else the seconds until the next hit is
    allowed; spent(kind, key, rate) asks the same without counting."""

    def __init__(self, storage_uri: str = "memory://") -> None:
        self._local = MovingWindows() if storage_uri == "memory://" else None
        if self._local is None:
            self._slowapi = Limiter(
                key_func=get_remote_address, storage_uri=storage_uri, strategy="moving-window"
            )
            self._strategy = self._slowapi.limiter

    def hit(self, kind: str, key: str, rate: str) -> float | None:
        if self._local is not None:
            return self._local.hit(kind, key, rate)
        item = parse(rate)
        if self._strategy.hit(item, kind, key):
            return None
        return self._retry_after(item, kind, key)

    def spent(self, kind: str, key: str, rate: str) -> float | None:
        """Like hit, without counting: None while one more hit would be allowed."""
        if self._local is not None:
            return self._local.spent(kind, key, rate)
        item = parse(rate)
        if self._strategy.test(item, kind, key):
            return None
        return self._retry_after(item, kind, key)

    def _retry_after(self, item: RateLimitItem, kind: str, key: str) -> float:
        stats = self._strategy.get_window_stats(item, kind, key)
        return float(max(1, math.ceil(stats.reset_time - time.time())))
