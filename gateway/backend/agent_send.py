"""Writing one request to a sandbox agent without splitting it from, or interleaving it with, another.

A request is written whole under the channel's send lock. Most are small and the socket takes them
at once: they are written right here on the event loop, without blocking (no thread hand-off). The
rest, a request the socket does not take whole, a TLS socket, or a lock held by another sender, is
written on a thread, and the caller waits for it at most `timeout_s`: an agent that stops reading
must not hold the caller forever.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
import threading

import anyio
import anyio.to_thread

__all__ = ["write_request"]


async def write_request(
    sock: socket.socket,
    data: bytes,
    *,
    send_lock: threading.Lock,
    tls_lock: threading.Lock,
    io: anyio.CapacityLimiter,
    timeout_s: float,
) -> bool:
    """Write `data` whole; False when it was not written within `timeout_s` (the write may still be
    under way: the caller closes the socket, which ends it). OSError when the socket failed."""
    # Only a blocking socket (no timeout) honours MSG_DONTWAIT: one with a timeout would wait for room.
    direct = not isinstance(sock, ssl.SSLSocket) and sock.gettimeout() is None
    if not direct or not send_lock.acquire(blocking=False):
        locked = functools.partial(_write_locked, sock, data, send_lock, tls_lock)
        with anyio.move_on_after(timeout_s):
            await anyio.to_thread.run_sync(locked, limiter=io, abandon_on_cancel=True)
            return True
        return False
    try:
        sent = sock.send(data, socket.MSG_DONTWAIT)
    except BlockingIOError:
        sent = 0
    except BaseException:
        send_lock.release()
        raise
    if sent == len(data):
        send_lock.release()
        return True
    # Part of it is written: the rest must follow before anything else, so the lock goes with it to
    # a thread of its own, started now, which releases the lock however the write ends.
    failure: list[OSError] = []
    writer = threading.Thread(
        target=_finish, args=(sock, data[sent:], send_lock, failure), name="agent-send", daemon=True
    )
    try:
        writer.start()
    except RuntimeError:  # no thread to be had: half a request is written, the caller closes the stream
        send_lock.release()
        return False
    with anyio.move_on_after(timeout_s):
        await anyio.to_thread.run_sync(writer.join, abandon_on_cancel=True)
        if failure:
            raise failure[0]
        return True
    return False


def _write_locked(
    sock: socket.socket, data: bytes, send_lock: threading.Lock, tls_lock: threading.Lock
) -> None:
    with send_lock, tls_lock if isinstance(sock, ssl.SSLSocket) else _NO_LOCK:
        sock.sendall(data)


def _finish(sock: socket.socket, rest: bytes, send_lock: threading.Lock, failure: list[OSError]) -> None:
    try:
        sock.sendall(rest)
    except OSError as exc:
        failure.append(exc)
    finally:
        send_lock.release()


_NO_LOCK = contextlib.nullcontext()
