"""The gateway's HTTP/1.1 front end against hostile clients: a request head is bounded while it is
received, requests that two parsers could read differently are refused, and a client cannot name
its own source address in a header."""

from __future__ import annotations

import json
import select
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from gateway.backend.docker_engine import DockerBackend
from gateway.http.server_protocol import MAX_HEAD_BYTES
from tests.e2e.conftest import INIT, Gateway, start_gateway, stop_gateway
from tests.support import audit_events
from tests.support.events import field
from tests.support.raw_http import connect, read_all


def _connect(gateway: Gateway, timeout: float = 10) -> socket.socket:
    return connect(gateway.base, timeout)


def _flood(sock: socket.socket, first: bytes, more: bytes) -> int:
    """Send `first`, then `more` over and over (never ending the request) until the gateway answers
    or closes, or 64 bounds' worth went through; how many bytes of `more` were taken."""
    sock.sendall(first)
    sent = 0
    while sent < 64 * MAX_HEAD_BYTES and not select.select([sock], [], [], 0.01)[0]:
        try:
            sock.sendall(more)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(more)
    return sent


def _healthy(gateway: Gateway) -> None:
    assert httpx.get(f"{gateway.base}/health", timeout=10).status_code == 200


def test_a_request_head_that_keeps_growing_is_refused_at_the_bound(gateway: Gateway) -> None:
    host = urlsplit(gateway.base).netloc
    with _connect(gateway) as sock:  # the gateway must stop reading the head, not keep every byte
        sent = _flood(
            sock, f"POST /mcp HTTP/1.1\r\nHost: {host}\r\n".encode(), b"X-Pad: " + b"a" * 4000 + b"\r\n"
        )
        answer = read_all(sock)
    assert sent < 16 * MAX_HEAD_BYTES, f"{sent} bytes of one request head were read"
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert f"Request head larger than {MAX_HEAD_BYTES} bytes".encode() in answer
    _healthy(gateway)


#: The start of a chunked body that never ends in a way the body cap sees: bytes that are not body.
ENDLESS = {
    "trailers": (b"1\r\na\r\n0\r\n", b"X-Trailer: " + b"t" * 4000 + b"\r\n"),
    "a chunk extension": (b"1;ext=", b"e" * 4000),
}


@pytest.mark.parametrize("case", sorted(ENDLESS))
def test_endless_bytes_besides_the_body_are_cut_off(gateway: Gateway, case: str) -> None:
    host = urlsplit(gateway.base).netloc
    start, more = ENDLESS[case]
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {gateway.tokens['alice']}\r\n"
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    with _connect(gateway) as sock:
        sent = _flood(sock, head.encode() + start, more)
        answer = read_all(sock)
    assert sent < 16 * MAX_HEAD_BYTES, f"{sent} bytes of {case} were read"
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), answer[:200]
    _healthy(gateway)


def test_a_chunked_body_in_small_chunks_is_served(gateway: Gateway) -> None:
    host = urlsplit(gateway.base).netloc
    body = json.dumps(INIT).encode() + b" " * 300_000  # JSON may end in whitespace
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 512]), body[i : i + 512]) for i in range(0, len(body), 512)
    )
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {gateway.tokens['alice']}\r\n"
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with _connect(gateway) as sock:
        sock.sendall(head.encode() + chunks + b"0\r\nX-Trailer: fine\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert b'"protocolVersion"' in answer


def test_a_head_within_the_bound_is_served_and_so_is_the_next_on_the_connection(gateway: Gateway) -> None:
    host = urlsplit(gateway.base).netloc
    padding = "a" * (MAX_HEAD_BYTES - 2048)
    request = f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Pad: {padding}\r\n\r\n".encode()
    with _connect(gateway) as sock:
        for piece in range(0, len(request), 1000):  # trickled: many reads make up one head
            sock.sendall(request[piece : piece + 1000])
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = read_all(sock)
    assert answer.count(b"HTTP/1.1 200") == 2, answer[:300]


#: Requests a proxy in front and the gateway could frame differently (smuggling), or that are not
#: HTTP/1.1 at all: each is refused with 400 and its connection closed.
AMBIGUOUS = {
    "content-length and chunked": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two different content-lengths": b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "space before the colon": b"Content-Length : 2\r\n\r\nab",
    "a folded header line": b"X-A: 1\r\n  folded\r\nContent-Length: 0\r\n\r\n",
    "a NUL in a header value": b"X-A: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "chunked, but not last": b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "a bad chunk size": b"Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
    "a negative content-length": b"Content-Length: -1\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
def test_a_request_two_parsers_could_read_differently_is_refused(gateway: Gateway, case: str) -> None:
    host = urlsplit(gateway.base).netloc
    with _connect(gateway) as sock:
        sock.sendall(f"POST /mcp HTTP/1.1\r\nHost: {host}\r\n".encode() + AMBIGUOUS[case])
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 400"), (case, answer[:200])
    assert b"HTTP/1.1 200" not in answer and b"HTTP/1.1 401" not in answer
    _healthy(gateway)


#: Headers a proxy in front would set; the gateway trusts none of them (it is not told of a proxy).
FORGED = {
    "X-Forwarded-For": "203.0.113.7",
    "X-Real-IP": "203.0.113.8",
    "Forwarded": "for=203.0.113.9;proto=https",
    "X-Forwarded-Proto": "https",
}


@pytest.mark.anyio
async def test_a_client_cannot_set_its_own_source_address(gateway: Gateway) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    accept = {"Accept": "application/json, text/event-stream"}
    for attempt in range(3):  # unauthenticated: charged to, and audited for, the real address
        forged = {**FORGED, "X-Forwarded-For": f"203.0.113.{attempt + 20}"}
        refused = httpx.post(
            gateway.url, json=body, headers={**forged, **accept, "Authorization": "Bearer sgw_x"}
        )
        assert refused.status_code == 401
    headers = {**FORGED, "Authorization": f"Bearer {gateway.tokens['alice']}"}
    http = create_mcp_http_client(headers=headers)
    async with http, Client(streamable_http_client(gateway.url, http_client=http)) as client:
        result = await client.call_tool("sandbox_info", {})
    assert not result.is_error
    events = audit_events(gateway.audit_log)
    assert not [e for e in events if str(field(e, "source_ip")).startswith("203.0.113.")]
    decisions = audit_events(gateway.audit_log, "policy.decision", principal="alice")
    assert decisions and {field(e, "source_ip") for e in decisions} == {"127.0.0.1"}
    failures = audit_events(gateway.audit_log, "auth.failed")
    assert failures and {field(e, "source_ip") for e in failures} == {"127.0.0.1"}


def test_a_proxy_the_operator_names_is_believed_and_the_start_says_so(
    tmp_path: Path, backend: DockerBackend
) -> None:
    trusting = start_gateway(tmp_path, "--trusted-proxy", "127.0.0.1")
    try:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        headers = {"X-Forwarded-For": "198.51.100.4", "Accept": "application/json, text/event-stream"}
        refused = httpx.post(trusting.url, json=body, headers={**headers, "Authorization": "Bearer sgw_x"})
        assert refused.status_code == 401
        [start] = audit_events(trusting.audit_log, "gateway.start")
        assert field(start, "trusted_proxies") == ["127.0.0.1"]
        assert {field(e, "source_ip") for e in audit_events(trusting.audit_log, "auth.failed")} == {
            "198.51.100.4"
        }
    finally:
        stop_gateway(trusting)
    assert backend.list({"sandbox-gateway.gateway": trusting.gateway_id}) == []
