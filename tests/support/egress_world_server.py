"""The servers of the egress tests' outside world (see `egress_world`), run inside its network
namespace as `python -m tests.support.egress_world_server CONFIG.json`.

HTTP on :80 and HTTPS on :443 of every address of the namespace. A request answers 200 with a line
naming what reached the server (`world: host=... sni=... path=... local=...`); `POST` (any path)
counts the body it read; `GET /bytes/<n>` sends n bytes; `/simple/` and `/packages/` are a PEP 503
index of one project, whose wheel `build_wheel` makes. Every request, and every TLS handshake (one
that fails too), is a JSON line in the log named by the config.

The config holds `cert`, `key` (PEM files), `log` and `wheel` (paths), `ports` (`{"http": 80,
"https": 443}`) and, optionally, `dns` (`{"address", "port", "log", "reset"}`: the `egress_world_dns`
server, in a thread). Stdlib only: it runs in the namespace with nothing but the interpreter.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import ssl
import sys
import threading
import weakref
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.egress_world_dns import DnsServer

__all__ = ["MAX_BODY", "PROJECT", "WHEEL_NAME", "build_wheel", "main"]

#: The largest body a POST may send, and the most `/bytes/<n>` answers.
MAX_BODY = 64 * 1024 * 1024
PROJECT = "sgw-hello"
WHEEL_NAME = "sgw_hello-1.0-py3-none-any.whl"
_MODULE = b'"""A package only the egress tests\' index serves."""\n\nGREETING = "hello from the test index"\n'
_DIST_INFO = "sgw_hello-1.0.dist-info"
_FILES = {
    "sgw_hello.py": _MODULE,
    f"{_DIST_INFO}/METADATA": b"Metadata-Version: 2.1\nName: sgw-hello\nVersion: 1.0\n",
    f"{_DIST_INFO}/WHEEL": (
        b"Wheel-Version: 1.0\nGenerator: sandbox-gateway-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ),
}
_BYTES = re.compile(r"/bytes/(\d+)")
_CHUNK = 64 * 1024


def build_wheel() -> bytes:
    """A valid pure-Python wheel of `sgw-hello` 1.0, the same bytes on every call."""
    record = []
    for name, data in _FILES.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{_DIST_INFO}/RECORD,,")
    files = {**_FILES, f"{_DIST_INFO}/RECORD": ("\n".join(record) + "\n").encode()}
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(info, data)
    return out.getvalue()


class _Log:
    """The hit log: one JSON line a request or handshake, written before the answer goes out."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()

    def write(self, **hit: Any) -> None:
        line = json.dumps(hit) + "\n"
        with self.lock, self.path.open("a") as out:
            out.write(line)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, port: int, log: _Log, index: _Index, tls: ssl.SSLContext | None) -> None:
        self.log, self.index, self.tls = log, index, tls
        self.sni: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        if tls is not None:
            tls.sni_callback = self._remember_sni
        super().__init__(("0.0.0.0", port), _Handler)  # noqa: S104 - every address of the namespace

    def _remember_sni(self, sock: Any, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name is not None:
            self.sni[sock] = name

    def finish_request(self, request: Any, client_address: Any) -> None:
        """On the HTTPS server: the handshake first (logged, failed or not), then the requests."""
        request.settimeout(30)
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        local = request.getsockname()
        wrapped = self.tls.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        error = None
        try:
            wrapped.do_handshake()
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        self.log.write(
            kind="tls", addr=local[0], port=local[1], sni=self.sni.get(wrapped), host=None, method=None,
            path=None, error=error,
        )  # fmt: skip
        if error is None:
            super().finish_request(wrapped, client_address)


class _Index:
    """The PEP 503 pages and the wheel they point at."""

    def __init__(self, wheel: bytes) -> None:
        self.wheel = wheel
        sha = hashlib.sha256(wheel).hexdigest()
        self.pages = {
            "/simple/": (
                f'<!DOCTYPE html><html><body><a href="/simple/{PROJECT}/">{PROJECT}</a></body></html>'
            ),
            f"/simple/{PROJECT}/": (
                f'<!DOCTYPE html><html><body><a href="/packages/{WHEEL_NAME}#sha256={sha}">'
                f"{WHEEL_NAME}</a></body></html>"
            ),
        }

    def answer(self, path: str) -> tuple[int, str, bytes] | None:
        """(status, content type, body) for an index path; None for any other path."""
        if path == f"/packages/{WHEEL_NAME}":
            return 200, "application/octet-stream", self.wheel
        if path.startswith(("/simple/", "/packages/")):
            page = self.pages.get(path if path.endswith("/") else path + "/")
            if page is None:
                return 404, "text/plain", b"not in the test index\n"
            return 200, "text/html; charset=utf-8", page.encode()
        return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def parse_request(self) -> bool:
        """Log every request that reached the server, one it could not parse too."""
        parsed = super().parse_request()
        local = self.connection.getsockname()
        headers = getattr(self, "headers", None)
        self.server.log.write(
            kind="request", addr=local[0], port=local[1], sni=self.server.sni.get(self.connection),
            host=headers.get("Host") if parsed and headers is not None else None,
            method=self.command, path=getattr(self, "path", None),
            error=None if parsed else "unparsable request",
        )  # fmt: skip
        return parsed

    def _echo(self) -> str:
        local = self.connection.getsockname()
        sni = self.server.sni.get(self.connection) or "-"
        return f"world: host={self.headers.get('Host')} sni={sni} path={self.path} local={local[0]}"

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if (match := _BYTES.fullmatch(path)) is not None:
            self._send_bytes(int(match.group(1)))
        elif (index := self.server.index.answer(path)) is not None:
            self._send(*index)
        else:
            self._send(200, "text/plain", (self._echo() + "\n").encode())

    do_HEAD = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    def do_POST(self) -> None:
        try:
            received = self._read_body()
        except ValueError as exc:
            self.close_connection = True
            self._send(413, "text/plain", f"{exc}\n".encode())
            return
        self._send(200, "text/plain", f"world: received {received} bytes\n".encode())

    def _send_bytes(self, size: int) -> None:
        if size > MAX_BODY:
            self._send(400, "text/plain", b"too many bytes asked for\n")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b"x" * _CHUNK
        while size > 0 and self.command != "HEAD":
            self.wfile.write(block[: min(size, _CHUNK)])
            size -= _CHUNK

    def _read_body(self) -> int:
        """Read (and drop) the body, by Content-Length or chunked; its size."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                total += self._drain(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return total
        return self._drain(int(self.headers.get("Content-Length") or 0))

    def _drain(self, size: int) -> int:
        if size > MAX_BODY:
            raise ValueError(f"a body over {MAX_BODY} bytes")
        left = size
        while left > 0:
            got = self.rfile.read(min(left, _CHUNK))
            if not got:
                raise ValueError("the body ended early")
            left -= len(got)
        return size


def main(argv: list[str]) -> None:
    config = json.loads(Path(argv[0]).read_text())
    log = _Log(Path(config["log"]))
    index = _Index(Path(config["wheel"]).read_bytes())
    if (dns := config.get("dns")) is not None:
        dns_server = DnsServer(dns["address"], dns["port"], Path(dns["log"]), Path(dns["reset"]))
        threading.Thread(target=dns_server.serve_forever, daemon=True).start()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(config["cert"], config["key"])
    servers = [
        _Server(config["ports"]["http"], log, index, None),
        _Server(config["ports"]["https"], log, index, tls),
    ]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("serving", flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
