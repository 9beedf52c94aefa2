"""A stateless-era (2026-07-28) call is cancelled when its client goes away, whether it is answered as
JSON (no progress token) or as a stream: closing the response is how such a client cancels."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp.server.mcpserver import MCPServer
from starlette.types import Message

from gateway.http.sessions import GatewaySessionManager, SessionTable

pytestmark = pytest.mark.anyio

_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
}


class Held:
    """A tool that waits until it is cancelled (or told to end), saying which."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.release = anyio.Event()
        self.cancelled = anyio.Event()

    def manager(self) -> GatewaySessionManager:
        mcp = MCPServer("test")

        @mcp.tool()
        async def hold() -> str:
            self.started.set()
            try:
                await self.release.wait()
            except anyio.get_cancelled_exc_class():
                self.cancelled.set()
                raise
            return "done"

        return GatewaySessionManager(
            mcp._lowlevel_server, table=SessionTable(8, 16), on_refused=lambda *_: None
        )


def _scope() -> dict[str, Any]:
    headers = [
        (b"host", b"localhost"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-type", b"application/json"),
        (b"mcp-protocol-version", b"2026-07-28"),
        (b"mcp-method", b"tools/call"),
        (b"mcp-name", b"hold"),
    ]
    return {
        "type": "http",
        "method": "POST",
        "path": "/mcp",
        "raw_path": b"/mcp",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("localhost", 80),
        "scheme": "http",
        "root_path": "",
        "http_version": "1.1",
    }


def _body(progress: bool) -> bytes:
    meta: dict[str, Any] = dict(_META)
    if progress:
        meta["progressToken"] = "p-1"
    params = {"name": "hold", "arguments": {}, "_meta": meta}
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}).encode()


async def _call(held: Held, progress: bool, *, disconnect: bool) -> list[Message]:
    gone = anyio.Event()
    pending: list[Message] = [{"type": "http.request", "body": _body(progress), "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    manager = held.manager()
    with anyio.fail_after(10):
        async with manager.run(), anyio.create_task_group() as tg:
            tg.start_soon(manager.handle_request, _scope(), receive, send)
            await held.started.wait()
            if disconnect:
                gone.set()
                await held.cancelled.wait()
            else:
                held.release.set()
                while not any(m.get("more_body") is False or "more_body" not in m for m in sent[1:]):
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    return sent


@pytest.mark.parametrize("progress", [False, True], ids=["json", "stream"])
async def test_a_client_that_goes_away_cancels_its_call(progress: bool) -> None:
    held = Held()
    await _call(held, progress, disconnect=True)
    assert held.cancelled.is_set()


async def test_a_call_without_a_progress_token_is_still_answered_as_json() -> None:
    held = Held()
    sent = await _call(held, False, disconnect=False)
    start = sent[0]
    assert start["status"] == 200
    assert (b"content-type", b"application/json") in start["headers"]
    assert b'"done"' in b"".join(m.get("body", b"") for m in sent[1:])
    assert not held.cancelled.is_set()
