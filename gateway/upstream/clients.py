"""The gateway's clients to upstream MCP servers: one long-lived session per server, tools listed
and called by name, only the tools the upstreams file exposes.

    upstreams = Upstreams(load_upstreams(path))
    await upstreams.start()                      # in the gateway's lifespan; a failed server is retried
    tools = await upstreams.list_tools("notes")
    result = await upstreams.call("notes", "search_notes", {"query": "x"}, timeout_s=10)
    await upstreams.aclose()

A tool that is not exposed, or a server that is not configured, is refused (`upstream-unknown`)
before any traffic. A result with `is_error` is returned, not raised.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import TaskGroup
from mcp import Client
from mcp_types import Tool

from gateway.errors import InvalidArgument, UpstreamError, UpstreamUnavailable, UpstreamUnknown
from gateway.upstream.config import UpstreamConfig
from gateway.upstream.connection import Connection
from gateway.upstream.results import UpstreamResult, UpstreamTool, result_of, tool_of
from gateway.upstream.transport import MAX_RESULT_BYTES

__all__ = ["ToolsChanged", "Upstreams"]

_log = logging.getLogger("sandbox_gateway.upstream")

#: on_tools_changed(server): the server's tool list changed (or it reconnected and may have changed).
ToolsChanged = Callable[[str], Awaitable[None]]
_TOOL_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,128}")
_MAX_PAGES = 100
_START_WAIT_S = 10.0


class Upstreams:
    """The upstream servers of an `UpstreamConfig`, each behind its own long-lived session."""

    def __init__(self, config: UpstreamConfig, *, on_tools_changed: ToolsChanged | None = None) -> None:
        self.config = config
        #: Awaited (in a task of its own) when a server's tool list changes; errors are logged.
        self.on_tools_changed = on_tools_changed
        self._connections = {
            name: Connection(name, server, self._spawn, self._tools_changed)
            for name, server in config.servers.items()
        }
        self._runner: asyncio.Task[None] | None = None
        self._tasks: TaskGroup | None = None
        self._tasks_ready = asyncio.Event()
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> Upstreams:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect to every server at once; one that cannot be reached is logged and tried again on
        its next call."""

        async def connect(connection: Connection) -> None:
            # A server slow to answer is not waited for long: its connect goes on in the background.
            with anyio.move_on_after(_START_WAIT_S):
                try:
                    await connection.session()
                except UpstreamError as exc:
                    _log.warning("upstream %s: not connected at start: %s", connection.name, exc.message)

        async with anyio.create_task_group() as group:
            for connection in self._connections.values():
                group.start_soon(connect, connection)

    async def aclose(self) -> None:
        """End every session and stop every stdio server's process; calls made afterwards fail."""
        async with anyio.create_task_group() as group:
            for connection in self._connections.values():
                group.start_soon(connection.close)
        self._stopping.set()
        if self._runner is not None:
            await self._runner

    def servers(self) -> list[str]:
        """The configured servers' names, in the file's order."""
        return list(self._connections)

    def connected(self, server: str) -> bool:
        """Whether the server has a live session now (a call would not need to connect first)."""
        return self._connection(server).connected

    async def list_tools(self, server: str) -> list[UpstreamTool]:
        """The server's tools that the upstreams file exposes, as the server lists them now."""
        connection = self._connection(server)

        async def every_page(client: Client) -> list[Tool]:
            listed: list[Tool] = []
            cursor: str | None = None
            for _ in range(_MAX_PAGES):
                page = await client.list_tools(cursor=cursor)
                listed += page.tools
                cursor = page.next_cursor
                if cursor is None:
                    break
            return listed

        listed = await connection.request("listing tools", connection.config.timeout_s, every_page)
        seen: set[str] = set()
        tools = []
        for tool in listed:
            if tool.name not in seen and connection.config.exposes(tool.name):
                seen.add(tool.name)
                tools.append(tool_of(server, tool))
        return tools

    async def call(
        self, server: str, tool: str, arguments: dict[str, Any], *, timeout_s: float
    ) -> UpstreamResult:
        """Call an exposed tool within `timeout_s` (and the server's own `timeout_s`, if smaller).

        Raises UpstreamUnknown (before any traffic), UpstreamUnavailable, UpstreamTimeout (the
        request is cancelled; the session stays usable) or UpstreamFailed.
        """
        connection = self._connection(server)
        if not isinstance(tool, str) or not _TOOL_NAME.fullmatch(tool) or not connection.config.exposes(tool):
            raise UpstreamUnknown(f"upstream {server} exposes no tool {str(tool)[:128]!r}")
        if not isinstance(arguments, dict) or not all(isinstance(key, str) for key in arguments):
            raise InvalidArgument(f"upstream {server}: the arguments of {tool} must be an object")
        if not timeout_s > 0:
            raise InvalidArgument(f"upstream {server}: timeout_s must be positive")
        limit = min(timeout_s, connection.config.timeout_s)
        result = await connection.request(
            f"tool {tool}",
            limit,
            lambda client: client.call_tool(tool, arguments, read_timeout_seconds=limit),
        )
        return result_of(server, tool, result, max_bytes=MAX_RESULT_BYTES)

    def _connection(self, server: str) -> Connection:
        connection = self._connections.get(server) if isinstance(server, str) else None
        if connection is None:
            raise UpstreamUnknown(f"no upstream server {str(server)[:64]!r}")
        return connection

    async def _spawn(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work` in the task group that outlives every caller (started on first use)."""
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run(), name="sgw-upstreams")
        await self._tasks_ready.wait()
        if self._tasks is None:
            raise UpstreamUnavailable("the upstream clients are closed")
        self._tasks.start_soon(work)

    async def _run(self) -> None:
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            self._tasks_ready.set()
            await self._stopping.wait()
            tasks.cancel_scope.cancel()
        self._tasks = None

    async def _tools_changed(self, server: str) -> None:
        callback = self.on_tools_changed
        if callback is None:
            return
        try:
            await callback(server)
        except Exception:  # noqa: BLE001 - a failing hook must not break the session that saw the change
            _log.exception("upstream %s: on_tools_changed failed", server)
