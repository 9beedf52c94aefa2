"""The proxy's side of the engine: one HTTP/1.1 exchange per connection to its unix socket (h11)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import h11

from gateway.sockproxy.errors import EngineUnavailable

__all__ = ["Engine", "EngineReply"]

#: Largest response body the proxy reads whole (a container list of a busy engine fits).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_READ = 65536


@dataclass(slots=True)
class EngineReply:
    """A response from the engine. For an upgraded (101) one, `reader`/`writer` carry the stream
    and `early` holds stream bytes that came with the headers."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    early: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class Engine:
    """Requests to the engine's unix socket; every request uses a connection of its own."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    async def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        *,
        upgrade: bool = False,
        timeout_s: float | None = 300.0,
    ) -> EngineReply:
        """One exchange; the engine must answer within `timeout_s` (None: a long poll, `wait`)."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.socket_path, limit=_READ * 4), 10.0
            )
        except (OSError, TimeoutError) as exc:
            raise EngineUnavailable(f"cannot connect to {self.socket_path}: {exc}") from exc
        conn = h11.Connection(h11.CLIENT)
        headers = [("Host", "docker"), ("User-Agent", "sandbox-gateway-socket-proxy")]
        if body is not None:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        elif method == "POST":
            headers.append(("Content-Length", "0"))
        if upgrade:
            headers += [("Connection", "Upgrade"), ("Upgrade", "tcp")]
        try:
            data = conn.send(h11.Request(method=method, target=target, headers=headers))
            if body:
                data += conn.send(h11.Data(data=body))
            data += conn.send(h11.EndOfMessage())
            writer.write(data)
            await writer.drain()
            reply = await asyncio.wait_for(self._response(conn, reader, writer), timeout_s)
        except TimeoutError as exc:
            writer.close()
            raise EngineUnavailable(f"the engine did not answer within {timeout_s:.0f} s") from exc
        except (OSError, h11.ProtocolError) as exc:
            writer.close()
            raise EngineUnavailable(f"the engine's answer broke off: {exc}") from exc
        except BaseException:
            writer.close()
            raise
        if reply.reader is None:
            writer.close()
        return reply

    async def _response(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> EngineReply:
        chunks: list[bytes] = []
        size = 0
        reply: EngineReply | None = None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(_READ)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                early, _closed = conn.trailing_data
                return EngineReply(101, list(event.headers), reader=reader, writer=writer, early=early)
            if isinstance(event, h11.Response):
                reply = EngineReply(event.status_code, list(event.headers))
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_RESPONSE_BYTES:
                    raise EngineUnavailable("the engine's answer is larger than the proxy reads")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                if reply is None:
                    raise EngineUnavailable("the engine closed the connection without an answer")
                reply.body = b"".join(chunks)
                return reply

    async def get_json(self, target: str) -> tuple[int, Any]:
        """GET `target`; (status, decoded body) where the body is JSON, else (status, None)."""
        reply = await self.request("GET", target)
        try:
            return reply.status, reply.json()
        except ValueError:
            return reply.status, None
