"""The budget of unauthenticated requests per client address, shared by the address rate limit
(which checks it) and the authentication middleware (which charges it)."""

from __future__ import annotations

from gateway.ratelimit import RateLimiter

__all__ = ["AddressBudget"]


class AddressBudget:
    """The budget of unauthenticated requests per client address: `charge` one that failed to
    authenticate; `spent` says (without counting) whether the address has none left."""

    def __init__(self, limiter: RateLimiter, rate: str) -> None:
        self.limiter, self.rate = limiter, rate

    def spent(self, address: str) -> float | None:
        return self.limiter.spent("address", address, self.rate)

    def charge(self, address: str) -> None:
        self.limiter.hit("address", address, self.rate)
