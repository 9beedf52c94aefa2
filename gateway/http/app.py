"""The Starlette application: /mcp (streamable HTTP), /health and /ready, behind the guards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, cast

import anyio
import anyio.to_thread
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from audit import AuditLog, AuditWriteError
from gateway import __version__
from gateway.auth.tokens import SCOPES
from gateway.auth.verifier import GatewayTokenVerifier
from gateway.backend.base import Backend
from gateway.calls.reload import reload_policy
from gateway.calls.service import ExecutionService
from gateway.config import Settings
from gateway.errors import GatewayError
from gateway.http.middleware.address_budget import AddressBudget
from gateway.http.middleware.address_rate import AddressRateLimitMiddleware
from gateway.http.middleware.authentication import PRINCIPAL_SCOPE_KEY, BearerAuthMiddleware
from gateway.http.middleware.body_limit import BodyLimitMiddleware
from gateway.http.middleware.principal_rate import PrincipalRateLimitMiddleware
from gateway.http.middleware.secure_headers import SecureHeadersMiddleware
from gateway.http.sessions import GatewaySessionManager, SessionTable
from gateway.http.tools import AuditedMCPServer, register_tools
from gateway.sandboxes.broker import Broker
from policy import Principal

__all__ = ["build_app", "readiness"]

_log = logging.getLogger("sandbox_gateway.app")

_INSTRUCTIONS = (
    "Sandbox Gateway runs your code in a private, isolated sandbox with no network access. "
    "Files in /workspace persist between your calls. Limits come from your policy profile."
)


def _transport_security(settings: Settings) -> TransportSecuritySettings:
    """DNS-rebinding protection is always on: loopback names plus the hosts the operator lists."""
    hosts = ["127.0.0.1:*", "localhost:*", "[::1]:*", *settings.allowed_hosts]
    if settings.host not in ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::"):  # noqa: S104 - compared, not bound
        hosts.append(f"{settings.host}:*")
    origins = [f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts]
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


async def readiness(
    backend: Backend, audit: AuditLog, image: str, broker: Broker | None = None
) -> dict[str, Any]:
    """Engine reachable through the proxy, sandbox image present, audit sink writable, and (with a
    broker) the shared Docker worker pool not saturated: no call has waited a second for a worker.
    The probe's own engine checks run on threads outside that pool, so a saturated pool cannot hide
    behind a slow probe."""
    checks: dict[str, Any] = {"audit": audit.writable()}
    saturated = False
    if broker is not None:
        checks["docker_ops"] = broker.ops.saturation()
        checks["executions"] = {"running": broker.running_calls}
        saturated = bool(checks["docker_ops"]["saturated"])
    try:
        with anyio.fail_after(5):
            await anyio.to_thread.run_sync(backend.ping)
            checks["engine"] = True
            checks["image"] = await anyio.to_thread.run_sync(backend.image_present, image)
    except (GatewayError, TimeoutError) as exc:
        checks["engine"] = False
        checks["image"] = False
        checks["error"] = exc.message if isinstance(exc, GatewayError) else "engine check timed out"
    checks["ready"] = bool(checks["engine"] and checks["image"] and checks["audit"] and not saturated)
    return checks


async def _reap_forever(service: ExecutionService, interval_s: float) -> None:
    """Remove sandboxes past their idle TTL or max age, every `interval_s`."""
    while True:
        await anyio.sleep(interval_s)
        try:
            await service.broker.reap_expired()
        except GatewayError as exc:  # the engine may be down for a while; try again next round
            _log.warning("reaping expired sandboxes failed: %s", exc.message)


async def _sweep(service: ExecutionService) -> None:
    """Keep current sandboxes from before a restart for adoption; remove stale and orphaned ones."""
    specs = {name: profile.sandbox.digest() for name, profile in service.engine.policy.profiles.items()}
    try:
        await service.broker.sweep(specs)
    except GatewayError as exc:  # the engine may come up later; sandboxes are then adopted lazily
        _log.warning("start-up sweep of sandboxes failed: %s", exc.message)


#: How often ended windows of repeated audit events are summarised (their summaries are this late at most).
_REPEAT_FLUSH_S = 1.0


async def _flush_repeated_forever(audit: AuditLog) -> None:
    """Write the summary of each window of repeated events (auth failures, rate-limit hits) once it ends."""
    while True:
        await anyio.sleep(_REPEAT_FLUSH_S)
        try:
            audit.flush_repeated()
        except AuditWriteError:  # the sinks' failures are logged and counted; try again next round
            continue


def _record_stop(audit: AuditLog, removed: int, interrupted: int) -> None:
    """Summarise the windows of repeated events still open, so no counted event is lost at a stop,
    then record the stop itself (the chain's last line for this run)."""
    with contextlib.suppress(AuditWriteError):
        audit.flush_repeated(everything=True)
    audit.emit("gateway.stop", sandboxes_removed=removed, calls_interrupted=interrupted)


#: After the server's graceful wait, how long calls still running get before sandboxes are removed.
_SETTLE_S = 2.0


async def _cleanup(service: ExecutionService) -> int:
    """Remove every sandbox of this gateway; with the engine unreachable, say so and stop anyway."""
    try:
        return await service.broker.cleanup_all()
    except GatewayError as exc:
        _log.error("sandboxes could not be removed on shutdown (%s); the next start sweeps them", exc.message)
        return 0


def _session_manager(
    sdk: StreamableHTTPSessionManager, settings: Settings, service: ExecutionService
) -> GatewaySessionManager:
    """The SDK's session manager, as configured by the SDK, with the gateway's per-principal bounds."""

    def refused(scope: Scope, limit: str, cap: int) -> None:
        principal = scope.get(PRINCIPAL_SCOPE_KEY)
        client = scope.get("client")
        key = (
            {"principal": principal.id, "tenant": principal.tenant}
            if isinstance(principal, Principal)
            else {}
        )
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


def _oauth_routes(verifier: GatewayTokenVerifier) -> tuple[list[BaseRoute], str | None]:
    """The protected-resource metadata route and its URL, when JWT access tokens are accepted."""
    oauth = verifier.jwt.settings if verifier.jwt else None
    if oauth is None:
        return [], None
    # AuthSettings keeps the issuer exactly as configured (RFC 8414 compares issuers as strings).
    auth = AuthSettings.model_validate(
        {
            "issuer_url": oauth.issuer,
            "resource_server_url": oauth.resource_url,
            "required_scopes": sorted(SCOPES),
            "validate_token_resource": False,  # the JWT verifier checks the audience itself
        }
    )
    assert auth.resource_server_url is not None  # noqa: S101 - just set
    routes = create_protected_resource_routes(
        resource_url=auth.resource_server_url,
        authorization_servers=[auth.issuer_url],
        scopes_supported=auth.required_scopes,
    )
    return list(routes), str(build_resource_metadata_url(auth.resource_server_url))


def _front_door(
    settings: Settings,
    service: ExecutionService,
    verifier: GatewayTokenVerifier,
    audit: AuditLog,
    metadata_url: str | None,
) -> list[Middleware]:
    """Headers, body cap, then: the address budget (unauthenticated requests), the credential,
    the principal's and its tenant's request budgets."""

    def rates_for(principal: Principal) -> tuple[str, str]:
        profile = service.engine.policy.profile_of(principal.id, principal.tenant, principal.profile)
        if profile is None:
            return "1/hour", "1/hour"
        return profile.rate_limits.requests, profile.rate_limits.tenant_requests

    limiter = service.broker.rates
    address_budget = AddressBudget(limiter, settings.address_rate)
    return [
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
        Middleware(PrincipalRateLimitMiddleware, limiter=limiter, audit=audit, rates_for=rates_for),
    ]


def build_app(
    settings: Settings,
    *,
    service: ExecutionService,
    verifier: GatewayTokenVerifier,
    audit: AuditLog,
    image: str,
    on_shutdown: Callable[[], None] | None = None,
) -> Starlette:
    """Assemble the app. The lifespan runs the MCP session manager and removes sandboxes on shutdown."""
    log_level = cast(Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], settings.log_level)
    mcp: MCPServer[Any] = AuditedMCPServer(
        "sandbox-gateway",
        service=service,
        version=__version__,
        instructions=_INSTRUCTIONS,
        log_level=log_level,
    )
    register_tools(mcp, service, skills_dir=settings.skills_path, tools_dir=settings.tools_path)
    backend = service.broker.backend

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "version": __version__})

    async def ready(request: Request) -> JSONResponse:
        checks = await readiness(backend, audit, image, service.broker)
        return JSONResponse(checks, status_code=200 if checks["ready"] else 503)

    inner = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        transport_security=_transport_security(settings),
        host=settings.host,
        max_request_body_size=settings.max_body_bytes,
    )
    sessions = _session_manager(mcp.session_manager, settings, service)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, reload_policy, service, settings.policy_file, audit)
        except (RuntimeError, ValueError):  # an embedded server off the main thread: no signals there
            _log.warning("policy reload on SIGHUP is unavailable outside the main thread")
        async with sessions.run():
            audit.emit(
                "gateway.start",
                version=__version__,
                gateway_id=settings.gateway_id,
                policy_digest=service.engine.digest,
                docker_host=settings.docker_host,
            )
            await _sweep(service)
            try:
                # Background work ends (and its Docker calls return) before the clean-up below, so
                # a pool sandbox being made now cannot outlive the shutdown.
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(_reap_forever, service, settings.reap_interval_s)
                    tasks.start_soon(service.broker.maintain_pool)
                    tasks.start_soon(_flush_repeated_forever, audit)
                    try:
                        yield
                    finally:
                        loop.remove_signal_handler(signal.SIGHUP)
                        tasks.cancel_scope.cancel()
            finally:
                removed = 0
                with anyio.CancelScope(shield=True):
                    # The server already let open requests finish (up to the grace); calls still
                    # running now lost their client, or outlived the grace: they get a moment more.
                    interrupted = await service.broker.wait_idle(min(settings.shutdown_grace_s, _SETTLE_S))
                    if settings.remove_on_shutdown:
                        removed = await _cleanup(service)
                _record_stop(audit, removed, interrupted)
                if on_shutdown is not None:
                    on_shutdown()  # flush exporters now: the server may re-raise the stop signal next

    oauth_routes, metadata_url = _oauth_routes(verifier)
    routes = [
        *(route for route in inner.routes if getattr(route, "path", None) != "/mcp"),
        Route("/mcp", endpoint=StreamableHTTPASGIApp(sessions)),
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        *oauth_routes,
    ]
    return Starlette(
        routes=routes,
        middleware=_front_door(settings, service, verifier, audit, metadata_url),
        lifespan=lifespan,
    )
