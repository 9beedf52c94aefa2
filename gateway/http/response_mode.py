"""How a stateless-era MCP request (protocol 2026-07-28 and later) is answered: one plain JSON
response, unless it asked for progress.

The SDK answers such a POST either as JSON or as an SSE stream, one choice for the whole server. A
stream is needed only to send notifications before the result, and the only notifications the
gateway sends are progress reports, which go only to a call that carries a progress token. So a
request without one is answered as JSON (the cheaper path: no stream, no extra tasks), and a
request with one as SSE, as before. Both are what the client asked for: it must accept both types.

A client of that era cancels a call by closing its response. The SDK watches for that only on its
stream path; a call answered as JSON is therefore run under `until_disconnect`, which does the same.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from starlette.types import Message, Receive, Scope

__all__ = ["accepts_both", "asks_for_progress", "read_body", "until_disconnect"]

_ACCEPT = b"accept"


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a `receive` that hands it over again, then passes through (so a
    disconnect is still seen). The gateway's body cap, in front, bounds what this reads."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", _replaying([message], receive)
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    return body, _replaying([{"type": "http.request", "body": body, "more_body": False}], receive)


async def until_disconnect(
    answer: Callable[[Receive], Awaitable[None]], body: bytes, receive: Receive
) -> None:
    """`answer(receive)`, handed `body` (read whole), cancelled as soon as `receive` (the rest of the
    request's messages) says the client disconnected."""
    gone = anyio.Event()

    async def after_body() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def watch(scope: anyio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()
        scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch, tg.cancel_scope)
        await answer(_replaying([{"type": "http.request", "body": body, "more_body": False}], after_body))
        tg.cancel_scope.cancel()


def _replaying(first: list[Message], receive: Receive) -> Receive:
    pending = list(first)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def accepts_both(scope: Scope) -> bool:
    """The client's Accept names JSON and SSE (wildcards count), as streamable HTTP requires."""
    values = b",".join(v for k, v in scope.get("headers", []) if k == _ACCEPT).decode("latin-1")
    types = {part.split(";", 1)[0].strip().lower() for part in values.split(",")}
    if "*/*" in types:
        return True
    json_ok = bool(types & {"application/json", "application/*"})
    return json_ok and bool(types & {"text/event-stream", "text/*"})


def asks_for_progress(body: bytes) -> bool:
    """The request carries a progress token (read as the SDK reads it). What does not parse as one
    request asks for nothing: the SDK answers it with an error either way."""
    try:
        decoded: Any = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(decoded, dict):
        return False
    params = decoded.get("params")
    return isinstance(params, dict) and progress_token_from_params(params) is not None
