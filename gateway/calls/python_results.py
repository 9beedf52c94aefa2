"""run_python's result: the structured answer, and its MCP content (text, then each image).

Images travel as MCP image content, in the order `outputs` lists them; the structured result
describes each (its type, size, and for a PNG its width and height) without repeating its bytes.
"""

from __future__ import annotations

import base64
import json

from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent
from pydantic import BaseModel, Field

from gateway.backend.interpreter_results import InterpreterEnd, PythonOutcome

__all__ = ["LOST_BECAUSE", "PythonFailure", "PythonResult", "RichItem", "call_tool_result", "lost_reason"]

#: Why an interpreter's state was lost, in words (keys: `state_lost_reason`).
LOST_BECAUSE = {
    "idle": "the interpreter was ended after the profile's idle limit without a call",
    "timeout": "the code ignored its timeout's interrupt, so the interpreter was killed",
    "oom": "the interpreter was killed for exceeding the sandbox's memory limit",
    "exited": "the interpreter exited (its code ended the process, or it crashed)",
    "reaped": "the interpreter was killed with the sandbox's other processes after a timed-out command",
    "broken": "the code broke the interpreter's channel to the sandbox agent (fd 3 or 4)",
    "sandbox-replaced": "the sandbox it lived in was lost, and this call runs in a new one",
    "sandbox-removed": "the sandbox it lived in was removed (reset_sandbox, its idle or age limit, or a "
    "policy change), and this call runs in a new one",
}
_BY_END = {
    "idle": "idle",
    "killed-after-timeout": "timeout",
    "deadline": "timeout",
    "reaped": "reaped",
    "closed-its-answers": "broken",
    "broke-the-protocol": "broken",
}


def lost_reason(end: InterpreterEnd, oom: bool) -> str:
    """The `state_lost_reason` of an interpreter that ended so."""
    return "oom" if oom else _BY_END.get(end.reason, "exited")


class PythonFailure(BaseModel):
    """An exception the code raised (and did not catch)."""

    type: str = Field(description="The exception's class name, e.g. ZeroDivisionError")
    message: str
    traceback: str = Field(description="The traceback, with the frames of your code (cells are <cell-N>)")


class RichItem(BaseModel):
    """One rich output: a figure or an object's PNG (as image content), or a table, HTML, SVG or note."""

    mime: str = Field(description="image/png, text/markdown, text/html, image/svg+xml or text/plain")
    bytes: int = Field(description="Its size in bytes")
    text: str | None = Field(default=None, description="The text of a text output; null for an image")
    width: int | None = Field(default=None, description="Pixels, for an image")
    height: int | None = Field(default=None, description="Pixels, for an image")
    note: bool = Field(default=False, description="A note from the interpreter, not an output of the code")


class PythonResult(BaseModel):
    """The result of one run_python call in your sandbox's interpreter."""

    stdout: str = Field(
        description="Standard output of this call, UTF-8 (invalid bytes replaced), cut at the cap"
    )
    stderr: str = Field(description="Standard error of this call, cut at the cap")
    value: str | None = Field(
        description="repr() of the value of the code's last line, if it is an expression"
    )
    error: PythonFailure | None = Field(description="The exception the code raised, if any")
    outputs: list[RichItem] = Field(
        description="Figures (every open matplotlib figure, then closed), tables (a DataFrame as Markdown) "
        "and other rich representations; images come as image content in this order"
    )
    duration_ms: float
    truncated: bool = Field(description="stdout or stderr exceeded the output cap and was cut")
    timed_out: bool = Field(description="The call reached its timeout")
    interrupted: bool = Field(
        description="The timeout interrupted the code (KeyboardInterrupt); when the code stopped, the "
        "interpreter and its variables live on"
    )
    interpreter_killed: bool = Field(
        description="The interpreter ended during this call (killed after ignoring the interrupt, out of "
        "memory, or exited); its variables are gone and the next call starts a fresh one"
    )
    oom_killed: bool = Field(default=False, description="It was killed for exceeding the memory limit")
    new_interpreter: bool = Field(description="This call started a fresh interpreter (no earlier variables)")
    state_lost: bool = Field(description="Variables of earlier calls are gone (see state_lost_reason)")
    state_lost_reason: str | None = Field(
        default=None, description="Why: " + "; ".join(f"{key}: {text}" for key, text in LOST_BECAUSE.items())
    )
    memory_kb: int | None = Field(
        default=None, description="The interpreter's resident memory after the call"
    )
    sandbox_replaced: bool = False
    egress_refused: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="Outputs the gateway refused, and why")


def describe(outcome: PythonOutcome) -> list[RichItem]:
    items = []
    for rich in outcome.rich:
        if isinstance(rich.data, bytes):
            items.append(RichItem(mime=rich.mime, bytes=len(rich.data), width=rich.width, height=rich.height))
        else:
            size = len(rich.data.encode())
            items.append(RichItem(mime=rich.mime, bytes=size, text=rich.data, note=rich.note))
    return items


def call_tool_result(result: PythonResult, outcome: PythonOutcome) -> CallToolResult:
    """The MCP answer: the structured result (also as JSON text, for clients that read only text),
    then every image as image content."""
    structured = result.model_dump(mode="json")
    content: list[ContentBlock] = [TextContent(type="text", text=json.dumps(structured))]
    for rich in outcome.rich:
        if isinstance(rich.data, bytes):
            data = base64.b64encode(rich.data).decode()
            content.append(ImageContent(type="image", data=data, mime_type=rich.mime))
    return CallToolResult(content=content, structured_content=structured)
