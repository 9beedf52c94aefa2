"""One upstream server's long-lived MCP session.

The SDK's context managers must be entered and left in one task, so each session has an owner task
that holds `async with Client(...)` until the session ends (the connection closed, a call found it
broken, or the gateway stops); calls are made on the session from the callers' own tasks. A session
that ends is replaced on the next call; failed connects back off (1 s, doubling, up to 30 s).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import httpx2
import mcp_types as types
from anyio.abc import TaskStatus
from mcp import Client, MCPError
from mcp.client.session import IncomingMessage
from mcp.client.subscriptions import SubscriptionLost
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from gateway import __version__
from gateway.errors import UpstreamError, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream.config import ServerConfig
from gateway.upstream.describe import clean, describe
from gateway.upstream.transport import HttpStatus, open_transport

__all__ = ["Connection", "Spawn"]

_log = logging.getLogger("sandbox_gateway.upstream")

T = TypeVar("T")
Spawn = Callable[[Callable[[], Coroutine[Any, Any, None]]], Awaitable[None]]
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 1.0, 30.0
#: How long a closing session may take to end by itself before it is cancelled.
_CLOSE_GRACE_S = 10.0
_CLOSED_ERRORS = (
    httpx2.TransportError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


@dataclass
class _Session:
    """One connect attempt and, if it succeeded, the session it made."""

    ready: anyio.Event = field(default_factory=anyio.Event)
    ended: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    client: Client | None = None
    error: str = ""
    #: A 2026-07-28 connection: changes come through `subscriptions/listen`.
    modern: bool = False

    @property
    def live(self) -> bool:
        return self.client is not None and not self.ended.is_set()


class Connection:
    """The session with one upstream server, made on demand and remade when it breaks."""

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        spawn: Spawn,
        changed: Callable[[str], Coroutine[Any, Any, None]],
    ) -> None:
        self.name, self.config = name, config
        self._spawn, self._changed = spawn, changed
        self._session: _Session | None = None
        self._lock = anyio.Lock()
        self._retry_at = 0.0
        self._backoff_s = 0.0
        self._sessions = 0
        self._closing = False
        self.status = HttpStatus()

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.live

    async def session(self) -> tuple[Client, _Session]:
        """The live session, connecting first if there is none; UpstreamUnavailable if it cannot be."""
        current = self._session
        if current is not None and current.live and current.client is not None:
            return current.client, current
        async with self._lock:
            current = self._session
            if current is not None and current.live and current.client is not None:
                return current.client, current
            if self._closing:
                raise UpstreamUnavailable(f"upstream {self.name}: the gateway is stopping")
            wait = self._retry_at - anyio.current_time()
            if wait > 0 and current is not None:
                raise UpstreamUnavailable(
                    f"upstream {self.name} is unavailable ({current.error}); next try in {wait:.1f} s"
                )
            return await self._connect()

    async def _connect(self) -> tuple[Client, _Session]:
        if self._session is not None:
            await self._end(self._session)
        attempt = self._session = _Session()
        self.status.status = None
        await self._spawn(lambda: self._own(attempt))
        with anyio.move_on_after(2 * self.config.timeout_s + 5):
            await attempt.ready.wait()
        if self._closing:
            await self._end(attempt)
            raise UpstreamUnavailable(f"upstream {self.name}: the gateway is stopping")
        if attempt.live and attempt.client is not None:
            self._backoff_s, self._retry_at = 0.0, 0.0
            self._sessions += 1
            if self._sessions > 1:  # tools may have changed while the server was away
                await self._spawn(lambda: self._changed(self.name))
            return attempt.client, attempt
        attempt.error = attempt.error or "the connection was not ready in time"
        await self._end(attempt)
        self._backoff_s = min(_BACKOFF_MAX_S, max(_BACKOFF_FIRST_S, 2 * self._backoff_s))
        self._retry_at = anyio.current_time() + self._backoff_s
        _log.warning(
            "upstream %s: cannot connect: %s (next try in %.0f s)", self.name, attempt.error, self._backoff_s
        )
        raise UpstreamUnavailable(f"upstream {self.name} is unavailable: {attempt.error}")

    async def _own(self, attempt: _Session) -> None:
        """The owner task: enter the client, hold it until the session ends, leave it."""
        with attempt.scope:
            try:
                async with AsyncExitStack() as stack:
                    client = Client(
                        open_transport(self.name, self.config, attempt.ended, self.status),
                        cache=None,
                        read_timeout_seconds=self.config.timeout_s,
                        message_handler=self._on_message,
                        client_info=types.Implementation(name="sandbox-gateway", version=__version__),
                    )
                    await stack.enter_async_context(client)
                    async with anyio.create_task_group() as tasks:
                        await tasks.start(self._watch_tools, client, attempt)
                        attempt.client = client
                        attempt.ready.set()
                        await attempt.ended.wait()
                        tasks.cancel_scope.cancel()
            except Exception as exc:  # noqa: BLE001 - any failure ends the session; the next call reconnects
                attempt.error = describe(exc, self.status.status)
                if attempt.client is not None and not self._closing:
                    _log.warning("upstream %s: session ended: %s", self.name, attempt.error)
        attempt.ended.set()
        attempt.ready.set()
        attempt.done.set()

    async def _on_message(self, message: IncomingMessage) -> None:
        """Change notifications on connections from before 2026-07-28 (later ones listen instead)."""
        session = self._session
        modern = session is not None and session.modern
        if isinstance(message, types.ToolListChangedNotification) and not modern:
            await self._spawn(lambda: self._changed(self.name))
        await anyio.lowlevel.checkpoint()

    async def _watch_tools(
        self, client: Client, attempt: _Session, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """On a 2026-07-28 connection, listen for tool list changes (started once the server has
        acknowledged); a stream lost later ends the session, to be remade on the next call."""
        tools = client.server_capabilities.tools
        attempt.modern = client.protocol_version in MODERN_PROTOCOL_VERSIONS
        if not attempt.modern or not (tools and tools.list_changed):
            task_status.started()
            return
        acknowledged = False
        try:
            async with client.listen(tools_list_changed=True) as events:
                acknowledged = True
                task_status.started()
                async for _ in events:
                    await self._spawn(lambda: self._changed(self.name))
        except (MCPError, SubscriptionLost, TimeoutError, *_CLOSED_ERRORS) as exc:
            if not acknowledged:  # the session works without change notifications
                _log.info("upstream %s: no tool list changes: %s", self.name, describe(exc, None))
                task_status.started()
                return
        _log.info("upstream %s: the change stream ended; reconnecting on the next call", self.name)
        attempt.ended.set()

    async def _end(self, attempt: _Session) -> None:
        """End a session: a live one is left gracefully (given a grace period), a connect still
        under way is cancelled."""
        attempt.ended.set()
        if attempt.client is None:
            attempt.scope.cancel()
        with anyio.move_on_after(_CLOSE_GRACE_S):
            await attempt.done.wait()
        if not attempt.done.is_set():
            attempt.scope.cancel()
            with anyio.move_on_after(_CLOSE_GRACE_S):
                await attempt.done.wait()

    async def close(self) -> None:
        """End the session (a stdio server's process is stopped); no new one is made."""
        self._closing = True
        if self._session is not None:
            await self._end(self._session)

    async def request(self, what: str, timeout_s: float, send: Callable[[Client], Awaitable[T]]) -> T:
        """`send(client)` on the live session (connecting first if needed), all within `timeout_s`.
        Failures become UpstreamTimeout (the request is cancelled, the session kept),
        UpstreamUnavailable (the session is ended, to be remade) or UpstreamFailed."""
        attempt: _Session | None = None
        try:
            with anyio.fail_after(timeout_s):
                client, attempt = await self.session()
                return await send(client)
        except UpstreamError:
            raise
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name}: {what} took longer than {timeout_s:g} s") from None
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise UpstreamTimeout(
                    f"upstream {self.name}: {what} took longer than {timeout_s:g} s"
                ) from None
            if exc.code != CONNECTION_CLOSED and self.status.status not in (401, 403):
                raise UpstreamFailed(f"upstream {self.name}: {what}: {describe(exc, None)}") from None
            broken: BaseException = exc
        except _CLOSED_ERRORS as exc:
            broken = exc
        except (ValidationError, RuntimeError, ValueError, TypeError) as exc:
            raise UpstreamFailed(f"upstream {self.name}: {what}: {clean(str(exc))}") from None
        if attempt is not None:
            attempt.ended.set()
        raise UpstreamUnavailable(f"upstream {self.name}: {describe(broken, self.status.status)}")
