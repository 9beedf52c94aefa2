"""The HTTP protocol's timeouts on a transport of the test's own: a client that reads nothing, one
that never sends, one whose head never ends (tests/e2e/test_http_front*.py take the real sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.config import Config
from uvicorn.server import ServerState

from gateway.http.server_protocol import BoundedHttpProtocol


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = self.aborted = False

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _connected(**timeouts: float) -> tuple[BoundedHttpProtocol, _Transport]:
    config = Config(app=_app, lifespan="off", log_level="critical")
    config.load()
    times = {"head_timeout_s": 60.0, "idle_timeout_s": 60.0, "write_stall_s": 60.0, **timeouts}
    cls = type("Protocol", (BoundedHttpProtocol,), times)
    protocol = cls(config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop())
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def test_a_client_that_reads_nothing_is_dropped_and_one_that_reads_again_is_not() -> None:
    async def main() -> tuple[bool, bool]:
        stalled, transport = _connected(write_stall_s=0.05)
        stalled.pause_writing()
        resumed, other = _connected(write_stall_s=0.05)
        resumed.pause_writing()
        resumed.resume_writing()
        await asyncio.sleep(0.3)
        return transport.aborted, other.aborted or other.closed

    assert asyncio.run(main()) == (True, False)


def test_a_connection_that_never_sends_is_closed() -> None:
    async def main() -> bool:
        _, transport = _connected(idle_timeout_s=0.05)
        await asyncio.sleep(0.3)
        return transport.closed

    assert asyncio.run(main())


def test_a_head_that_never_ends_gets_408_however_steadily_it_trickles() -> None:
    async def main() -> bytes:
        protocol, transport = _connected(head_timeout_s=0.2, idle_timeout_s=0.1)
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for _ in range(6):  # a byte every 50 ms: the idle timer never fires, the head's does
            await asyncio.sleep(0.05)
            if transport.is_closing():
                break
            protocol.data_received(b"a")
        await asyncio.sleep(0.2)
        return transport.written if transport.closed else b"still open"

    assert asyncio.run(main()).startswith(b"HTTP/1.1 408")


def test_a_served_request_leaves_no_timer_behind_while_it_is_answered() -> None:
    async def main() -> tuple[bytes, bool]:
        protocol, transport = _connected(idle_timeout_s=0.05, head_timeout_s=0.05)
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.01)  # the app answers; then uvicorn's own keep-alive timer governs
        await asyncio.sleep(0.2)
        return transport.written, transport.closed

    written, closed = asyncio.run(main())
    assert written.startswith(b"HTTP/1.1 200") and not closed
