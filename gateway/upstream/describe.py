"""Why an upstream connection or request failed, in words safe to log and to show a sandbox: the
upstream's own text is trimmed and stripped of control characters; no header or secret is in it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2
from mcp import MCPError

from gateway.errors import GatewayError

__all__ = ["clean", "describe"]

_MAX_TEXT = 300


def clean(text: str, limit: int = _MAX_TEXT) -> str:
    """`text` on one line, without control characters, at most `limit` characters."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def describe(exc: BaseException, status: int | None) -> str:  # noqa: PLR0911 - one return per kind
    """A short account of `exc`; `status` is the upstream's last HTTP error status, if any."""
    leaves = list(_leaves(exc))
    for leaf in leaves:
        if isinstance(leaf, GatewayError):
            return leaf.message
    if status in (401, 403):
        return f"the upstream refused the gateway's credentials (HTTP {status})"
    for leaf in leaves:
        if isinstance(leaf, httpx2.ConnectError | httpx2.ConnectTimeout):
            return "cannot connect to the upstream"
        if isinstance(leaf, httpx2.TimeoutException):
            return "the upstream did not answer in time"
        if isinstance(leaf, httpx2.TransportError):
            return f"the connection to the upstream failed ({type(leaf).__name__})"
        if isinstance(leaf, MCPError):
            suffix = f" (HTTP {status})" if status is not None else ""
            return f"MCP error {leaf.code}: {clean(leaf.message)}{suffix}"
        if isinstance(leaf, OSError):
            return f"cannot start or talk to the server ({leaf.strerror or type(leaf).__name__})"
    return f"{type(leaves[0]).__name__}" if leaves else "unknown error"
