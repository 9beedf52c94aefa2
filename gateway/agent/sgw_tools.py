"""Code mode, inside the sandbox: call the tools of the gateway's upstream MCP servers from code.

    from sgw_tools import call_tool, ToolError
    hits = call_tool("notes", "search_notes", {"query": "quarterly report"})

The modules under /tools (`from tools.notes import search_notes`) are generated wrappers around
`call_tool`. Each call goes through the sandbox agent to the gateway, which checks the policy, calls
the upstream server and returns its result; the sandbox itself has no network. A call the policy
refuses, or that the upstream server answers with an error, raises `ToolError` with the gateway's
code. Calls are available only while the execution that started this process runs.

Standard library only; threads may call at once (one call at a time per process goes out).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

__all__ = ["ToolError", "call_tool"]

_ENV = "SGW_TOOLS_SOCKET"
_lock = threading.Lock()
_state: dict[str, Any] = {"sock": None, "reader": None, "pid": 0, "next": 1}


class ToolError(Exception):
    """A tool call that gave no result: `code` is the gateway's stable reason, `message` its words."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _connection() -> tuple[socket.socket, Any]:
    name = os.environ.get(_ENV)
    if not name:
        raise ToolError(
            "code-mode-unavailable",
            "this execution has no tool channel: the profile's policy has no `code_mode`, or the "
            "sandbox runs commands through docker exec (`exec_path: exec`), where code mode is unavailable",
        )
    sock = _state["sock"]
    if sock is not None and _state["pid"] == os.getpid():
        return sock, _state["reader"]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a forked child opens its own
    try:
        sock.connect("\0" + name)
    except OSError as exc:
        sock.close()
        raise ToolError(
            "code-mode-unavailable",
            f"the tool channel is closed (the execution that started this process ended?): {exc}",
        ) from None
    _state.update(sock=sock, reader=sock.makefile("rb"), pid=os.getpid())
    return sock, _state["reader"]


def _exchange(request: dict[str, Any]) -> dict[str, Any]:
    sock, reader = _connection()
    try:
        sock.sendall(json.dumps(request, separators=(",", ":"), allow_nan=False).encode() + b"\n")
        line = reader.readline()
    except OSError as exc:
        _state.update(sock=None)
        raise ToolError("code-mode-unavailable", f"the tool channel broke: {exc}") from None
    if not line:
        _state.update(sock=None)
        raise ToolError("code-mode-unavailable", "the tool channel closed (the execution ended?)")
    answer = json.loads(line)
    return answer if isinstance(answer, dict) else {}


def call_tool(server: str, tool: str, arguments: dict[str, Any] | None = None) -> Any:
    """Call `tool` of the upstream `server` with `arguments`; its result (the structured result if
    the tool gives one, else its text). Raises ToolError when refused or failed."""
    if not isinstance(arguments, dict | type(None)):
        raise TypeError("arguments must be a dict")
    try:
        with _lock:
            call_id = _state["next"]
            _state["next"] = call_id + 1
            answer = _exchange({"id": call_id, "server": server, "tool": tool, "arguments": arguments or {}})
    except (TypeError, ValueError) as exc:
        raise ToolError("invalid-argument", f"the arguments cannot be sent as JSON: {exc}") from None
    error = answer.get("error")
    if isinstance(error, dict):
        raise ToolError(str(error.get("code", "tool-error")), str(error.get("message", "")))
    return answer.get("result")
