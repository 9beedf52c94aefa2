"""The sandbox agent's protocol: requests in, frames out (standard library only).

- gateway -> agent, on stdin: one JSON object per line (JSON never holds a raw newline, so a line
  cut short by a dropped connection is simply discarded at the next newline).
  {"op": "hello", "nonce": str} | {"op": "run", "id": int, "argv": [str], "env": [str], "cwd": str,
  "deadline_s": float, "max_output": int[, "timeout_s": float, "kill_after_s": float]} |
  {"op": "kill", "id": int} | {"op": "reap", "id": int} |
  {"op": "py", "id": int, "code": str, "env": [str], "cwd": str, "timeout_s": float, "kill_after_s":
  float, "deadline_s": float, "max_output": int, "idle_s": float | null, "caps": {...}} (run_python,
  see interpreter_host.py) |
  {"op": "tool_result", "id": int, "conn": int, "line": str} (the answer to a tool call, see below)
- agent -> gateway, on stdout: frames of a 9-byte header (kind, request id, payload length; big
  endian) and the payload: output chunks (OUT, ERR), the end of a run (EXIT, JSON), a refusal
  (FAIL, JSON: `error` is bad-request, spawn-failed or no-resources, and a `message`) and the
  answer to hello (HELLO, "<nonce> <protocol>"), and the tool calls of a run started with
  `"tools": true` (TOOL: "<connection> <line>", as the run's code wrote it; a call longer than one
  frame comes as TOOL_PART frames followed by its last piece in a TOOL frame). See tool_ports.py.
  The end of a py call is RESULT (RESULT_PART pieces first when it is long): a JSON summary line,
  then the interpreter's answer as it sent it (nothing when it gave none).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

PROTOCOL = 2
HEADER = struct.Struct(">BII")
OUT, ERR, EXIT, HELLO, FAIL, TOOL, TOOL_PART, RESULT, RESULT_PART = 1, 2, 3, 4, 5, 6, 7, 8, 9
#: Every kind of frame the agent sends.
KINDS = frozenset({OUT, ERR, EXIT, HELLO, FAIL, TOOL, TOOL_PART, RESULT, RESULT_PART})
#: Largest payload of one frame; the gateway refuses anything bigger.
MAX_PAYLOAD = 64 * 1024
#: Longest request line (code travels in argv, capped well below this by the gateway).
MAX_REQUEST = 8 * 1024 * 1024


class Writer:
    """Frames for the gateway, queued and written as `fd` takes them: the agent never blocks on it."""

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.pending = bytearray()
        os.set_blocking(fd, False)

    def send(self, kind: int, request_id: int, payload: bytes) -> None:
        for start in range(0, max(len(payload), 1), MAX_PAYLOAD):
            piece = payload[start : start + MAX_PAYLOAD]
            self.pending += HEADER.pack(kind, request_id, len(piece)) + piece
        self.flush()

    def send_message(
        self, request_id: int, payload: bytes, *, last: int = TOOL, part: int = TOOL_PART
    ) -> None:
        """One message (a tool call, a run_python result) in as many frames as it takes: `part`
        pieces, then the last in a `last` frame."""
        pieces = [
            payload[start : start + MAX_PAYLOAD] for start in range(0, max(len(payload), 1), MAX_PAYLOAD)
        ]
        for index, piece in enumerate(pieces):
            kind = last if index == len(pieces) - 1 else part
            self.pending += HEADER.pack(kind, request_id, len(piece)) + piece
        self.flush()

    def send_json(self, kind: int, request_id: int, body: dict[str, Any]) -> None:
        self.send(kind, request_id, json.dumps(body, separators=(",", ":")).encode())

    def flush(self) -> None:
        while self.pending:
            try:
                written = os.write(self.fd, self.pending)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # nobody reads stdout any more: what was for the gateway is lost anyway
                self.pending.clear()
                return
            del self.pending[:written]


class Requests:
    """Request lines out of the bytes read from stdin: JSON objects only; blank lines, other JSON
    and garbage are dropped, and a line longer than `limit` is skipped up to its newline."""

    def __init__(self, limit: int = MAX_REQUEST) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.skipping = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self.buffer += data
        found: list[dict[str, Any]] = []
        while True:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > self.limit:
                    self.buffer.clear()
                    self.skipping = True
                return found
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 1]
            if self.skipping:
                self.skipping = False
                continue
            try:
                request = json.loads(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(request, dict):
                found.append(request)
