"""Attacks on the gateway's HTTP/1.1 front end (gateway/http/server_protocol.py and the uvicorn
settings in gateway/cli/serve.py): memory, framing, source address, wedged connections, and the
legitimate traffic the bounds must still serve. Each test asserts the safe behaviour, on raw
sockets against a real gateway process whose HTTP timeouts are 3 s (`--http-timeout`)."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.backend.docker_engine import DockerBackend
from gateway.http.server_protocol import MAX_HEAD_BYTES
from tests.e2e.conftest import INIT, Gateway, start_gateway, stop_gateway
from tests.support import audit_events
from tests.support.events import field
from tests.support.raw_http import connect, read_all

MIB = 1024 * 1024
#: The gateway's `--http-timeout` here (30 s by default), so the timeouts are seen quickly.
HTTP_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> Iterator[Gateway]:
    running = start_gateway(tmp_path_factory.mktemp("front"), "--http-timeout", str(HTTP_TIMEOUT_S))
    yield running
    stop_gateway(running)
    assert backend.list({"sandbox-gateway.gateway": running.gateway_id}) == []


def _connect(gateway: Gateway, timeout: float = 10) -> socket.socket:
    return connect(gateway.base, timeout)


def _host(gateway: Gateway) -> str:
    return urlsplit(gateway.base).netloc


def _closed(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the gateway closes `sock` within `timeout_s` (whatever it sends before)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.2)[0]:
            continue
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, OSError):
            return True
    return False


def _rss(gateway: Gateway) -> int:
    """The gateway process's resident memory, in bytes."""
    with open(f"/proc/{gateway.process.pid}/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _healthy(gateway: Gateway) -> None:
    assert gateway.process.poll() is None, "the gateway process is gone"
    assert httpx.get(f"{gateway.base}/health", timeout=10).status_code == 200


def _auth_head(gateway: Gateway, extra: str = "") -> str:
    return (
        f"POST /mcp HTTP/1.1\r\nHost: {_host(gateway)}\r\nAuthorization: Bearer {gateway.tokens['alice']}\r\n"
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n" + extra
    )


# --- (1) memory --------------------------------------------------------------------------------------


def test_pipelining_without_end_does_not_grow_memory(tmp_path: Path, backend: DockerBackend) -> None:
    """Pipelined requests are queued per connection (uvicorn's `pipeline` deque); reading pauses only
    after a whole received chunk (up to 256 KiB, thousands of small requests) is parsed, and resumes
    after every response. A client that keeps sending and reads the responses must not be able to
    grow the queue without bound. (A gateway of its own: the memory it takes is not given back.)"""
    gateway = start_gateway(tmp_path)
    try:
        _pipeline_flood(gateway)
    finally:
        stop_gateway(gateway)


def _pipeline_flood(gateway: Gateway) -> None:
    request = f"GET /health HTTP/1.1\r\nHost: {_host(gateway)}\r\n\r\n".encode()
    block = request * (65536 // len(request))
    before = _rss(gateway)
    peak, sent, received = before, 0, 0
    sock = _connect(gateway)
    sock.setblocking(False)
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and sent < 200 * MIB and peak - before < 512 * MIB:
            readable, writable, _ = select.select([sock], [sock], [], 0.2)
            if readable:
                try:
                    data = sock.recv(1 << 20)
                except BlockingIOError:
                    data = b"x"
                except ConnectionResetError:  # the gateway cut the connection off: what the test wants
                    break
                if not data:
                    break
                received += len(data)
            if writable:
                with contextlib.suppress(BlockingIOError, BrokenPipeError, ConnectionResetError):
                    sent += sock.send(block)
            peak = max(peak, _rss(gateway))
    finally:
        sock.close()
    growth = peak - before
    elapsed = 20 - (deadline - time.monotonic())
    print(
        f"pipelining: {elapsed:.1f} s, sent {sent} bytes ({sent // len(request)} requests), "
        f"received {received}, "
        f"RSS {before // MIB} -> peak {peak // MIB} MiB"
    )
    assert growth < 64 * MIB, (
        f"RSS grew by {growth // MIB} MiB on one pipelining connection ({sent} bytes sent)"
    )
    time.sleep(2)
    _healthy(gateway)


def test_a_head_after_a_completed_request_in_the_same_read_is_still_bounded(gateway: Gateway) -> None:
    """The count is reset when a request completes, after the whole received chunk was counted: the
    bytes of the next request's head in the same chunk are never counted."""
    host = _host(gateway)
    first = f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    big = 3 * MAX_HEAD_BYTES
    second = (
        f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Pad: {'a' * big}\r\nConnection: close\r\n\r\n".encode()
    )
    with _connect(gateway) as sock:
        sock.sendall(first + second)
        answer = read_all(sock)
    served = answer.count(b"HTTP/1.1 200")
    assert served <= 1, f"a {len(second)}-byte head (bound {MAX_HEAD_BYTES}) was served: {answer[:120]!r}"
    _healthy(gateway)


def test_many_tiny_headers_cost_at_most_a_few_times_the_head_bound(gateway: Gateway) -> None:
    """64 KiB of 4-byte headers is 16k (name, value) tuples in uvicorn's header list, held while the
    head is incomplete (and no timeout applies to an incomplete head): per connection the memory
    must stay near the byte bound."""
    host = _host(gateway)
    connections = 40
    head = f"POST /mcp HTTP/1.1\r\nHost: {host}\r\n".encode() + b"a:\r\n" * ((MAX_HEAD_BYTES - 200) // 4)
    before = _rss(gateway)
    socks = []
    try:
        for _ in range(connections):
            sock = _connect(gateway)
            sock.sendall(head)  # never finished
            socks.append(sock)
        time.sleep(2)
        after = _rss(gateway)
        for sock in socks:  # refused at the field count, not held
            assert read_all(sock, 5).startswith(b"HTTP/1.1 431")
    finally:
        for sock in socks:
            sock.close()
    per_connection = (after - before) // connections
    print(
        f"tiny headers: {connections} connections, RSS {before // MIB} -> {after // MIB} MiB, "
        f"{per_connection // 1024} KiB per connection"
    )
    assert per_connection < 4 * MAX_HEAD_BYTES, f"{per_connection} bytes held per incomplete head"
    _healthy(gateway)


def test_a_body_sent_after_an_early_401_is_not_held(gateway: Gateway) -> None:
    host = _host(gateway)
    size = 256 * MIB  # chunked: the body cap cannot refuse it up front, the 401 comes first
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    before = _rss(gateway)
    sent = 0
    with _connect(gateway) as sock:
        sock.sendall(head)
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        deadline = time.monotonic() + 15
        try:
            while sent < size and time.monotonic() < deadline:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        after = _rss(gateway)
        answer = read_all(sock, 3)
    print(
        f"after 401: {sent} body bytes accepted, RSS {before // MIB} -> {after // MIB} MiB, {answer[:40]!r}"
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert after - before < 16 * MIB, f"RSS grew {(after - before) // MIB} MiB"
    assert sent < 16 * MIB, f"{sent} bytes of the body of a request already refused 401 were read"
    _healthy(gateway)


def test_a_body_over_the_cap_after_413_is_not_read_forever(gateway: Gateway) -> None:
    """Content-Length over the cap: 413 at once. The gateway should not go on reading (and
    discarding) gigabytes for a request it already refused: it closes the connection."""
    head = _auth_head(gateway, f"Content-Length: {10 * 1024 * MIB}\r\n\r\n").encode()
    sent = 0
    with _connect(gateway) as sock:
        sock.sendall(head)
        chunk = b"x" * 65536
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass
        answer = read_all(sock, 3)
    print(f"after 413: {sent} body bytes accepted")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 64 * MIB, f"{sent} bytes of a refused body were read"


def test_unsupported_upgrade_then_garbage_is_bounded_and_not_a_log_flood(gateway: Gateway) -> None:
    host = _host(gateway)
    log_before = gateway.log.stat().st_size
    with _connect(gateway) as sock:
        sock.sendall(
            f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n".encode()
        )
        time.sleep(0.5)
        sent = 0
        try:
            for _ in range(2000):  # one small write each: a read (and a log line?) each
                sock.sendall(b"x" * 16)
                sent += 16
                time.sleep(0.0005)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock, 3)
    time.sleep(0.5)
    grown = gateway.log.stat().st_size - log_before
    print(f"h2c: {sent} bytes after the upgrade request, log grew {grown} bytes, answer {answer[:80]!r}")
    assert grown < 64 * 1024, f"the log grew {grown} bytes for {sent} bytes of garbage"
    _healthy(gateway)


def test_websocket_upgrade_is_not_served_unauthenticated_and_holds_nothing(gateway: Gateway) -> None:
    host = _host(gateway)
    before = _rss(gateway)
    with _connect(gateway) as sock:
        sock.sendall(
            f"GET /mcp HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        sent = 0
        try:
            for _ in range(256):
                sock.sendall(b"\x82\x7f" + (1 << 30).to_bytes(8, "big") + b"\x00" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_all(sock, 3)
    after = _rss(gateway)
    print(f"websocket: answer {answer[:120]!r}, {sent} sent, RSS +{(after - before) // MIB} MiB")
    assert b" 101 " not in answer.split(b"\r\n", 1)[0], answer[:200]
    assert after - before < 32 * MIB
    _healthy(gateway)


# --- (2) framing -------------------------------------------------------------------------------------

#: After the head's start: each variant, if framed another way by a proxy, would smuggle a request.
SMUGGLE = {
    "duplicate transfer-encoding": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
    "te then cl": b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "te gzip, chunked": b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te xchunked": b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te chunked with trailing junk": b"Transfer-Encoding: chunked;q=1\r\n\r\n0\r\n\r\n",
    "te vertical tab": b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    "te folded": b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te tab before colon": b"Transfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n",
    "te identity": b"Transfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n",
    "te on http/1.0": None,  # request line differs, below
    "bare lf header line": b"X-A: 1\nContent-Length: 0\r\n\r\n",
    "bare lf end of head": b"Content-Length: 0\n\n",
    "bare cr in value": b"X-A: a\rb\r\nContent-Length: 0\r\n\r\n",
    "bare cr line end": b"X-A: 1\rContent-Length: 0\r\n\r\n",
    "cl plus sign": b"Content-Length: +2\r\n\r\nab",
    "cl hex": b"Content-Length: 0x2\r\n\r\nab",
    "cl list of two": b"Content-Length: 2, 2\r\n\r\nab",
    "cl list differing": b"Content-Length: 2, 3\r\n\r\nabc",
    "cl overflow": b"Content-Length: 18446744073709551617\r\n\r\nab",
    "cl empty": b"Content-Length: \r\n\r\n",
    "cl with internal space": b"Content-Length: 1 2\r\n\r\nabcdefghijkl",
    "chunk size 0x": b"Transfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n",
    "chunk size overflow": b"Transfer-Encoding: chunked\r\n\r\n10000000000000002\r\nab\r\n0\r\n\r\n",
    "chunk size space": b"Transfer-Encoding: chunked\r\n\r\n2 \r\nab\r\n0\r\n\r\n",
    "chunk data bare lf": b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\n0\r\n\r\n",
    "chunk size bare lf": b"Transfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n",
    "chunk data too long": b"Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
    "chunk ext bare lf": b"Transfer-Encoding: chunked\r\n\r\n2;a=b\nab\r\n0\r\n\r\n",
    "chunk ext quoted crlf": b'Transfer-Encoding: chunked\r\n\r\n2;a="\r\n"\r\nab\r\n0\r\n\r\n',
    "header name with space": b"Content Length: 2\r\n\r\nab",
    "empty header name": b": x\r\nContent-Length: 0\r\n\r\n",
}
#: Legal per RFC 9110/9112 and read the same by any conforming proxy: served, or refused.
ACCEPTABLE_IF_SERVED = {"cl list of two", "te gzip, chunked"}


def _smuggle_request(gateway: Gateway, case: str) -> bytes:
    host = _host(gateway)
    if case == "te on http/1.0":
        return (
            f"POST /health HTTP/1.0\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
            "Content-Length: 5\r\n\r\n"
            "0\r\n\r\n"
        ).encode()
    rest = SMUGGLE[case]
    assert rest is not None
    return f"POST /health HTTP/1.1\r\nHost: {host}\r\n".encode() + rest


@pytest.mark.parametrize("case", sorted(SMUGGLE))
def test_framing_variants_are_refused(gateway: Gateway, case: str) -> None:
    """/health is GET only: a request framed at all is answered 405; what a proxy could frame
    differently must be 400 (and the connection closed), never served and never followed by a
    second, smuggled request on the same connection."""
    smuggled = f"GET /smuggled HTTP/1.1\r\nHost: {_host(gateway)}\r\n\r\n".encode()
    with _connect(gateway) as sock:
        sock.sendall(_smuggle_request(gateway, case) + smuggled)
        answer = read_all(sock, 5)
    status = answer.split(b"\r\n", 1)[0]
    print(f"framing {case!r}: {status!r}, {answer.count(b'HTTP/1.1 ')} responses")
    if case in ACCEPTABLE_IF_SERVED:  # framed as chunked / as 2 by both: /smuggled is a pipelined request
        assert status.startswith((b"HTTP/1.1 400", b"HTTP/1.1 405")), (case, answer[:300])
    else:
        assert b"404" not in answer, (case, answer[:300])  # /smuggled reached as a request of its own
        assert status.startswith(b"HTTP/1.1 400"), (case, answer[:300])


def test_duplicate_host_and_absolute_form_do_not_crash(gateway: Gateway) -> None:
    host = _host(gateway)
    for raw in (
        f"GET http://evil.example/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n",
        f"GET /health HTTP/1.1\r\nHost: {host}\r\nHost: other\r\nConnection: close\r\n\r\n",
        "GET /%ff%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "GET /health HTTP/2.0\r\nHost: x\r\nConnection: close\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "PROXY TCP4 203.0.113.5 127.0.0.1 5555 80\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        with _connect(gateway) as sock:
            sock.sendall(raw.encode("latin-1"))
            answer = read_all(sock, 5)
        assert answer.startswith(b"HTTP/1.1 "), (raw, answer[:200])
        assert not answer.startswith(b"HTTP/1.1 5"), (raw, answer[:300])
    _healthy(gateway)


# --- (3) source address ------------------------------------------------------------------------------


def test_forwarding_headers_in_odd_spellings_do_not_set_the_source_address(gateway: Gateway) -> None:
    host = _host(gateway)
    forged = (
        "X-Forwarded-For: 203.0.113.50\r\nX_Forwarded_For: 203.0.113.51\r\nx-forwarded-for: 203.0.113.52\r\n"
        "Forwarded: for=203.0.113.53\r\nX-Client-IP: 203.0.113.54\r\nTrue-Client-IP: 203.0.113.55\r\n"
        "CF-Connecting-IP: 203.0.113.56\r\nX-Real-Ip: 203.0.113.57\r\n"
        "X-Original-Forwarded-For: 203.0.113.58\r\n"
    )
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    with _connect(gateway) as sock:
        sock.sendall(
            (
                f"POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer sgw_nope\r\n{forged}"
                f"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + body
        )
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    time.sleep(0.5)
    events = audit_events(gateway.audit_log)
    assert not [e for e in events if str(field(e, "source_ip")).startswith("203.0.113.")]


# --- (4) wedging -------------------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed(gateway: Gateway) -> None:
    """No request at all: the keep-alive timeout (15 s) is armed only after a response in uvicorn."""
    with _connect(gateway) as sock:
        closed = _closed(sock, 25)
    assert closed, "a connection that never sent a byte was still open after 25 s"


def test_a_head_trickled_forever_is_cut_off(gateway: Gateway) -> None:
    """Slowloris: a head that never completes, one byte every second, well under the byte bound."""
    host = _host(gateway)
    with _connect(gateway) as sock:
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode())
        deadline, closed = time.monotonic() + 30, False
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if select.select([sock], [], [], 1)[0]:
                closed = _closed(sock, 1)
                break
    assert closed, "a head trickled for 30 s (15 s is the keep-alive timeout) was still being read"


def test_a_client_that_never_reads_does_not_hold_a_call_forever(gateway: Gateway) -> None:
    """Many pipelined requests whose responses are never read: the write buffer fills, uvicorn's
    send waits for drain with no timeout; the connection must still be let go of eventually, and
    other clients served meanwhile."""
    host = _host(gateway)
    request = f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Pad: {'p' * 2000}\r\n\r\n".encode()
    before = _rss(gateway)
    sock = _connect(gateway)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    closed = False
    try:
        sent = 0
        for _ in range(2000):
            try:
                sent += sock.send(request)
            except BlockingIOError:
                time.sleep(0.01)
            except (BrokenPipeError, ConnectionResetError):  # cut off already (pipelining cap)
                closed = True
                break
        _healthy(gateway)  # others are served meanwhile
        print(f"never reads: {sent} bytes sent, RSS {before // MIB} -> {_rss(gateway) // MIB} MiB")
        deadline = time.monotonic() + (0 if closed else 40)
        while time.monotonic() < deadline:
            try:
                sock.send(b"")
                time.sleep(1)
                # the gateway closing shows as an error on send once the peer resets
                sock.send(request)
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
    finally:
        sock.close()
    assert closed, "a connection whose responses were never read was kept for 40 s"


# --- (5) legitimate traffic --------------------------------------------------------------------------


def _init_body(size: int) -> bytes:
    body = json.dumps(INIT).encode()
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("chunk", [4096, 256, 64, 16, 8])
def test_a_body_near_the_cap_in_small_chunks_is_served(gateway: Gateway, chunk: int) -> None:
    body = _init_body(MIB - 1024)
    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + chunk]), body[i : i + chunk]) for i in range(0, len(body), chunk)
    )
    head = _auth_head(gateway, "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    with _connect(gateway) as sock:
        sock.sendall(head + framed + b"0\r\n\r\n")
        answer = read_all(sock, 20)
    assert answer.startswith(b"HTTP/1.1 200"), (chunk, answer[:300])


def test_a_body_with_legal_chunk_extensions_is_served(gateway: Gateway) -> None:
    body = _init_body(256 * 1024)
    chunk, ext = 1024, b";signature=" + b"s" * 300
    framed = b"".join(
        b"%x%s\r\n%s\r\n" % (len(body[i : i + chunk]), ext, body[i : i + chunk])
        for i in range(0, len(body), chunk)
    )
    head = _auth_head(gateway, "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    with _connect(gateway) as sock:
        sock.sendall(head + framed + b"0\r\n\r\n")
        answer = read_all(sock, 20)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_big_legal_headers_and_a_pipelined_pair_with_bodies_are_served(gateway: Gateway) -> None:
    host = _host(gateway)
    cookie = "c=" + "v" * 16000
    body = json.dumps(INIT).encode()
    one = (
        _auth_head(
            gateway, f"Cookie: {cookie}\r\nX-Trace: {'t' * 30000}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
    ).encode() + body
    two = (
        f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Big: {'b' * 40000}\r\nConnection: close\r\n\r\n".encode()
    )
    with _connect(gateway) as sock:
        sock.sendall(one + two)
        answer = read_all(sock, 20)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert answer.count(b"HTTP/1.1 200") == 2, answer[:300]


def test_pipelined_requests_whose_heads_together_exceed_the_bound_are_served(gateway: Gateway) -> None:
    host = _host(gateway)
    one = f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Pad: {'a' * 40000}\r\n\r\n".encode()
    last = (
        f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Pad: {'a' * 40000}\r\nConnection: close\r\n\r\n".encode()
    )
    with _connect(gateway) as sock:
        for piece in (one, one, one, last):
            for i in range(0, len(piece), 7000):  # reads that straddle requests
                sock.sendall(piece[i : i + 7000])
        answer = read_all(sock, 10)
    assert answer.count(b"HTTP/1.1 200") == 4, answer[:300]


def test_expect_100_continue_is_answered_and_served(gateway: Gateway) -> None:
    body = json.dumps(INIT).encode()
    head = _auth_head(
        gateway, f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with _connect(gateway) as sock:
        sock.sendall(head.encode())
        first = b""
        if select.select([sock], [], [], 5)[0]:
            first = sock.recv(65536)
        sock.sendall(body)
        answer = first + read_all(sock, 10)
    assert answer.startswith(b"HTTP/1.1 100"), answer[:200]
    assert b"HTTP/1.1 200" in answer, answer[:300]


def test_http_1_0_is_served_and_closed(gateway: Gateway) -> None:
    with _connect(gateway) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        answer = read_all(sock, 5)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


def test_concurrent_clients_are_served_while_attackers_hold_heads(gateway: Gateway) -> None:
    host = _host(gateway)
    holders = []
    try:
        for _ in range(200):
            sock = _connect(gateway)
            sock.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-A: ".encode() + b"a" * 60000)
            holders.append(sock)
        results: list[int] = []

        def one() -> None:
            results.append(httpx.get(f"{gateway.base}/health", timeout=10).status_code)

        threads = [threading.Thread(target=one) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 20
    finally:
        for sock in holders:
            sock.close()


def test_an_authenticated_body_that_stalls_is_not_held_forever(gateway: Gateway) -> None:
    """A body announced at just under the cap, 90% sent, then nothing: no body timeout in uvicorn or
    the app; every such connection keeps what it sent (the app collects the body) and a task."""
    connections, size = 10, MIB - 4096
    head = _auth_head(gateway, f"Content-Length: {size}\r\n\r\n").encode()
    before = _rss(gateway)
    socks = []
    try:
        for _ in range(connections):
            sock = _connect(gateway)
            sock.sendall(head + b" " * (size * 9 // 10))
            socks.append(sock)
        time.sleep(4 * HTTP_TIMEOUT_S)
        after = _rss(gateway)
        still_open = sum(1 for sock in socks if not _closed(sock, 0.5))
    finally:
        for sock in socks:
            sock.close()
    print(
        f"stalled bodies: {still_open}/{connections} open after {4 * HTTP_TIMEOUT_S} s, "
        f"RSS {before // MIB} -> {after // MIB} MiB"
    )
    assert still_open == 0, (
        f"{still_open} connections with a stalled body still held after {4 * HTTP_TIMEOUT_S} s"
    )


def test_a_websocket_upgrade_with_a_big_head_and_trailing_bytes_in_one_read(gateway: Gateway) -> None:
    """The upgrade hands the transport to the websocket protocol inside data_received; the bound's
    check runs after it on a transport no longer this protocol's."""
    host = _host(gateway)
    head = (
        f"GET /mcp HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"X-Pad: {'a' * 60000}\r\n\r\n"
    ).encode()
    with _connect(gateway) as sock:
        sock.sendall(head + b"\x00" * (3 * MAX_HEAD_BYTES))
        answer = read_all(sock, 5)
    print(f"ws big head: {answer[:80]!r}")
    assert b" 101 " not in answer.split(b"\r\n", 1)[0]
    _healthy(gateway)


def test_nothing_above_left_a_traceback_in_the_gateway_log(gateway: Gateway) -> None:
    """(The SDK logs a client that goes away mid-body at ERROR with a traceback, ClientDisconnect:
    noise, not a crash; any other traceback is one.)"""
    log = gateway.log.read_text(errors="replace")
    blocks = log.split("Traceback (most recent call last):")[1:]
    crashes = [b[:2000] for b in blocks if "starlette.requests.ClientDisconnect" not in b[:3000]]
    print(f"tracebacks: {len(blocks)}, other than ClientDisconnect: {len(crashes)}")
    assert not crashes, crashes[0]


def test_a_complete_request_line_past_the_bound_is_refused_in_one_read(gateway: Gateway) -> None:
    """The URL counts toward the head as the parser hands it over, even when the whole head (and a
    well-formed end) arrives in one read."""
    path = "/health?" + "q" * (2 * MAX_HEAD_BYTES)
    with _connect(gateway) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {_host(gateway)}\r\nConnection: close\r\n\r\n".encode())
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    _healthy(gateway)
