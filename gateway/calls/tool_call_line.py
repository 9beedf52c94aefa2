"""One line of code mode: a tool call as sandbox code wrote it, parsed strictly (it is untrusted).

What is sent upstream, decided on and recorded is the decoded object re-encoded, so it must be one
JSON object of finite numbers and valid Unicode (no lone surrogates), nested at most MAX_NESTING
deep, naming its server and tool as strings, with object arguments.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_NESTING", "MAX_REQUEST_BYTES", "CallRefused", "ToolCall", "parse_call"]

#: Largest call line accepted (the agent's own bound); arguments are capped lower by the policy.
MAX_REQUEST_BYTES = 1 << 20
#: Deepest nesting of a call's arguments (the MCP SDK's own encoder fails far deeper, on the session
#: every principal shares: the gateway refuses long before).
MAX_NESTING = 64


class CallRefused(Exception):
    """A call the gateway answers with an error of its own: `code` and `message` for the code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call as the code wrote it, parsed: its id (echoed back), the tool, its decoded arguments
    (what goes upstream, re-encoded) and their size as compact JSON."""

    id: object
    server: str
    tool: str
    arguments: dict[str, Any]
    size: int


def _no_constant(name: str) -> Any:
    raise CallRefused("invalid-request", f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise CallRefused("invalid-request", "numbers must be finite")
    return value


def _nesting(value: Any) -> int:
    """How deep a decoded JSON value nests (iteratively: any depth is measured, not recursed)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if depth <= MAX_NESTING:
                stack.extend(
                    (child, depth + 1) for child in (item.values() if isinstance(item, dict) else item)
                )
    return deepest


def parse_call(line: bytes) -> ToolCall:
    """One call line, or CallRefused(invalid-request): one JSON object of finite numbers and valid
    Unicode, nested at most MAX_NESTING deep, naming its server and tool, with object arguments."""
    if len(line) > MAX_REQUEST_BYTES:
        raise CallRefused("invalid-request", "a call is at most 1 MiB")
    try:
        request = json.loads(line, parse_constant=_no_constant, parse_float=_finite)
        # What is sent upstream and recorded is this object re-encoded: it must encode (no lone surrogates).
        size = len(json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode())
    except (ValueError, RecursionError, UnicodeError):
        raise CallRefused("invalid-request", "a call is one JSON object per line, in valid Unicode") from None
    if not isinstance(request, dict):
        raise CallRefused("invalid-request", "a call is one JSON object per line")
    call_id = request.get("id")
    if not (call_id is None or (isinstance(call_id, int) and not isinstance(call_id, bool))):
        call_id = None
    server, tool, arguments = request.get("server"), request.get("tool"), request.get("arguments", {})
    if not isinstance(server, str) or not isinstance(tool, str) or not server or not tool:
        raise CallRefused("invalid-request", "a call names its `server` and `tool` as strings")
    if not isinstance(arguments, dict):
        raise CallRefused("invalid-request", "`arguments` is a JSON object")
    if _nesting(arguments) > MAX_NESTING:
        raise CallRefused("invalid-request", f"arguments nest at most {MAX_NESTING} levels deep")
    size = len(json.dumps(arguments, ensure_ascii=False, separators=(",", ":")).encode())
    return ToolCall(call_id, server[:200], tool[:200], arguments, size)
