"""How the gateway reaches one upstream server: the MCP transport for its config (streamable HTTP with
its headers or OAuth, or a stdio process with its own environment), watched so that the gateway
learns when the connection ends."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

import anyio
import httpx2
from mcp.client._transport import ReadStream, TransportStreams
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

from gateway.errors import UpstreamUnavailable
from gateway.upstream.config import HttpServer, ServerConfig, StdioServer
from gateway.upstream.credentials import SecretUnavailable
from gateway.upstream.oauth import ClientCredentialsAuth

__all__ = ["MAX_RESULT_BYTES", "HttpStatus", "open_transport"]

#: The largest result the gateway takes from an upstream (the policy applies a smaller cap later).
MAX_RESULT_BYTES = 8 * 1024 * 1024
#: Room for the JSON-RPC envelope around the largest result.
_SLACK = 65536
#: Besides a stdio server's own `env`, the SDK passes HOME, LOGNAME, PATH, SHELL, TERM and USER.
_EXTRA_ENV = ("LANG",)


@dataclass
class HttpStatus:
    """The last error status the upstream answered with (the MCP client reports only JSON-RPC errors)."""

    status: int | None = None

    async def hook(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self.status = response.status_code


class _WatchedRead:
    """A transport's read stream that sets `ended` when the connection ends (EOF or closed)."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], ended: anyio.Event) -> None:
        self._inner, self._ended = inner, ended

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._ended.set()
            raise

    async def aclose(self) -> None:
        self._ended.set()
        await self._inner.aclose()

    def __aiter__(self) -> _WatchedRead:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _WatchedRead:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        await self.aclose()
        return None


class _CappedBody(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, cap: int) -> None:
        self._inner, self._cap, self._seen = inner, cap, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._seen += len(chunk)
            if self._seen > self._cap:
                raise httpx2.ReadError(f"the upstream's JSON response is over {self._cap} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class CappedTransport(httpx2.AsyncBaseTransport):
    """JSON responses are read up to `cap` bytes (an event stream is bounded per event instead)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, cap: int) -> None:
        self._inner, self._cap = inner, cap

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return response
        assert isinstance(response.stream, httpx2.AsyncByteStream)  # noqa: S101 - an async transport's
        response.stream = _CappedBody(response.stream, self._cap)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _headers(name: str, server: HttpServer) -> dict[str, str]:
    try:
        return {header: source.read().reveal() for header, source in server.headers.items()}
    except SecretUnavailable as exc:
        raise UpstreamUnavailable(f"upstream {name}: a header's value is unavailable: {exc}") from None


def _stdio_parameters(name: str, server: StdioServer) -> StdioServerParameters:
    env = {key: os.environ[key] for key in _EXTRA_ENV if os.environ.get(key)}
    try:
        for key, value in server.env.items():
            env[key] = value if isinstance(value, str) else value.read().reveal()
    except SecretUnavailable as exc:
        raise UpstreamUnavailable(f"upstream {name}: an env var's value is unavailable: {exc}") from None
    # The server runs under stdio_guard: a line over the result cap ends it, before the gateway buffers it.
    guard = [sys.executable, "-m", "gateway.upstream.stdio_guard", str(MAX_RESULT_BYTES + _SLACK)]
    return StdioServerParameters(
        command=guard[0], args=[*guard[1:], *server.command], env=env, cwd=server.cwd
    )


def _stderr() -> TextIO:
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ or sys.stderr
    return sys.stderr


@asynccontextmanager
async def open_transport(
    name: str, server: ServerConfig, ended: anyio.Event, status: HttpStatus
) -> AsyncIterator[TransportStreams]:
    """The transport's streams, with `ended` set when the connection ends. Secrets (headers, env,
    the OAuth client secret) are read now, so that rotated files take effect on a reconnect."""
    if isinstance(server, StdioServer):
        params = _stdio_parameters(name, server)
        # The server's stderr goes to the gateway's (its log), when that is a real file.
        async with stdio_client(params, errlog=_stderr()) as (read, write):
            yield _WatchedRead(read, ended), write
        return
    auth = (
        ClientCredentialsAuth(name, server.oauth, timeout_s=server.timeout_s)
        if server.oauth is not None
        else None
    )
    client = httpx2.AsyncClient(
        headers=_headers(name, server),
        auth=auth,
        trust_env=False,
        transport=CappedTransport(httpx2.AsyncHTTPTransport(), MAX_RESULT_BYTES + _SLACK),
        # Reads are bounded per request by the call's timeout; a quiet change stream must stay open.
        timeout=httpx2.Timeout(server.timeout_s, read=None),
        event_hooks={"response": [status.hook]},
    )
    async with (
        client,
        streamable_http_client(
            server.url, http_client=client, max_sse_event_size=MAX_RESULT_BYTES + 65536
        ) as (
            read,
            write,
        ),
    ):
        yield _WatchedRead(read, ended), write
