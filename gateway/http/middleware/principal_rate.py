"""The request rates of an authenticated principal and of its tenant."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from audit import AuditLog, AuditWriteError
from gateway.http.middleware.authentication import scope_principal
from gateway.http.middleware.responses import send_too_many
from gateway.ratelimit import RateLimiter
from gateway.stages import timed
from policy import Principal

__all__ = ["PrincipalRateLimitMiddleware", "RatesFor"]

#: What the principal-rate middleware needs of the policy: (principal's rate, its tenant's rate).
RatesFor = Callable[[Principal], tuple[str, str]]


class PrincipalRateLimitMiddleware:
    """Each authenticated POST to the protected prefix counts against its principal's rate, then
    (if the principal's allowed it) its tenant's: a principal refused by its own budget does not
    spend its tenant's."""

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        audit: AuditLog,
        rates_for: RatesFor,
        prefix: str = "/mcp",
    ) -> None:
        self.app, self.limiter, self.audit, self.rates_for, self.prefix = (
            app,
            limiter,
            audit,
            rates_for,
            prefix,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope_principal(scope)
        if scope["type"] != "http" or scope["method"] != "POST" or principal is None:
            await self.app(scope, receive, send)
            return
        rate, tenant_rate = self.rates_for(principal)
        with timed("rate"):
            retry = self.limiter.hit("requests", f"{principal.tenant}/{principal.id}", rate)
        if retry is not None:
            key = {"principal": principal.id, "tenant": principal.tenant, "limit": "requests"}
            self._record(scope, principal, key, rate, retry)
            await send_too_many(send, retry, f"more than {rate} requests for this principal")
            return
        with timed("rate"):
            retry = self.limiter.hit("tenant-requests", principal.tenant, tenant_rate)
        if retry is not None:
            key = {"tenant": principal.tenant, "limit": "tenant-requests"}
            self._record(scope, principal, key, tenant_rate, retry)
            await send_too_many(send, retry, f"more than {tenant_rate} requests for this tenant")
            return
        await self.app(scope, receive, send)

    def _record(
        self, scope: Scope, principal: Principal, key: dict[str, str], rate: str, retry: float
    ) -> None:
        client = scope.get("client")
        extra = {} if "principal" in key else {"principal": principal.id}
        with contextlib.suppress(AuditWriteError):
            self.audit.emit_repeated(
                "ratelimit.hit",
                key,
                rate=rate,
                retry_after_s=retry,
                source_ip=client[0] if client else None,
                **extra,
            )
