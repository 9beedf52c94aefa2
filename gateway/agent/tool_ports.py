"""Code mode in the sandbox agent: the run's private door to the gateway's upstream tools.

For a run the gateway asks tools for, the agent listens on a socket of the abstract Unix namespace
(which exists per network namespace: only this sandbox sees it) under a random name, given to the
run's processes as SGW_TOOLS_SOCKET. Each line a process writes on a connection is one tool call; the
agent forwards it to the gateway unread (TOOL frames: "<connection> <line>") and writes the
gateway's answer back on that connection. The gateway parses and judges everything.

Only processes of the run's own session may connect (SO_PEERCRED, then /proc): a process another run
left behind, or one that left this run's session, cannot call through it even knowing the name.
Bounds, so that the code on the other end holds nothing of the agent: at most MAX_CONNECTIONS per
run, lines up to MAX_LINE, MAX_IN_FLIGHT calls waiting for the gateway per run (beyond that its
connections are not read: the callers wait), MAX_UNSENT bytes of answers queued for a connection
that does not read (beyond that it is closed). When the run ends, its door closes. Standard library
only.
"""

from __future__ import annotations

import contextlib
import secrets
import select
import socket
import struct
from collections.abc import Callable

__all__ = ["ENV_NAME", "MAX_CONNECTIONS", "MAX_IN_FLIGHT", "MAX_LINE", "Port"]

ENV_NAME = "SGW_TOOLS_SOCKET"
MAX_CONNECTIONS = 16
MAX_LINE = 1 << 20
MAX_IN_FLIGHT = 8
MAX_UNSENT = 16 << 20
_READ = 65536

#: forward(run id, connection id, line): sends the call to the gateway.
Forward = Callable[[int, int, bytes], None]


class _Connection:
    def __init__(self, conn_id: int, sock: socket.socket) -> None:
        self.id = conn_id
        self.sock = sock
        self.inbox = bytearray()
        self.unsent = bytearray()


class Port:
    """One run's listening socket and its connections."""

    def __init__(self, run_id: int, forward: Forward) -> None:
        self.run_id = run_id
        self.forward = forward
        self.name = f"sgw-tools-{secrets.token_hex(16)}"
        self.listener = socket.socket(
            socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        try:
            self.listener.bind("\0" + self.name)
            self.listener.listen(MAX_CONNECTIONS)
        except OSError:
            self.listener.close()
            raise
        #: The run's session (its process's pid: each run starts a session of its own); only its
        #: processes may connect. Set once the run has started.
        self.session = 0
        self.connections: dict[int, _Connection] = {}  # by file descriptor
        self.by_id: dict[int, _Connection] = {}
        self.next_id = 1
        self.in_flight = 0

    # -- what the agent's poll waits for ------------------------------------------------------------

    def wanted(self) -> dict[int, int]:
        wanted = {self.listener.fileno(): select.POLLIN}
        reading = self.in_flight < MAX_IN_FLIGHT
        for fd, conn in self.connections.items():
            mask = (select.POLLIN if reading else 0) | (select.POLLOUT if conn.unsent else 0)
            wanted[fd] = mask
        return wanted

    def owns(self, fd: int) -> bool:
        return fd == self.listener.fileno() or fd in self.connections

    def ready(self, fd: int, events: int) -> None:
        if fd == self.listener.fileno():
            self._accept()
            return
        conn = self.connections.get(fd)
        if conn is None:
            return
        if events & select.POLLOUT:
            self._flush(conn)
        if events & (select.POLLIN | select.POLLHUP | select.POLLERR) and fd in self.connections:
            self._read(conn)

    # -- the run's side ------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of descriptors: the caller sees its connection refused or reset
                return
            if len(self.connections) >= MAX_CONNECTIONS or not self._of_the_run(sock):
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Connection(self.next_id, sock)
            self.next_id += 1
            self.connections[sock.fileno()] = conn
            self.by_id[conn.id] = conn

    def _of_the_run(self, sock: socket.socket) -> bool:
        """Whether the peer is a process of this run's session: a process left behind by another run
        (or one that left this run's session) that learnt the name cannot call through it."""
        try:
            pid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
            with open(f"/proc/{pid}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            return self.session > 1 and int(fields[3]) == self.session
        except (OSError, ValueError, IndexError, struct.error):
            return False

    def _read(self, conn: _Connection) -> None:
        try:
            data = conn.sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(conn)
            return
        conn.inbox += data
        self._drain(conn)

    def _drain(self, conn: _Connection) -> None:
        """Forward the connection's complete lines while fewer than MAX_IN_FLIGHT calls wait."""
        while self.in_flight < MAX_IN_FLIGHT:
            end = conn.inbox.find(b"\n")
            if end < 0:
                break
            line = bytes(conn.inbox[:end])
            del conn.inbox[: end + 1]
            if len(line) > MAX_LINE:
                self._refuse(conn)
                return
            if line.strip():
                self.in_flight += 1
                self.forward(self.run_id, conn.id, line)
        if len(conn.inbox) > MAX_LINE and conn.inbox.find(b"\n") < 0:
            self._refuse(conn)

    def _refuse(self, conn: _Connection) -> None:
        """A request over the size limit: say so, then close the connection."""
        with contextlib.suppress(OSError):
            conn.sock.send(
                b'{"id":null,"error":{"code":"request-too-large","message":"one call is at most 1 MiB"}}\n'
            )
        self._drop(conn)

    # -- the gateway's side ----------------------------------------------------------------------------

    def answer(self, conn_id: int, line: str) -> None:
        """The gateway's answer to one call, for connection `conn_id` if it is still open."""
        self.in_flight = max(0, self.in_flight - 1)
        conn = self.by_id.get(conn_id)
        if conn is not None:
            conn.unsent += line.encode() + b"\n"
            if len(conn.unsent) > MAX_UNSENT:
                self._drop(conn)
            else:
                self._flush(conn)
        for waiting in list(self.by_id.values()):  # lines held back while MAX_IN_FLIGHT calls waited
            if self.in_flight >= MAX_IN_FLIGHT:
                break
            if waiting.inbox:
                self._drain(waiting)

    def _flush(self, conn: _Connection) -> None:
        while conn.unsent:
            try:
                sent = conn.sock.send(conn.unsent)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(conn)
                return
            del conn.unsent[:sent]

    def _drop(self, conn: _Connection) -> None:
        self.connections.pop(conn.sock.fileno(), None)
        self.by_id.pop(conn.id, None)
        conn.sock.close()

    def close(self) -> None:
        for conn in list(self.connections.values()):
            self._drop(conn)
        self.listener.close()
