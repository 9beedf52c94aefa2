"""Who is calling a tool, read from the request the MCP SDK hands the tool: never from arguments."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context

from gateway.http.middleware.authentication import scope_principal
from policy import Principal

__all__ = ["principal_of", "source_ip"]


def source_ip(ctx: Context[Any, Any]) -> str | None:
    """The client address of the request that carries this call."""
    client = getattr(ctx.request_context.request, "client", None)
    return getattr(client, "host", None)


def principal_of(ctx: Context[Any, Any]) -> Principal | None:
    """The principal the authentication middleware put on this request, if any."""
    request = ctx.request_context.request
    return scope_principal(getattr(request, "scope", None) or {})
