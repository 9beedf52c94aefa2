"""The Starlette application: /mcp (streamable HTTP), /health and /ready, behind the guards.

The app is built on a `Core` (gateway/wiring.py): the broker, rate limiter, backend and audit log
it needs come from there.
"""

from __future__ import annotations

from collections.abc import Callable

from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Scope

from gateway import __version__
from gateway.auth.verifier import GatewayTokenVerifier
from gateway.calls.service import ExecutionService
from gateway.config import Settings
from gateway.http.lifespan import gateway_lifespan
from gateway.http.mcp_server import build_mcp_server
from gateway.http.middleware.address_budget import AddressBudget
from gateway.http.middleware.address_rate import AddressRateLimitMiddleware
from gateway.http.middleware.authentication import BearerAuthMiddleware, scope_principal
from gateway.http.middleware.body_limit import BodyLimitMiddleware
from gateway.http.middleware.principal_rate import PrincipalRateLimitMiddleware
from gateway.http.middleware.secure_headers import SecureHeadersMiddleware
from gateway.http.readiness import ready_route
from gateway.http.resource_metadata import resource_metadata_routes
from gateway.http.sessions import GatewaySessionManager, SessionTable
from gateway.stages import StagesMiddleware
from gateway.wiring import Core
from policy import Principal

__all__ = ["build_app"]


def _transport_security(settings: Settings) -> TransportSecuritySettings:
    """DNS-rebinding protection is always on: loopback names plus the hosts the operator lists."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *settings.allowed_hosts]
    if settings.host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"):  # noqa: S104 - compared, not bound
        hosts.append(f"{settings.host}:*")
    origins = [f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def _session_manager(
    sdk: StreamableHTTPSessionManager, settings: Settings, service: ExecutionService
) -> GatewaySessionManager:
    """The SDK's session manager, as configured by the SDK, with the gateway's per-principal bounds."""

    def refused(scope: Scope, limit: str, cap: int) -> None:
        principal = scope_principal(scope)
        client = scope.get("client")
        key = {"principal": principal.id, "tenant": principal.tenant} if principal is not None else {}
        service.budget_refused(limit, key, cap=cap, source_ip=client[0] if client else None)

    return GatewaySessionManager(
        sdk.app,
        table=SessionTable(settings.sessions_per_principal, settings.requests_per_session),
        on_refused=refused,
        json_response=sdk.json_response,
        security_settings=sdk.security_settings,
        max_request_body_size=settings.max_body_bytes,
        session_idle_timeout=settings.session_idle_timeout_s,
        max_sessions=settings.max_sessions,
    )


def _front_door(
    settings: Settings, core: Core, verifier: GatewayTokenVerifier, metadata_url: str | None
) -> list[Middleware]:
    """Headers, body cap, then: the address budget (unauthenticated requests), the credential,
    the principal's and its tenant's request budgets (gateway/http/middleware/)."""

    def rates_for(principal: Principal) -> tuple[str, str]:
        profile = core.engine.policy.profile_of(principal.id, principal.tenant, principal.profile)
        if profile is None:
            return "1/hour", "1/hour"
        return profile.rate_limits.requests, profile.rate_limits.tenant_requests

    audit = core.audit
    address_budget = AddressBudget(core.rates, settings.address_rate)
    return [
        Middleware(StagesMiddleware),
        Middleware(SecureHeadersMiddleware),
        Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes),
        Middleware(AddressRateLimitMiddleware, budget=address_budget, audit=audit),
        Middleware(
            BearerAuthMiddleware,
            verifier=verifier,
            audit=audit,
            resource_metadata_url=metadata_url,
            charge_address=address_budget.charge,
        ),
        Middleware(PrincipalRateLimitMiddleware, limiter=core.rates, audit=audit, rates_for=rates_for),
    ]


def build_app(
    settings: Settings,
    core: Core,
    *,
    verifier: GatewayTokenVerifier,
    image: str,
    on_shutdown: Callable[[], None] | None = None,
) -> Starlette:
    """Assemble the app on `core`. The lifespan runs the MCP session manager and removes sandboxes
    on shutdown; `image` is the one /ready checks for."""
    mcp = build_mcp_server(settings, core.service)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    inner = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=_transport_security(settings),
        host=settings.host,
        max_request_body_size=settings.max_body_bytes,
    )
    sessions = _session_manager(mcp.session_manager, settings, core.service)
    oauth_routes, metadata_url = resource_metadata_routes(verifier.jwt.settings if verifier.jwt else None)
    routes = [
        *(route for route in inner.routes if getattr(route, "path", None) != "/mcp"),
        Route("/mcp", endpoint=StreamableHTTPASGIApp(sessions)),
        Route("/health", health, methods=["GET"]),
        ready_route(core.backend, core.audit, image, core.broker),
        *oauth_routes,
    ]
    return Starlette(
        routes=routes,
        middleware=_front_door(settings, core, verifier, metadata_url),
        lifespan=gateway_lifespan(settings, core, sessions, on_shutdown),
    )
