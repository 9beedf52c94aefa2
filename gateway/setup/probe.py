"""Tiny HTTP probes for the engine socket and the proxy (stdlib only, short timeouts)."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

__all__ = ["http_status", "unix_http_status"]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _status(conn: http.client.HTTPConnection, method: str, path: str) -> int | None:
    try:
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    return response.status


def unix_http_status(path: Path, url_path: str = "/_ping", timeout: float = 3.0) -> int | None:
    """HTTP status of GET `url_path` on a unix socket, or None when nothing answers."""
    return _status(_UnixConnection(path, timeout), "GET", url_path)


def http_status(bind: str, url_path: str = "/_ping", method: str = "GET", timeout: float = 3.0) -> int | None:
    """HTTP status of `method url_path` on host:port, or None when nothing answers."""
    host, _, port = bind.rpartition(":")
    return _status(http.client.HTTPConnection(host, int(port), timeout=timeout), method, url_path)
