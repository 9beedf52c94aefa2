"""The gateway's end of a sandbox agent: one attach stream per sandbox, many calls over it.

Everything read from the agent is untrusted: user code runs as the agent's uid. Frames are
size-capped, JSON is type-checked, output is bounded by the gateway's own captures, and the
gateway keeps its own deadline. A dead, silent or lying agent costs its sandbox, nothing more.
"""

from __future__ import annotations

import contextlib
import json
import queue
import secrets
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from gateway.agent.sandbox_agent import ERR, EXIT, FAIL, HEADER, HELLO, MAX_PAYLOAD, OUT, PROTOCOL
from gateway.backend.base import ExecOutcome, ExecRequest, OutputCallback, close_stream
from gateway.backend.commands import unwrap_timeout
from gateway.backend.frames import STDERR, STDOUT, BoundedCapture, FrameDecoder, FrameError
from gateway.errors import EngineError, SandboxError

__all__ = ["AgentBroken", "AgentCannotStart", "AgentChannel", "AgentFailure", "Connector"]

#: Opens the container's attach stream: the socket, any bytes already read with the headers, and an
#: object to keep referenced (and close) with the socket.
Connector = Callable[[], tuple[socket.socket, bytes, Any]]

#: How long the agent may take to answer hello (a fresh sandbox starts python3 first).
HELLO_TIMEOUT_S = 15.0
#: Beyond the agent's own deadline, how long the gateway waits before it gives up on the call.
_SLACK_S = 2.0
_GONE = object()
_NO_LOCK = contextlib.nullcontext()


class AgentBroken(EngineError):
    """The attach stream to the agent closed or carried garbage; calls in flight have no result."""

    code = "sandbox-agent-lost"


class AgentFailure(SandboxError):
    """The agent refused or could not run a command (a malformed request, a program that is not there)."""

    code = "sandbox-agent-refused"


class AgentCannotStart(AgentFailure):
    """The sandbox has no process, memory or descriptor left to start a command: it must be replaced,
    since calling it again would only be refused again."""

    code = "sandbox-exhausted"


class _AgentDecoder:
    """Agent frames out of the container's stdout bytes; an oversized frame is a protocol breach."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            kind, request_id, length = HEADER.unpack_from(self._buffer)
            if kind not in (OUT, ERR, EXIT, HELLO, FAIL) or length > MAX_PAYLOAD:
                raise FrameError(f"agent frame kind {kind} length {length}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((kind, request_id, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames


class AgentChannel:
    """Thread-safe: `run` may be called from several worker threads at once."""

    def __init__(self, connect: Connector, *, container_id: str = "") -> None:
        self._connect = connect
        self.container_id = container_id
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._tls_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._keep: Any = None
        self._pending: dict[int, queue.SimpleQueue[Any]] = {}
        self._next_id = secrets.randbelow(2**30) + 1
        self._diagnostics = bytearray()
        self.broken_reason = ""

    # -- connection ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def open(self) -> None:
        """Attach and handshake; a no-op when already connected."""
        with self._lock:
            if self._sock is not None:
                return
            sock, early, keep = self._connect()
            nonce = secrets.token_hex(16)
            expected = f"{nonce} {PROTOCOL}".encode()
            hello = HEADER.pack(HELLO, 0, len(expected)) + expected
            try:
                sock.settimeout(HELLO_TIMEOUT_S)
                sock.sendall(b"\n" + _line({"op": "hello", "nonce": nonce}))
                rest = self._await_hello(sock, early, hello)
                sock.settimeout(None)
            except (OSError, FrameError) as exc:
                close_stream(sock, keep)
                raise AgentBroken(
                    "the sandbox agent did not answer (is the image built by `sandbox-gateway setup`, "
                    "with /opt/sandbox-gateway/agent.py? set `exec_path: exec` in the profile otherwise)"
                ) from exc
            self._sock, self._keep, self.broken_reason = sock, keep, ""
            threading.Thread(
                target=self._read_forever,
                args=(sock, rest),
                name=f"agent-{self.container_id[:12]}",
                daemon=True,
            ).start()

    def _await_hello(self, sock: socket.socket, early: bytes, hello: bytes) -> bytes:
        """Skip what an earlier connection left in the stream until the exact answer to our nonce."""
        decoder, seen = FrameDecoder(), bytearray()
        data = early
        deadline = time.monotonic() + HELLO_TIMEOUT_S
        while True:
            for stream, piece in decoder.feed(data):
                if stream == STDOUT:
                    seen += piece
                elif stream == STDERR:
                    self._note(piece)
            at = seen.find(hello)
            if at >= 0:
                return bytes(seen[at + len(hello) :])
            if len(seen) > 4 * MAX_PAYLOAD:
                del seen[: -len(hello)]
            if time.monotonic() > deadline:
                raise FrameError("no hello")
            data = sock.recv(65536)
            if not data:
                raise FrameError("attach stream closed before hello" + self._diagnostic_suffix())

    def close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
            keep, self._keep = self._keep, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            close_stream(sock, keep)

    def _note(self, piece: bytes) -> None:
        """Keep the tail of the agent's own stderr, for error messages."""
        self._diagnostics += piece
        del self._diagnostics[:-2048]

    def _diagnostic_suffix(self) -> str:
        text = self._diagnostics.decode(errors="replace").strip()
        return f" (agent said: {text[-300:]})" if text else ""

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
        docker, agent = FrameDecoder(), _AgentDecoder()
        reason = "the attach stream closed"
        try:
            agent_bytes = rest
            while True:
                for kind, request_id, payload in agent.feed(agent_bytes):
                    target = self._pending.get(request_id)
                    if target is not None:
                        target.put((kind, payload))
                data = self._receive(sock)
                if not data:
                    break
                agent_bytes = b""
                for stream, piece in docker.feed(data):
                    if stream == STDOUT:
                        agent_bytes += piece
                    elif stream == STDERR:
                        self._note(piece)
        except FrameError as exc:
            reason = f"the agent broke the protocol ({exc})"
        except OSError as exc:
            reason = f"the attach stream failed ({exc.strerror or exc})"
        with self._lock:
            keep = None
            if self._sock is sock:
                self._sock, keep, self._keep = None, self._keep, None
            self.broken_reason = reason + self._diagnostic_suffix()
        close_stream(sock, keep)
        for target in list(self._pending.values()):
            target.put((_GONE, b""))

    # -- calls -----------------------------------------------------------------------------------

    def _send(self, body: dict[str, Any]) -> None:
        sock = self._sock
        if sock is None:
            raise AgentBroken(f"the connection to the sandbox agent is closed: {self.broken_reason}")
        try:
            with self._send_lock, self._tls_lock if isinstance(sock, ssl.SSLSocket) else _NO_LOCK:
                sock.sendall(_line(body))
        except OSError as exc:
            raise AgentBroken("the connection to the sandbox agent broke off while sending") from exc

    def _call_id(self) -> int:
        with self._lock:
            self._next_id = self._next_id % (2**31) + 1
            return self._next_id

    @contextlib.contextmanager
    def _call(self) -> Iterator[tuple[int, queue.SimpleQueue[Any]]]:
        """A connected channel, a fresh call id and the inbox its frames are routed to while open."""
        self.open()
        call_id = self._call_id()
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending[call_id] = inbox
        try:
            yield call_id, inbox
        finally:
            self._pending.pop(call_id, None)

    def run(self, request: ExecRequest, on_output: OutputCallback | None = None) -> ExecOutcome:
        """Run one command; blocks until it ends, its deadline passes, or the stream breaks."""
        with self._call() as (call_id, inbox):
            started = time.monotonic()
            summary, out, err = self._run(call_id, inbox, request, on_output)
        stdout_total = max(out.total, _count(summary.get("stdout_bytes")))
        stderr_total = max(err.total, _count(summary.get("stderr_bytes")))
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

    def _run(
        self,
        call_id: int,
        inbox: queue.SimpleQueue[Any],
        request: ExecRequest,
        on_output: OutputCallback | None,
    ) -> tuple[dict[str, Any], BoundedCapture, BoundedCapture]:
        """Send the command and collect its frames: (the end-of-call summary, stdout, stderr)."""
        started = time.monotonic()
        deadline_s = request.timeout_s + request.grace_s
        out, err = BoundedCapture(request.max_output_bytes), BoundedCapture(request.max_output_bytes)
        body: dict[str, Any] = {
            "op": "run",
            "id": call_id,
            "argv": request.argv,
            "env": request.env,
            "cwd": request.workdir,
            "deadline_s": deadline_s,
            "max_output": request.max_output_bytes,
        }
        wrapped = unwrap_timeout(request.argv)
        if wrapped is not None:  # the agent times the command itself, as `timeout` would
            body["timeout_s"], body["kill_after_s"], body["argv"] = wrapped
        self._send(body)
        end = started + deadline_s + _SLACK_S
        while True:
            try:
                kind, payload = inbox.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                self._kill(call_id)
                return {"exit_code": None, "deadline_hit": True}, out, err
            if kind is _GONE:
                # The container may have died (the broker checks); the output so far is kept.
                return {"exit_code": None, "deadline_hit": False, "lost": True}, out, err
            if kind in (OUT, ERR):
                (out if kind == OUT else err).write(payload)
                if on_output is not None:
                    on_output("stdout" if kind == OUT else "stderr", payload)
            elif kind == EXIT:
                return _summary(payload), out, err
            elif kind == FAIL:
                error, message = _failure(payload)
                raise (AgentCannotStart if error == "no-resources" else AgentFailure)(message)

    def _kill(self, call_id: int) -> None:
        with contextlib.suppress(AgentBroken):
            self._send({"op": "kill", "id": call_id})

    def reap(self, timeout_s: float = 5.0) -> int | None:
        """Kill every process of the sandbox's uid except the agent; 0 killed some, 1 found none."""
        with self._call() as (call_id, inbox):
            self._send({"op": "reap", "id": call_id})
            try:
                kind, payload = inbox.get(timeout=timeout_s)
            except queue.Empty:
                return None
        if kind != EXIT:
            return None
        code = _summary(payload)["exit_code"]
        return code if isinstance(code, int) else None


def _line(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _summary(payload: bytes) -> dict[str, Any]:
    """The agent's end-of-call report, type-checked; anything else is a protocol breach."""
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise AgentBroken("the sandbox agent sent a malformed result") from exc
    code = body.get("exit_code") if isinstance(body, dict) else "bad"
    if not (code is None or (isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255)):
        raise AgentBroken("the sandbox agent sent a malformed result")
    return {
        "exit_code": code,
        "deadline_hit": body.get("deadline_hit") is True,
        "stdout_bytes": body.get("stdout_bytes"),
        "stderr_bytes": body.get("stderr_bytes"),
    }


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else 0


def _failure(payload: bytes) -> tuple[str, str]:
    """The agent's refusal: its error kind and message (both untrusted, only shown or compared)."""
    try:
        body = json.loads(payload)
        error, message = str(body.get("error", "")), str(body.get("message", ""))[:300]
    except (ValueError, AttributeError):
        error, message = "", ""
    return error, message or "the sandbox agent refused the command"
