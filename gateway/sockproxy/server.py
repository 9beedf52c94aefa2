"""The socket proxy's server: parse each request (h11), decide, forward what was validated.

A request is refused unless its route exists (routes.py), its query and body have exactly the
shape the broker sends (rules.py), and, for a container or exec verb, the target is one of the
gateway's own sandboxes, looked up on the engine. The engine receives a request rebuilt by the
proxy: canonical path, canonical query, re-encoded body. Hijacked streams (attach, exec start)
are relayed byte for byte once the engine has switched protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import h11
import structlog

from audit.repeats import RepeatTable, Summary
from gateway.backend.commands import MAX_ARGV_BYTES
from gateway.sockproxy.decide import Decider, Forward, Respond
from gateway.sockproxy.engine import Engine, EngineReply
from gateway.sockproxy.errors import EngineUnavailable, Refused, StrictJSONError
from gateway.sockproxy.relay import relay
from gateway.sockproxy.routes import Match, match
from gateway.sockproxy.rules import ProxyRules
from gateway.sockproxy.strict_json import decode

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
_KEPT_HEADERS = {b"content-type", b"api-version", b"docker-experimental", b"ostype", b"server"}


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
        self.counts: Counter[str] = Counter()
        self.log = structlog.get_logger("sandbox_gateway.socket_proxy")
        #: Connections open at once; beyond, a new one is answered 503 and closed at once.
        self.max_connections = max_connections
        self.connections = 0
        #: Refusals from one client are written once per rule and window, then summarised.
        self.repeats = RepeatTable(window_s=repeat_window_s, capacity=1024)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _client_of(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16 * 1024)
        if self.connections >= self.max_connections:
            self._refused(client, "-", "-", Refused("connections", "too many connections", status=503))
            with contextlib.suppress(OSError):
                await self._send_error(conn, writer, 503, "socket proxy: too many connections")
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
                self._refused(client, "-", "-", Refused("http", f"malformed request: {exc}", status=400))
                await self._send_error(conn, writer, exc.error_status_hint, "malformed HTTP request")
                return None, b""
            if event is h11.NEED_DATA:
                # Idle between requests for IDLE_TIMEOUT_S at most; once a request has begun, it
                # must be whole within REQUEST_TIMEOUT_S (a trickle cannot hold a connection).
                wait = IDLE_TIMEOUT_S if deadline is None else max(0.0, deadline - loop.time())
                try:
                    data = await asyncio.wait_for(reader.read(_READ), wait)
                except TimeoutError:
                    if deadline is not None:
                        self._refused(
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
                    self._refused(client, "-", "-", Refused("body-size", "body too large", status=413))
                    await self._send_error(conn, writer, 413, f"request body over {cap} bytes")
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
            parsed = _checked_body(found, request, body)
            if found.route.name == "proxy.stats":
                action: Forward | Respond = Respond(200, self.stats())
            else:
                action = await self.decider.decide(found, parsed)
        except Refused as refusal:
            self._refused(client, method, target, refusal)
            await self._send_error(
                conn, writer, refusal.status, f"socket proxy refused ({refusal.rule}): {refusal.detail}"
            )
            return False
        except EngineUnavailable as exc:
            self.counts[f"{route_name}:engine-unavailable"] += 1
            self.log.warning("proxy.engine_unavailable", route=route_name, error=str(exc))
            await self._send_error(conn, writer, 502, "socket proxy: the Docker engine is not answering")
            return False
        if isinstance(action, Respond):
            self.counts[f"{route_name}:allowed"] += 1
            await self._send(conn, writer, action.status, json.dumps(action.body).encode(), [])
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
            self.counts[f"{route_name}:engine-unavailable"] += 1
            self.log.warning("proxy.engine_unavailable", route=route_name, error=str(exc))
            await self._send_error(conn, writer, 502, "socket proxy: the Docker engine is not answering")
            return False
        finally:
            if action.release is not None:
                action.release()
        self.counts[f"{route_name}:allowed"] += 1
        if reply.status == 101:
            await self._relay(conn, reply, reader, writer)
            return True
        body_out = await self.decider.after(found, action, reply)
        await self._send(conn, writer, reply.status, body_out, reply.headers, head=method == "HEAD")
        return False

    def _refused(self, client: str, method: str, target: str, refusal: Refused) -> None:
        """Count every refusal; write the first of each rule per client and window, then a summary."""
        self.counts[f"refused:{refusal.rule}"] += 1
        seen = self.repeats.observe("proxy.refused", (("client", client),), ("rule", refusal.rule))
        self._summarise(seen.closed)
        if seen.overflow_started:
            self.log.warning("proxy.refused.overflow", detail="too many clients refused: counted together")
        if not seen.record:
            return
        self.log.warning(
            "proxy.refused",
            client=client,
            method=method,
            path=target[:300],
            rule=refusal.rule,
            status=refusal.status,
            detail=refusal.detail[:500],
        )

    def _summarise(self, summaries: list[Summary]) -> None:
        for summary in summaries:
            self.log.warning(
                "proxy.refused.repeated",
                client=dict(summary.key).get("client", "(others)"),
                count=summary.count,
                unlogged=summary.suppressed,
                rules={value: count for (_, value), count in summary.counts.items()},
                first=summary.first,
                last=summary.last,
                window_s=summary.window_s,
            )

    def flush_repeats(self, *, everything: bool = False) -> None:
        """Write the summaries of windows that have ended (all of them at a stop)."""
        self._summarise(self.repeats.drain() if everything else self.repeats.expire())

    def stats(self) -> dict[str, Any]:
        allowed = {k.partition(":")[0]: v for k, v in self.counts.items() if k.endswith(":allowed")}
        refused = {k.partition(":")[2]: v for k, v in self.counts.items() if k.startswith("refused:")}
        return {
            "allowed": allowed,
            "refused": refused,
            "refused_total": sum(refused.values()),
            "connections": self.connections,
        }

    async def _send(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        engine_headers: list[tuple[bytes, bytes]],
        *,
        head: bool = False,
    ) -> None:
        headers = [(k, v) for k, v in engine_headers if k.lower() in _KEPT_HEADERS]
        if not any(k.lower() == b"content-type" for k, _ in headers):
            headers.append((b"content-type", b"application/json"))
        no_body = head or status in (204, 304) or 100 <= status < 200
        if not no_body:
            headers.append((b"content-length", str(len(body)).encode()))
        data = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        if not no_body and body:
            data += conn.send(h11.Data(data=body)) or b""
        data += conn.send(h11.EndOfMessage()) or b""
        writer.write(data)
        await writer.drain()

    async def _send_error(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        with contextlib.suppress(h11.LocalProtocolError):
            body = json.dumps({"message": message}).encode()
            data = (
                conn.send(
                    h11.Response(
                        status_code=status,
                        headers=[("content-type", "application/json"), ("content-length", str(len(body)))],
                    )
                )
                or b""
            )
            data += (conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b"")
            writer.write(data)
            await writer.drain()

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
        kept = (*_KEPT_HEADERS, b"connection", b"upgrade")
        headers = [(k, v) for k, v in reply.headers if k.lower() in kept]
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=headers)) or b"")
        pending, _closed = conn.trailing_data
        await relay(
            (reader, writer), (reply.reader, reply.writer), to_engine=bytes(pending), to_client=reply.early
        )


def _checked_body(found: Match, request: h11.Request, body: bytes) -> Any:
    """The decoded body of a route that takes one; Refused when the request's framing is wrong."""
    if found.route.upgrade and not _asks_upgrade(request):
        raise Refused("upgrade", f"{found.route.name} is a hijacked stream: send Connection: Upgrade")
    if not found.route.body and body:
        raise Refused("body", f"{found.route.name} takes no request body")
    return _json_body(body) if found.route.body else None


def _asks_upgrade(request: h11.Request) -> bool:
    headers = {k.lower(): v.lower() for k, v in request.headers}
    return b"upgrade" in headers.get(b"connection", b"") and headers.get(b"upgrade") == b"tcp"


def _json_body(body: bytes) -> Any:
    try:
        return decode(body)
    except StrictJSONError as exc:
        raise Refused("body-json", str(exc)) from exc


def _client_of(writer: asyncio.StreamWriter) -> str:
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        with contextlib.suppress(OSError):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, gid = struct.unpack("3i", creds)
            return f"unix:pid={pid},uid={uid},gid={gid}"
        return "unix"
    peer = writer.get_extra_info("peername")
    address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unknown"
    certificate = writer.get_extra_info("peercert")
    if certificate:
        subject = dict(item for rdn in certificate.get("subject", ()) for item in rdn)
        return f"tls:{address},cn={subject.get('commonName', '?')}"
    return f"tcp:{address}"
