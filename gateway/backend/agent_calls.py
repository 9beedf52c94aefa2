"""The calls in flight on one agent channel, and the agent's frames and answers decoded.

Everything here reads what the sandbox sent: untrusted, size-capped and type-checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from typing import Any

import anyio

from gateway.agent.protocol import (
    ERR,
    HEADER,
    HELLO,
    KINDS,
    MAX_PAYLOAD,
    OUT,
    PROTOCOL,
    RESULT,
    RESULT_PART,
    TOOL,
    TOOL_PART,
)
from gateway.backend.base import OutputCallback
from gateway.backend.frames import STDERR, STDOUT, BoundedCapture, FrameDecoder, FrameError
from gateway.errors import AgentBroken

__all__ = [
    "GONE",
    "HELLO_TIMEOUT_S",
    "MAX_TOOL_MESSAGE",
    "AgentDecoder",
    "Call",
    "Diagnostics",
    "exit_summary",
    "failure",
    "handshake",
    "line",
    "output_count",
]

_log = logging.getLogger("sandbox_gateway.agent_channel")

#: How long the agent may take to answer hello (a fresh sandbox starts python3 first).
HELLO_TIMEOUT_S = 15.0
#: What a call ends with when the stream to the agent broke.
GONE = object()
#: Largest tool call accepted from a run (the agent's own limit is 1 MiB, plus the connection id).
MAX_TOOL_MESSAGE = (1 << 20) + 64
#: Largest run_python RESULT accepted (the agent takes at most 24 MiB from the interpreter).
MAX_RESULT = 25 * 1024 * 1024
#: Tool calls of one run waiting to be served at most; beyond, they are dropped (the agent lets no
#: more than 8 wait, so only a broken agent gets here).
MAX_TOOL_BACKLOG = 64


class AgentDecoder:
    """Agent frames out of the container's stdout bytes; an oversized frame is a protocol breach."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self._buffer += data
        frames = []
        while len(self._buffer) >= HEADER.size:
            kind, request_id, length = HEADER.unpack_from(self._buffer)
            if kind not in KINDS or length > MAX_PAYLOAD:
                raise FrameError(f"agent frame kind {kind} length {length}")
            end = HEADER.size + length
            if len(self._buffer) < end:
                break
            frames.append((kind, request_id, bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames


class Call:
    """One call in flight. The sandbox's reader thread fills it; the caller awaits its end on the
    event loop. Output goes straight into bounded captures, so a flood costs that thread alone."""

    def __init__(self, cap: int, on_output: OutputCallback | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._ended = asyncio.Event()
        self.out, self.err = BoundedCapture(cap), BoundedCapture(cap)
        self.on_output = on_output
        self.end: tuple[Any, bytes] | None = None
        #: Code mode: the run's tool calls ("<connection> <line>"), once `accept_tools` was called.
        self.tool_calls: asyncio.Queue[bytes] | None = None
        self._tool_message = bytearray()
        self._tool_overflow = False
        #: run_python: the RESULT's pieces so far (None: more than MAX_RESULT came, it is refused).
        self._result: bytearray | None = bytearray()

    def accept_tools(self) -> None:
        self.tool_calls = asyncio.Queue(MAX_TOOL_BACKLOG)

    def _tool_frame(self, kind: int, payload: bytes) -> None:
        """On the reader thread: a piece of a tool call; a whole one goes to `tool_calls`."""
        if self.tool_calls is None:
            return
        self._tool_message += payload
        if len(self._tool_message) > MAX_TOOL_MESSAGE:
            self._tool_message.clear()
            self._tool_overflow = True
        if kind != TOOL:
            return
        message, overflow = bytes(self._tool_message), self._tool_overflow
        self._tool_message.clear()
        self._tool_overflow = False
        if not overflow:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._queue_tool_call, message)

    def _queue_tool_call(self, message: bytes) -> None:
        assert self.tool_calls is not None  # noqa: S101 - only queued once accepted
        with contextlib.suppress(asyncio.QueueFull):
            self.tool_calls.put_nowait(message)

    def deliver(self, kind: Any, payload: bytes) -> None:
        """On the reader thread: output is kept (bounded), tool calls queued, anything else ends the call."""
        if self.end is not None:
            return
        if kind in (TOOL, TOOL_PART):
            self._tool_frame(kind, payload)
            return
        if kind in (RESULT_PART, RESULT) and self._result is not None:
            self._result += payload
            if len(self._result) > MAX_RESULT:
                self._result = None  # the call still ends at its RESULT, as a breach
            if kind == RESULT_PART:
                return
            payload = bytes(self._result) if self._result is not None else b""
        elif kind == RESULT_PART:
            return
        if kind in (OUT, ERR):
            (self.out if kind == OUT else self.err).write(payload)
            if self.on_output is not None:
                try:
                    self.on_output("stdout" if kind == OUT else "stderr", payload)
                except Exception:  # noqa: BLE001 - the reader thread's top: a failing observer must not stop it
                    _log.exception("an output observer failed; it sees no more of this call")
                    self.on_output = None
            return
        self.end = (kind, payload)
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody waits any more
            self._loop.call_soon_threadsafe(self._ended.set)

    async def ended(self, timeout_s: float) -> tuple[Any, bytes] | None:
        """The frame that ended the call, or None when `timeout_s` passed first."""
        with anyio.move_on_after(max(0.0, timeout_s)):
            await self._ended.wait()
        return self.end


def line(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def exit_summary(payload: bytes) -> dict[str, Any]:
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


def output_count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else 0


def failure(payload: bytes) -> tuple[str, str]:
    """The agent's refusal: its error kind and message (both untrusted, only shown or compared)."""
    try:
        body = json.loads(payload)
        error, message = str(body.get("error", "")), str(body.get("message", ""))[:300]
    except (ValueError, AttributeError):
        error, message = "", ""
    return error, message or "the sandbox agent refused the command"


class Diagnostics:
    """The tail of the agent's own stderr, for error messages."""

    def __init__(self) -> None:
        self._tail = bytearray()

    def note(self, piece: bytes) -> None:
        self._tail += piece
        del self._tail[:-2048]

    def suffix(self) -> str:
        text = self._tail.decode(errors="replace").strip()
        return f" (agent said: {text[-300:]})" if text else ""


def handshake(sock: socket.socket, early: bytes, diagnostics: Diagnostics) -> bytes:
    """Send hello with a fresh nonce and wait for its exact answer; the bytes after it. What an
    earlier connection left in the stream before the answer is skipped."""
    nonce = secrets.token_hex(16)
    expected = f"{nonce} {PROTOCOL}".encode()
    hello = HEADER.pack(HELLO, 0, len(expected)) + expected
    sock.settimeout(HELLO_TIMEOUT_S)
    sock.sendall(b"\n" + line({"op": "hello", "nonce": nonce}))
    decoder, seen = FrameDecoder(), bytearray()
    data = early
    deadline = time.monotonic() + HELLO_TIMEOUT_S
    while True:
        for stream, piece in decoder.feed(data):
            if stream == STDOUT:
                seen += piece
            elif stream == STDERR:
                diagnostics.note(piece)
        at = seen.find(hello)
        if at >= 0:
            sock.settimeout(None)
            return bytes(seen[at + len(hello) :])
        if len(seen) > 4 * MAX_PAYLOAD:
            del seen[: -len(hello)]
        if time.monotonic() > deadline:
            raise FrameError("no hello")
        data = sock.recv(65536)
        if not data:
            raise FrameError("attach stream closed before hello" + diagnostics.suffix())
