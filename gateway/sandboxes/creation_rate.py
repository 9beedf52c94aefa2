"""The per-principal sandbox-creation rate: charged when a principal gets a new sandbox (made now or
taken from a warm pool), refused with `sandbox-creation-rate` and a `ratelimit.hit` past it."""

from __future__ import annotations

from audit import AuditLog
from gateway.errors import QuotaExceeded
from gateway.ratelimit import RateLimiter
from policy import Allowed

__all__ = ["charge_creation"]


def charge_creation(rates: RateLimiter, audit: AuditLog, key: str, grant: Allowed) -> None:
    rate = grant.rate_limits.sandbox_creations
    retry = rates.hit("sandbox_creations", key, rate)
    if retry is None:
        return
    audit.emit("ratelimit.hit", limit="sandbox_creations", rate=rate, retry_after_s=retry)
    raise QuotaExceeded(
        f"sandbox-creation rate {rate} reached; retry in {retry:.0f} s", code="sandbox-creation-rate"
    )
