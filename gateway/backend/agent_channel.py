"""The gateway's end of a sandbox agent: one attach stream per sandbox, many calls over it.

Everything read from the agent is untrusted: user code runs as the agent's uid. Frames are
size-capped, JSON is type-checked, output is bounded by the gateway's own captures, and the
gateway keeps its own deadline. A dead, silent or lying agent costs its sandbox, nothing more.
"""

from __future__ import annotations

import contextlib
import secrets
import select
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread

from gateway.agent.protocol import EXIT
from gateway.backend.agent_calls import (
    GONE,
    AgentDecoder,
    Call,
    Diagnostics,
    exit_summary,
    failure,
    handshake,
    line,
    output_count,
)
from gateway.backend.agent_python import SLACK_S, run_python
from gateway.backend.agent_send import write_request
from gateway.backend.agent_tools import serve_tool_calls
from gateway.backend.base import ExecOutcome, ExecRequest, OutputCallback, close_stream
from gateway.backend.frames import STDERR, STDOUT, FrameDecoder, FrameError
from gateway.backend.interpreter_results import PythonOutcome, PythonRequest
from gateway.errors import AgentBroken, AgentCannotStart, AgentFailure

__all__ = ["AgentChannel", "Connector"]

#: Opens the container's attach stream (a short Docker API call, made on the shared pool): the socket,
#: any bytes already read with the headers, and an object to keep referenced (and close) with it.
Connector = Callable[[], Awaitable[tuple[socket.socket, bytes, Any]]]

#: How long an agent may leave a request unread before the channel counts as broken (it reads its
#: stdin at all times; a full pipe for this long means it is stuck or not the agent).
_SEND_TIMEOUT_S = 10.0
#: A kill is best effort: it may not wait that long.
_KILL_SEND_S = 1.0


class AgentChannel:
    """The calls of one sandbox over its attach stream. Calls are awaited on the event loop; the
    blocking socket I/O runs on threads that belong to this sandbox alone (one reader for the
    channel's life, and one at a time for the handshake and for sends), never on a shared pool."""

    path = "agent"

    def __init__(self, connect: Connector, *, container_id: str = "") -> None:
        self._connect = connect
        self.container_id = container_id
        self._lock = threading.Lock()
        self._opening = anyio.Lock()
        self._send_lock = threading.Lock()
        self._tls_lock = threading.Lock()
        #: This sandbox's own threads for blocking writes and the handshake (never the shared pool).
        self._io = anyio.CapacityLimiter(1)
        self.decoding = anyio.CapacityLimiter(1)  # and one for decoding big run_python answers
        self._sock: socket.socket | None = None
        self._keep: Any = None
        self._pending: dict[int, Call] = {}
        self._next_id = secrets.randbelow(2**30) + 1
        self._diagnostics = Diagnostics()
        self.broken_reason = ""

    # -- connection ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    async def open(self) -> None:
        """Attach and handshake; a no-op when already connected."""
        async with self._opening:
            if self._sock is not None:
                return
            sock, early, keep = await self._connect()
            try:
                rest = await anyio.to_thread.run_sync(
                    handshake, sock, early, self._diagnostics, limiter=self._io
                )
            except BaseException as exc:
                close_stream(sock, keep)  # cancelled, or no agent: the stream goes either way
                if not isinstance(exc, (OSError, FrameError)):
                    raise
                raise AgentBroken(
                    "the sandbox agent did not answer (is the image built by `sandbox-gateway setup`, "
                    "with /opt/sandbox-gateway/agent.py? set `exec_path: exec` in the profile otherwise)"
                ) from exc
            with self._lock:
                self._sock, self._keep, self.broken_reason = sock, keep, ""
            threading.Thread(
                target=self._read_forever,
                args=(sock, rest),
                name=f"agent-{self.container_id[:12]}",
                daemon=True,
            ).start()

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            keep, self._keep = self._keep, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            close_stream(sock, keep)

    def _receive(self, sock: socket.socket) -> bytes:
        """The next bytes from the stream. A TLS socket is shared with senders under a lock, taken
        only once data is there (OpenSSL does not allow a read and a write on one connection at once)."""
        if not isinstance(sock, ssl.SSLSocket):
            return sock.recv(262144)
        if not sock.pending():
            select.select([sock], [], [])
        with self._tls_lock:
            return sock.recv(262144)

    def _read_forever(self, sock: socket.socket, rest: bytes) -> None:
        docker, agent = FrameDecoder(), AgentDecoder()
        reason = "the attach stream closed"
        try:
            agent_bytes = rest
            while True:
                for kind, request_id, payload in agent.feed(agent_bytes):
                    target = self._pending.get(request_id)
                    if target is not None:
                        target.deliver(kind, payload)
                data = self._receive(sock)
                if not data:
                    break
                agent_bytes = b""
                for stream, piece in docker.feed(data):
                    if stream == STDOUT:
                        agent_bytes += piece
                    elif stream == STDERR:
                        self._diagnostics.note(piece)
        except FrameError as exc:
            reason = f"the agent broke the protocol ({exc})"
        except OSError as exc:
            reason = f"the attach stream failed ({exc.strerror or exc})"
        except ValueError:  # closed by close() between two reads (select() of a closed socket)
            reason = "the attach stream was closed"
        with self._lock:
            keep = None
            if self._sock is sock:
                self._sock, keep, self._keep = None, self._keep, None
            self.broken_reason = reason + self._diagnostics.suffix()
        close_stream(sock, keep)
        for target in list(self._pending.values()):
            target.deliver(GONE, b"")

    # -- calls -----------------------------------------------------------------------------------

    async def send(self, body: dict[str, Any], timeout_s: float | None = None) -> None:
        """Write one request (gateway/backend/agent_send.py). An agent that does not take it within
        `timeout_s` (it stopped reading its stdin) has broken the channel."""
        sock = self._sock
        if sock is None:
            raise AgentBroken(f"the connection to the sandbox agent is closed: {self.broken_reason}")
        try:
            sent = await write_request(
                sock,
                line(body),
                send_lock=self._send_lock,
                tls_lock=self._tls_lock,
                io=self._io,
                timeout_s=_SEND_TIMEOUT_S if timeout_s is None else timeout_s,
            )
        except OSError as exc:
            raise AgentBroken("the connection to the sandbox agent broke off while sending") from exc
        if not sent:
            self.close()  # unblocks the abandoned send, and fails the calls in flight
            raise AgentBroken("the sandbox agent stopped taking requests")

    def _call_id(self) -> int:
        with self._lock:
            self._next_id = self._next_id % (2**31) + 1
            return self._next_id

    @contextlib.asynccontextmanager
    async def calling(
        self, cap: int, on_output: OutputCallback | None = None
    ) -> AsyncIterator[tuple[int, Call]]:
        """A connected channel, a fresh call id and the call its frames are routed to while open."""
        await self.open()
        call_id = self._call_id()
        call = Call(cap, on_output)
        self._pending[call_id] = call
        try:
            yield call_id, call
        finally:
            self._pending.pop(call_id, None)

    async def run(self, request: ExecRequest, on_output: OutputCallback | None = None) -> ExecOutcome:
        """Run one command; returns when it ends, its deadline passes, or the stream breaks.
        `on_output` sees the output as it arrives, on the sandbox's reader thread."""
        async with self.calling(request.max_output_bytes, on_output) as (call_id, call):
            started = time.monotonic()
            summary = await self._run(call_id, call, request)
        out, err = call.out, call.err
        stdout_total = max(out.total, output_count(summary.get("stdout_bytes")))
        stderr_total = max(err.total, output_count(summary.get("stderr_bytes")))
        return ExecOutcome(
            exit_code=summary["exit_code"],
            stdout=out.getvalue(),
            stderr=err.getvalue(),
            stdout_bytes=stdout_total,
            stderr_bytes=stderr_total,
            truncated=max(stdout_total, stderr_total) > request.max_output_bytes,
            deadline_hit=bool(summary["deadline_hit"]),
            duration_ms=(time.monotonic() - started) * 1000,
            sandbox_lost=bool(summary.get("lost")),
        )

    async def _run(self, call_id: int, call: Call, request: ExecRequest) -> dict[str, Any]:
        """Send the command and wait for its end: the end-of-call summary (output is in `call`)."""
        started = time.monotonic()
        deadline_s = request.timeout_s + request.grace_s
        body: dict[str, Any] = {
            "op": "run",
            "id": call_id,
            "argv": request.argv,
            "env": request.env,
            "cwd": request.workdir,
            "deadline_s": deadline_s,
            "max_output": request.max_output_bytes,
            # The agent times the command itself, as `timeout --kill-after` would.
            "timeout_s": request.timeout_s,
            "kill_after_s": request.kill_after_s,
        }
        if request.tool_calls is not None:
            body["tools"] = True
            call.accept_tools()
        await self.send(body)
        try:
            end = await self._await_end(call_id, call, request, started + deadline_s + SLACK_S)
        except BaseException:  # cancelled (the client went away): the command goes too
            with anyio.CancelScope(shield=True):
                await self.kill(call_id)
            raise
        if end is None:
            await self.kill(call_id)
            return {"exit_code": None, "deadline_hit": True}
        kind, payload = end
        if kind is GONE:
            # The container may have died (the broker checks); the output so far is kept.
            return {"exit_code": None, "deadline_hit": False, "lost": True}
        if kind == EXIT:
            return exit_summary(payload)
        error, message = failure(payload)  # FAIL: the reader only ends a call on EXIT, FAIL or GONE
        raise (AgentCannotStart if error == "no-resources" else AgentFailure)(message)

    async def _await_end(
        self, call_id: int, call: Call, request: ExecRequest, deadline: float
    ) -> tuple[Any, bytes] | None:
        """The frame that ends the run (None past `deadline`), serving its tool calls meanwhile."""
        if request.tool_calls is None:
            return await call.ended(deadline - time.monotonic())

        async def answer(conn: int, line: str) -> None:
            with contextlib.suppress(AgentBroken):
                await self.send({"op": "tool_result", "id": call_id, "conn": conn, "line": line})

        return await serve_tool_calls(call, request.tool_calls, answer, deadline)

    async def kill(self, call_id: int) -> None:
        with contextlib.suppress(AgentBroken):
            await self.send({"op": "kill", "id": call_id}, timeout_s=_KILL_SEND_S)

    async def run_python(
        self, request: PythonRequest, on_output: OutputCallback | None = None
    ) -> PythonOutcome:
        """One run_python call in the sandbox's interpreter (agent_python.py)."""
        return await run_python(self, request, on_output)

    async def reap(self, timeout_s: float = 5.0) -> int | None:
        """Kill every process of the sandbox's uid except the agent; 0 killed some, 1 found none."""
        async with self.calling(0) as (call_id, call):
            await self.send({"op": "reap", "id": call_id})
            end = await call.ended(timeout_s)
        if end is None or end[0] != EXIT:
            return None
        code = exit_summary(end[1])["exit_code"]
        return code if isinstance(code, int) else None
