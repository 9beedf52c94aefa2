"""HTTP on the client's side of the proxy: who the client is, the framing a route's request must
have, and the answers written back on the client's h11 connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from typing import Any

import h11

from gateway.sockproxy.errors import Refused, StrictJSONError
from gateway.sockproxy.routes import Match
from gateway.sockproxy.strict_json import decode

__all__ = ["KEPT_HEADERS", "checked_body", "client_of", "send", "send_error"]

#: The engine's response headers passed on to the client; no other is.
KEPT_HEADERS = {b"content-type", b"api-version", b"docker-experimental", b"ostype", b"server"}


def client_of(writer: asyncio.StreamWriter) -> str:
    """The client as the log names it: its pid, uid and gid on a unix socket, else its address
    (and its certificate's common name on TLS)."""
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


def checked_body(found: Match, request: h11.Request, body: bytes) -> Any:
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


async def send(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    engine_headers: list[tuple[bytes, bytes]],
    *,
    head: bool = False,
) -> None:
    """One whole response: `status`, the kept engine headers (JSON when they name no type), `body`."""
    headers = [(k, v) for k, v in engine_headers if k.lower() in KEPT_HEADERS]
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


async def send_error(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> None:
    """`{"message": ...}` with `status`, when a response may still be sent on this connection."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    with contextlib.suppress(h11.LocalProtocolError):
        await send(conn, writer, status, json.dumps({"message": message}).encode(), [])
