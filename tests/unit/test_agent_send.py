"""Requests to a sandbox agent are written whole and never interleaved, over a real socket pair."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import anyio
import pytest

from gateway.backend.agent_send import write_request

pytestmark = pytest.mark.anyio


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def read_all(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def test_a_small_request_is_written_at_once_even_while_the_send_thread_is_taken(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    io = anyio.CapacityLimiter(1)
    send_lock, tls_lock = threading.Lock(), threading.Lock()
    async with io:  # the sandbox's one send thread is busy: the request does not need it
        with anyio.fail_after(10):
            written = await write_request(
                ours, b'{"op":"run"}\n', send_lock=send_lock, tls_lock=tls_lock, io=io, timeout_s=5
            )
    assert written is True
    assert theirs.recv(100) == b'{"op":"run"}\n'
    assert not send_lock.locked()


async def test_a_request_bigger_than_the_socket_buffer_is_finished_before_the_next_one(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    big = bytes(range(256)) * 16384  # 4 MiB, far above the buffer
    small = b"next\n"
    io = anyio.CapacityLimiter(1)
    send_lock, tls_lock = threading.Lock(), threading.Lock()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(read_all(theirs, len(big) + len(small))))
    results: list[bool] = []

    async def write(data: bytes) -> None:
        results.append(
            await write_request(ours, data, send_lock=send_lock, tls_lock=tls_lock, io=io, timeout_s=30)
        )

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(write, big)
            await anyio.sleep(0.05)  # the big one holds the lock with part of it written
            tasks.start_soon(write, small)
            await anyio.sleep(0.05)
            reader.start()
        await anyio.to_thread.run_sync(reader.join)
    assert results == [True, True]
    assert received == [big + small], "the big request arrives whole, then the small one"
    assert not send_lock.locked()


async def test_an_agent_that_stops_reading_costs_the_caller_its_timeout_and_closing_frees_the_lock(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _theirs = pair
    io = anyio.CapacityLimiter(1)
    send_lock, tls_lock = threading.Lock(), threading.Lock()
    with anyio.fail_after(30):
        written = await write_request(
            ours, b"x" * (8 << 20), send_lock=send_lock, tls_lock=tls_lock, io=io, timeout_s=0.5
        )
    assert written is False
    assert send_lock.locked(), "the rest of the request is still being written"
    ours.shutdown(socket.SHUT_RDWR)  # what the channel's close() does
    with anyio.fail_after(30):
        while send_lock.locked():
            await anyio.sleep(0.01)


async def test_a_closed_socket_is_an_os_error_and_leaves_the_lock_free(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.close()
    send_lock, tls_lock = threading.Lock(), threading.Lock()
    with pytest.raises(BrokenPipeError):
        await write_request(
            ours, b"ping\n", send_lock=send_lock, tls_lock=tls_lock, io=anyio.CapacityLimiter(1), timeout_s=5
        )
    assert not send_lock.locked()


async def test_a_socket_with_a_timeout_is_written_on_the_thread(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    ours.settimeout(5)  # MSG_DONTWAIT would wait for room here: never on the event loop
    io = anyio.CapacityLimiter(1)
    send_lock, tls_lock = threading.Lock(), threading.Lock()
    held, release = anyio.Event(), anyio.Event()

    async def hold_the_send_thread() -> None:
        async with io:
            held.set()
            await release.wait()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold_the_send_thread)
        await held.wait()
        with anyio.move_on_after(0.5):
            await write_request(ours, b"late\n", send_lock=send_lock, tls_lock=tls_lock, io=io, timeout_s=5)
            pytest.fail("written without the sandbox's send thread")
        release.set()
    assert await write_request(ours, b"now\n", send_lock=send_lock, tls_lock=tls_lock, io=io, timeout_s=5)
    assert theirs.recv(100) == b"now\n"


async def test_many_concurrent_requests_big_and_small_arrive_whole_and_unmixed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    io = anyio.CapacityLimiter(1)
    send_lock, tls_lock = threading.Lock(), threading.Lock()
    lines = [
        (b"%d:" % n) + bytes([97 + n % 26]) * (n * 7919 % 300_000 if n % 3 == 0 else n) + b"\n"
        for n in range(60)
    ]
    total = sum(map(len, lines))
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(read_all(theirs, total)))
    reader.start()

    async def one(line: bytes) -> None:
        written = await write_request(ours, line, send_lock=send_lock, tls_lock=tls_lock, io=io, timeout_s=30)
        assert written is True

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for line in lines:
                tg.start_soon(one, line)
    reader.join(timeout=60)
    assert sorted(received[0].splitlines(keepends=True)) == sorted(lines)
    assert not send_lock.locked()


async def test_a_writer_thread_that_cannot_start_leaves_the_lock_free(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours, _theirs = pair
    io = anyio.CapacityLimiter(1)
    send_lock, tls_lock = threading.Lock(), threading.Lock()

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    big = b"x" * (8 * 1024 * 1024)  # more than the socket takes at once: the rest needs a thread
    with anyio.fail_after(10):
        written = await write_request(ours, big, send_lock=send_lock, tls_lock=tls_lock, io=io, timeout_s=5)
    assert written is False, "half a request was written: the caller must close the stream"
    assert not send_lock.locked()
