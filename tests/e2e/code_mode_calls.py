"""What the code-mode e2e tests share: run Python as a principal, and read the upstream calls the
gateway recorded."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import mcp_client
from tests.support import audit_events
from tests.support.gateway_process import Gateway

__all__ = ["run_python", "upstream_calls"]


async def run_python(gateway: Gateway, who: str, code: str, timeout_s: float | None = None) -> dict[str, Any]:
    """`execute_python` of `code` as `who`; its structured result."""
    arguments: dict[str, Any] = {"code": code}
    if timeout_s is not None:
        arguments["timeout_s"] = timeout_s
    async with mcp_client(gateway.url, gateway.tokens[who]) as client:
        result = await client.call_tool("execute_python", arguments)
    assert result.structured_content is not None, result
    return dict(result.structured_content)


def _flat(event: dict[str, Any]) -> dict[str, Any]:
    """An upstream.call event's facts: status, error, server, tool, principal, request_id, ..."""
    upstream, outcome = event.get("upstream") or {}, event.get("outcome") or {}
    return {
        **upstream,
        **outcome,
        "principal": (event.get("actor") or {}).get("principal"),
        "request_id": event.get("request_id"),
    }


def upstream_calls(gateway: Gateway, **match: Any) -> list[dict[str, Any]]:
    """The upstream.call events (flattened) whose facts match."""
    flat = [_flat(e) for e in audit_events(gateway.audit_log, "upstream.call")]
    return [e for e in flat if all(e.get(k) == v for k, v in match.items())]
