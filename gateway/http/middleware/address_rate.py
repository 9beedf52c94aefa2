"""The rate limit on unauthenticated requests, per client address, checked before the credential."""

from __future__ import annotations

import contextlib

from starlette.types import ASGIApp, Receive, Scope, Send

from audit import AuditLog, AuditWriteError
from gateway.http.middleware.address_budget import AddressBudget
from gateway.http.middleware.responses import send_too_many
from gateway.stages import timed

__all__ = ["AddressRateLimitMiddleware"]


class AddressRateLimitMiddleware:
    """Before the credential is checked: 429 for an address that has spent its budget of
    unauthenticated requests. The authentication middleware charges the budget (`AddressBudget`)."""

    def __init__(self, app: ASGIApp, budget: AddressBudget, audit: AuditLog, prefix: str = "/mcp") -> None:
        self.app, self.budget, self.audit, self.prefix = app, budget, audit, prefix
        self.rate = budget.rate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        with timed("rate"):
            retry = self.budget.spent(address)
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
        await send_too_many(send, retry, f"more than {self.rate} unauthenticated requests from this address")
