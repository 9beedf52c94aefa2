"""HTTP rate limits: by client address before authentication, by principal after it (limits from
the principal's policy profile). Over the limit: 429 with Retry-After, and a `ratelimit.hit` audit
event folded per source and window (the first at once, the rest counted in a summary): a client
that keeps knocking cannot push older evidence out of the log."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from audit import AuditLog, AuditWriteError
from gateway.middleware import PRINCIPAL_SCOPE_KEY
from gateway.ratelimit import RateLimiter
from policy import Principal

__all__ = ["AddressRateLimitMiddleware", "PrincipalRateLimitMiddleware"]


async def _too_many(send: Send, retry_after: float, what: str) -> None:
    body = json.dumps(
        {"error": "rate_limited", "error_description": f"{what}; retry after {retry_after:.0f} s"}
    )
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(int(retry_after)).encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})


class AddressRateLimitMiddleware:
    """Every request to the protected prefix counts against its client address (before auth)."""

    def __init__(
        self, app: ASGIApp, limiter: RateLimiter, audit: AuditLog, rate: str, prefix: str = "/mcp"
    ) -> None:
        self.app, self.limiter, self.audit, self.rate, self.prefix = app, limiter, audit, rate, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        retry = self.limiter.hit("address", address, self.rate)
        if retry is None:
            await self.app(scope, receive, send)
            return
        with contextlib.suppress(AuditWriteError):
            self.audit.emit_repeated(
                "ratelimit.hit",
                {"source_ip": address, "limit": "address"},
                rate=self.rate,
                retry_after_s=retry,
            )
        await _too_many(send, retry, f"more than {self.rate} requests from this address")


class PrincipalRateLimitMiddleware:
    """Each authenticated POST to the protected prefix counts against the principal's profile rate."""

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        audit: AuditLog,
        rate_for: Callable[[Principal], str],
        prefix: str = "/mcp",
    ) -> None:
        self.app, self.limiter, self.audit, self.rate_for, self.prefix = app, limiter, audit, rate_for, prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        principal = scope.get(PRINCIPAL_SCOPE_KEY)
        if scope["type"] != "http" or scope["method"] != "POST" or not isinstance(principal, Principal):
            await self.app(scope, receive, send)
            return
        rate = self.rate_for(principal)
        retry = self.limiter.hit("requests", f"{principal.tenant}/{principal.id}", rate)
        if retry is None:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        with contextlib.suppress(AuditWriteError):
            self.audit.emit_repeated(
                "ratelimit.hit",
                {"principal": principal.id, "tenant": principal.tenant, "limit": "requests"},
                rate=rate,
                retry_after_s=retry,
                source_ip=client[0] if client else None,
            )
        await _too_many(send, retry, f"more than {rate} requests for this principal")
