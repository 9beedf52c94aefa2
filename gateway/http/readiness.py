"""GET /ready: whether this gateway can take calls now."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from audit import AuditLog
from gateway.backend.base import Backend
from gateway.errors import GatewayError
from gateway.fleet.backend import FleetBackend
from gateway.fleet.status import host_rows
from gateway.sandboxes.broker import Broker

__all__ = ["readiness", "ready_route"]


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
        checks["docker_ops"] = broker.saturation()
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
    if isinstance(backend, FleetBackend):  # fleet mode: ready while some host can take sandboxes
        checks["hosts"] = host_rows(backend)
        checks["engine"] = checks["engine"] and any(row["placeable"] for row in checks["hosts"])
    checks["ready"] = bool(checks["engine"] and checks["image"] and checks["audit"] and not saturated)
    return checks


def ready_route(backend: Backend, audit: AuditLog, image: str, broker: Broker) -> Route:
    """GET /ready: the checks, with 200 when ready and 503 when not."""

    async def ready(request: Request) -> JSONResponse:
        checks = await readiness(backend, audit, image, broker)
        return JSONResponse(checks, status_code=200 if checks["ready"] else 503)

    return Route("/ready", ready, methods=["GET"])
