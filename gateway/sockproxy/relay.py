"""Relaying a hijacked stream (attach, exec start) once the engine has switched protocols.

Every command of a sandbox's agent crosses this relay twice, so it works at the transport level:
what one side's transport delivers is written to the other's at once, with no task, queue or await
in between, and flow control passes backpressure along (a side that cannot take more pauses
reading from the other). The engine ending its side ends the relay; the client ending its input
is passed on to the engine, which then finishes its output.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["relay"]


class _Half(asyncio.Protocol):
    """Reads one transport; writes what it reads to `peer`."""

    def __init__(self, peer: asyncio.Transport, done: asyncio.Future[None], *, ends_relay: bool) -> None:
        self.peer = peer
        self.done = done
        #: The engine's side: its end is the end of the stream. The client's may only stop sending.
        self.ends_relay = ends_relay

    def data_received(self, data: bytes) -> None:
        self.peer.write(data)

    def eof_received(self) -> bool:
        if self.ends_relay:
            self._finish()
            return False
        if self.peer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                self.peer.write_eof()
        return True  # keep this transport open: the engine's output still comes back through it

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def pause_writing(self) -> None:
        # This side's transport has more queued than it can send: stop reading what feeds it.
        self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.peer.resume_reading()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _buffered(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """What the stream reader already holds (it read ahead), and whether it saw the end."""
    # Private to asyncio, but the only way to take over a stream's transport without losing bytes.
    buffer: bytearray = getattr(reader, "_buffer")  # noqa: B009
    data = bytes(buffer)
    buffer.clear()
    return data, bool(getattr(reader, "_eof"))  # noqa: B009


async def relay(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    engine: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    *,
    to_engine: bytes = b"",
    to_client: bytes = b"",
) -> None:
    """Relay both ways until the engine ends the stream or the client goes away."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    client_transport = client[1].transport
    engine_transport = engine[1].transport
    held_for_engine, client_ended = _buffered(client[0])
    held_for_client, engine_ended = _buffered(engine[0])
    client_transport.set_protocol(_Half(engine_transport, done, ends_relay=False))  # type: ignore[arg-type]
    engine_transport.set_protocol(_Half(client_transport, done, ends_relay=True))  # type: ignore[arg-type]
    try:
        if to_engine + held_for_engine:
            engine_transport.write(to_engine + held_for_engine)
        if to_client + held_for_client:
            client_transport.write(to_client + held_for_client)
        if engine_ended:
            return
        if client_ended and engine_transport.can_write_eof():
            engine_transport.write_eof()
        for transport in (client_transport, engine_transport):
            if isinstance(transport, asyncio.ReadTransport) and not transport.is_reading():
                transport.resume_reading()
        await done
    finally:
        engine_transport.close()
