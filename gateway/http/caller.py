"""Who is calling a tool, read from the request the MCP SDK hands the tool: never from arguments."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context

from gateway.http.middleware.authentication import scope_principal
from policy import Principal

__all__ = ["principal_of", "source_ip", "wants_progress"]


def source_ip(ctx: Context[Any, Any]) -> str | None:
    """The client address of the request that carries this call."""
    client = getattr(ctx.request_context.request, "client", None)
    return getattr(client, "host", None)


def principal_of(ctx: Context[Any, Any]) -> Principal | None:
    """The principal the authentication middleware put on this request, if any."""
    request = ctx.request_context.request
    return scope_principal(getattr(request, "scope", None) or {})


def wants_progress(ctx: Context[Any, Any]) -> bool:
    """Whether the client sent a progress token with this call (progress is reported only then)."""
    meta = ctx.request_context.meta  # validated by the SDK: python field names
    token = meta.get("progress_token") if meta else None
    return isinstance(token, str | int) and not isinstance(token, bool)
