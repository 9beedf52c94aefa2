"""The socket proxy's server: parse each request (h11), decide, forward what was validated.

A request is refused unless its route exists (routes.py), its query and body have exactly the
shape the broker sends (create_rules.py, exec_rules.py, queries.py), and, for a container or exec
verb, the target is one of the gateway's own sandboxes, looked up on the engine. The engine
receives a request rebuilt by the proxy: canonical path, canonical query, re-encoded body.
Hijacked streams (attach, exec start) are relayed byte for byte once the engine has switched
protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any
from urllib.parse import urlencode

import h11

from gateway.backend.commands import MAX_ARGV_BYTES
from gateway.sockproxy.client_http import KEPT_HEADERS, checked_body, client_of, send, send_error
from gateway.sockproxy.decide import Decider, Forward, Respond
from gateway.sockproxy.decision_log import DecisionLog
from gateway.sockproxy.engine import Engine, EngineReply
from gateway.sockproxy.errors import EngineUnavailable, Refused
from gateway.sockproxy.relay import relay
from gateway.sockproxy.routes import match
from gateway.sockproxy.rules import ProxyRules

__all__ = ["MAX_BODY_BYTES", "ProxyServer"]

#: Largest request body read (a create body with the inline seccomp profile is about 20 KiB)...
MAX_BODY_BYTES = 512 * 1024
#: ...but an exec create carries the code in its argv (up to MAX_ARGV_BYTES, each byte at most six
#: once JSON-escaped).
MAX_EXEC_BODY_BYTES = 6 * MAX_ARGV_BYTES + 64 * 1024
#: A request must arrive whole (head and body) this long after its first byte...
REQUEST_TIMEOUT_S = 10.0
#: ...and a kept-alive connection may wait this long for its next request.
IDLE_TIMEOUT_S = 120.0
_READ = 65536
_EXEC_CREATE = re.compile(r"/v1\.41/containers/[^/]+/exec")


class ProxyServer:
    """Serves the Engine API subset on a listening socket; counts and logs every decision."""

    def __init__(
        self,
        rules: ProxyRules,
        engine_socket: str,
        *,
        max_connections: int = 4096,
        repeat_window_s: float = 60.0,
    ) -> None:
        self.engine = Engine(engine_socket)
        self.decider = Decider(rules, self.engine)
        self.decisions = DecisionLog(repeat_window_s=repeat_window_s)
        self.log = self.decisions.log
        #: Connections open at once; beyond, a new one is answered 503 and closed at once.
        self.max_connections = max_connections
        self.connections = 0

    def flush_repeats(self, *, everything: bool = False) -> None:
        """Write the summaries of refusal windows that have ended (all of them at a stop)."""
        self.decisions.flush_repeats(everything=everything)

    def stats(self) -> dict[str, Any]:
        return {**self.decisions.totals(), "connections": self.connections}

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = client_of(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        if self.connections >= self.max_connections:
            self.decisions.refused(
                client, "-", "-", Refused("connections", "too many connections", status=503)
            )
            with contextlib.suppress(OSError):
                await send_error(conn, writer, 503, "socket proxy: too many connections")
            writer.close()
            return
        self.connections += 1
        try:
            while True:
                request, body = await self._read_request(conn, reader, writer, client)
                if request is None:
                    return
                upgraded = await self._one(conn, request, body, reader, writer, client=client)
                if upgraded or conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError, asyncio.IncompleteReadError, TimeoutError):
            return
        finally:
            self.connections -= 1
            writer.close()
            # Bounded: a TLS peer that never answers the close must not hold the task (or a stop).
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size, cap = 0, MAX_BODY_BYTES
        loop = asyncio.get_running_loop()
        deadline: float | None = None  # set by the request's first byte
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.decisions.refused(
                    client, "-", "-", Refused("http", f"malformed request: {exc}", status=400)
                )
                await send_error(conn, writer, exc.error_status_hint, "malformed HTTP request")
                return None, b""
            if event is h11.NEED_DATA:
                # Idle between requests for IDLE_TIMEOUT_S at most; once a request has begun, it
                # must be whole within REQUEST_TIMEOUT_S (a trickle cannot hold a connection).
                wait = IDLE_TIMEOUT_S if deadline is None else max(0.0, deadline - loop.time())
                try:
                    data = await asyncio.wait_for(reader.read(_READ), wait)
                except TimeoutError:
                    if deadline is not None:
                        self.decisions.refused(
                            client, "-", "-", Refused("slow-request", "request not whole in time", status=408)
                        )
                    return None, b""
                if deadline is None and data:
                    deadline = loop.time() + REQUEST_TIMEOUT_S
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
                if _EXEC_CREATE.fullmatch(event.target.decode("ascii", "replace").partition("?")[0]):
                    cap = MAX_EXEC_BODY_BYTES
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > cap:
                    self.decisions.refused(
                        client, "-", "-", Refused("body-size", "body too large", status=413)
                    )
                    await send_error(conn, writer, 413, f"request body over {cap} bytes")
                    return None, b""
                chunks.append(bytes(event.data))
            elif event is h11.PAUSED or isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _one(
        self,
        conn: h11.Connection,
        request: h11.Request,
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client: str,
    ) -> bool:
        """Answer one request; True when the connection became a relayed stream."""
        method, target = request.method.decode("ascii"), request.target.decode("ascii", "replace")
        route_name = "-"
        try:
            found = match(method, target)
            route_name = found.route.name
            parsed = checked_body(found, request, body)
            if found.route.name == "proxy.stats":
                action: Forward | Respond = Respond(200, self.stats())
            else:
                action = await self.decider.decide(found, parsed)
        except Refused as refusal:
            self.decisions.refused(client, method, target, refusal)
            await send_error(
                conn, writer, refusal.status, f"socket proxy refused ({refusal.rule}): {refusal.detail}"
            )
            return False
        except EngineUnavailable as exc:
            await self._engine_unavailable(conn, writer, route_name, exc)
            return False
        if isinstance(action, Respond):
            self.decisions.allowed(route_name)
            await send(conn, writer, action.status, json.dumps(action.body).encode(), [])
            return False
        target_out = action.path + (f"?{urlencode(action.query)}" if action.query else "")
        try:
            reply = await self.engine.request(
                method,
                target_out,
                action.body,
                upgrade=found.route.upgrade,
                timeout_s=None if found.route.name == "container.wait" else 300.0,
            )
        except EngineUnavailable as exc:
            await self._engine_unavailable(conn, writer, route_name, exc)
            return False
        finally:
            if action.release is not None:
                action.release()
        self.decisions.allowed(route_name)
        if reply.status == 101:
            await self._relay(conn, reply, reader, writer)
            return True
        body_out = await self.decider.after(found, action, reply)
        await send(conn, writer, reply.status, body_out, reply.headers, head=method == "HEAD")
        return False

    async def _engine_unavailable(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, route_name: str, exc: EngineUnavailable
    ) -> None:
        self.decisions.engine_unavailable(route_name, exc)
        await send_error(conn, writer, 502, "socket proxy: the Docker engine is not answering")

    async def _relay(
        self,
        conn: h11.Connection,
        reply: EngineReply,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Answer 101 as the engine did, then relay the stream both ways (relay.py)."""
        if reply.reader is None or reply.writer is None:  # pragma: no cover - a 101 reply carries its stream
            return
        kept = (*KEPT_HEADERS, b"connection", b"upgrade")
        headers = [(k, v) for k, v in reply.headers if k.lower() in kept]
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=headers)) or b"")
        pending, _closed = conn.trailing_data
        await relay(
            (reader, writer), (reply.reader, reply.writer), to_engine=bytes(pending), to_client=reply.early
        )
