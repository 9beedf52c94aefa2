"""A raw TCP client for the tests of the gateway's HTTP front end: what no HTTP library would send."""

from __future__ import annotations

import select
import socket
import time
from urllib.parse import urlsplit

__all__ = ["connect", "read_all"]


def connect(base_url: str, timeout: float = 10) -> socket.socket:
    """A connection to the server at `base_url` (`http://host:port`)."""
    parts = urlsplit(base_url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=timeout)


def read_all(sock: socket.socket, timeout_s: float = 10) -> bytes:
    """Everything the server sends until it closes the connection (or `timeout_s` passes)."""
    received, deadline = b"", time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not select.select([sock], [], [], 0.2)[0]:
            continue
        try:
            chunk = sock.recv(65536)
        except OSError:  # reset: the answer ends here
            break
        if not chunk:
            break
        received += chunk
    return received
