"""HTTP rate limits, charged to who the caller is.

- A request that does not authenticate (no credential, a malformed or refused one) is charged to
  its client address (`--address-rate`). Once an address has spent that budget, its requests are
  refused before any credential is checked, until the window moves on.
- A request that authenticates is never charged to its address: it counts against its principal
  (`rate_limits.requests`) and its tenant (`rate_limits.tenant_requests`, the caller's profile's),
  so one agent behind a shared address (a NAT, an agent platform) cannot spend the others' budget.

Over a limit: 429 with Retry-After, and a `ratelimit.hit` audit event folded per source and window
(the first at once, the rest counted in a summary): a client that keeps knocking cannot push older
evidence out of the log."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from audit import AuditLog, AuditWriteError
from gateway.http.middleware import PRINCIPAL_SCOPE_KEY
from gateway.ratelimit import RateLimiter
from policy import Principal

__all__ = ["AddressBudget", "AddressRateLimitMiddleware", "PrincipalRateLimitMiddleware"]

#: What the principal-rate middleware needs of the policy: (principal's rate, its tenant's rate).
RatesFor = Callable[[Principal], tuple[str, str]]


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


class AddressBudget:
    """The budget of unauthenticated requests per client address: `charge` one that failed to
    authenticate; `spent` says (without counting) whether the address has none left."""

    def __init__(self, limiter: RateLimiter, rate: str) -> None:
        self.limiter, self.rate = limiter, rate

    def spent(self, address: str) -> float | None:
        return self.limiter.spent("address", address, self.rate)

    def charge(self, address: str) -> None:
        self.limiter.hit("address", address, self.rate)


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
        await _too_many(send, retry, f"more than {self.rate} unauthenticated requests from this address")


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
        principal = scope.get(PRINCIPAL_SCOPE_KEY)
        if scope["type"] != "http" or scope["method"] != "POST" or not isinstance(principal, Principal):
            await self.app(scope, receive, send)
            return
        rate, tenant_rate = self.rates_for(principal)
        retry = self.limiter.hit("requests", f"{principal.tenant}/{principal.id}", rate)
        if retry is not None:
            key = {"principal": principal.id, "tenant": principal.tenant, "limit": "requests"}
            self._record(scope, key, rate, retry)
            await _too_many(send, retry, f"more than {rate} requests for this principal")
            return
        retry = self.limiter.hit("tenant-requests", principal.tenant, tenant_rate)
        if retry is not None:
            self._record(scope, {"tenant": principal.tenant, "limit": "tenant-requests"}, tenant_rate, retry)
            await _too_many(send, retry, f"more than {tenant_rate} requests for this tenant")
            return
        await self.app(scope, receive, send)

    def _record(self, scope: Scope, key: dict[str, str], rate: str, retry: float) -> None:
        client = scope.get("client")
        principal = scope[PRINCIPAL_SCOPE_KEY]
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
