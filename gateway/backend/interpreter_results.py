"""run_python's request and outcome, and the agent's RESULT decoded.

A RESULT is a JSON summary line from the agent, then the interpreter's answer as the interpreter
wrote it. Both come from inside the sandbox, where the code runs with the agent's uid and owns the
interpreter outright: every field is type-checked and capped here, every image is decoded and must
be a PNG within the caps, and any mime type outside a short allow-list is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from gateway.backend.png import png_size
from gateway.errors import AgentFailure

__all__ = [
    "END_REASONS",
    "InterpreterEnd",
    "PythonError",
    "PythonOutcome",
    "PythonRequest",
    "RichOutput",
    "decode_result",
]

#: How an interpreter can end, as the agent reports it (anything else reads as "died").
END_REASONS = frozenset(
    {"idle", "reaped", "killed-after-timeout", "deadline", "closed-its-answers", "broke-the-protocol", "died"}
)
_TEXT_MIMES = frozenset({"text/markdown", "text/html", "image/svg+xml", "text/plain"})
#: Rich outputs looked at per answer beyond the image cap (notes, tables, HTML).
_MORE_ENTRIES = 32
#: Characters of text outputs one answer may carry together (at least one whole output's cap).
_TEXT_TOTAL = 1024 * 1024
_MAX_ERROR_TYPE, _MAX_MESSAGE, _MAX_TRACEBACK = 200, 4096, 64 * 1024


@dataclass(frozen=True, slots=True)
class PythonRequest:
    """One run_python call with its bounds (a profile's `exec` and `interpreter` keys)."""

    code: str
    workdir: str
    env: list[str]
    timeout_s: float
    max_output_bytes: int
    interrupt_grace_s: float
    idle_timeout_s: float
    caps: dict[str, int]
    #: Gateway-side deadline on top of the timeout and the interrupt's grace.
    grace_s: float = 5.0


@dataclass(frozen=True, slots=True)
class InterpreterEnd:
    """How an interpreter ended: `reason` (END_REASONS), its exit status as a shell shows it, and
    whether the kernel's OOM killer ended it (the agent's reading of the sandbox cgroup's count)."""

    reason: str
    exit_code: int | None
    oom: bool = False


@dataclass(frozen=True, slots=True)
class PythonError:
    type: str
    message: str
    traceback: str


@dataclass(frozen=True, slots=True)
class RichOutput:
    """A representation the code's result or figures offered: PNG bytes, or text of `mime`."""

    mime: str
    data: bytes | str
    width: int = 0
    height: int = 0
    #: A note from the interpreter (an output it dropped), not an output of the code.
    note: bool = False


@dataclass(frozen=True, slots=True)
class PythonOutcome:
    """What came back from one run_python call."""

    stdout: bytes
    stderr: bytes
    stdout_bytes: int
    stderr_bytes: int
    truncated: bool
    duration_ms: float
    deadline_hit: bool
    #: The interpreter's answer; None when it gave none (it ended during the call).
    value: str | None = None
    error: PythonError | None = None
    rich: tuple[RichOutput, ...] = ()
    #: The timeout's KeyboardInterrupt was sent.
    interrupted: bool = False
    #: This call started a fresh interpreter...
    new_interpreter: bool = False
    #: ...because the previous one ended so (its state is lost).
    previous_end: InterpreterEnd | None = None
    #: The interpreter ended during this call (its state is lost).
    end: InterpreterEnd | None = None
    #: The interpreter's resident memory after the call, as the agent read it from /proc.
    memory_kb: int | None = None
    #: The sandbox cgroup's OOM-kill count at the call's end (the gateway's baseline for commands).
    oom_kills: int | None = None
    #: Outputs the gateway refused (wrong type, above the caps), said in words.
    refused: tuple[str, ...] = ()
    #: As ExecOutcome: the status of the process that ended (the interpreter), for the OOM check.
    exit_code: int | None = None
    sandbox_lost: bool = False
    oom_killed: bool = False
    previous_oom: bool = False
    sandbox_replaced: bool = False
    #: Its clean-up could not run (after a kill): the sandbox must be replaced.
    sandbox_unusable: bool = False
    container_id: str = field(default="", compare=False)


def _int(value: object, low: int = 0, high: int = 2**53) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and low <= value < high else None


def _end(value: object) -> InterpreterEnd | None:
    if not isinstance(value, dict):
        return None
    reason = value.get("reason")
    return InterpreterEnd(
        reason if isinstance(reason, str) and reason in END_REASONS else "died",
        _int(value.get("exit_code"), 0, 256),
        value.get("oom") is True,
    )


def _text(value: object, limit: int) -> str:
    """A string of the answer, cut at `limit`, with what UTF-8 cannot carry (lone surrogates) replaced."""
    text = value if isinstance(value, str) else ""
    text = text if len(text) <= limit else text[:limit] + "…"
    return text.encode("utf-8", "replace").decode()


def _png(data: object, budget: list[int]) -> RichOutput | str:
    """A PNG from base64 within the bytes left in `budget` ([images, bytes]), or why not."""
    try:
        raw = base64.b64decode(data if isinstance(data, str) else "", validate=True)
    except (binascii.Error, ValueError):
        return "an image that is not valid base64 was refused"
    if budget[0] <= 0 or len(raw) > budget[1]:  # before any work on it
        return "an image above this call's image cap was refused"
    size = png_size(raw)
    if size is None:
        return "an image that is not a PNG was refused"
    budget[0] -= 1
    budget[1] -= len(raw)
    return RichOutput("image/png", raw, *size)


def _rich(entries: object, caps: dict[str, int]) -> tuple[list[RichOutput], list[str]]:
    kept: list[RichOutput] = []
    refused: list[str] = []
    if not isinstance(entries, list):
        return kept, refused
    budget, text_left = [caps["images"], caps["image_bytes"]], max(_TEXT_TOTAL, caps["text"])
    for entry in entries[: caps["images"] + _MORE_ENTRIES]:
        mime = entry.get("mime") if isinstance(entry, dict) else None
        if not isinstance(mime, str) or not isinstance(entry, dict):
            refused.append("a malformed output was refused")
        elif mime == "image/png":
            found = _png(entry.get("data"), budget)
            (kept.append(found) if isinstance(found, RichOutput) else refused.append(found))
        elif mime in _TEXT_MIMES and isinstance(entry.get("data"), str):
            text = _text(entry["data"], caps["text"] + 64)
            if len(text) > text_left:
                refused.append("a text output beyond this call's total for text was refused")
                continue
            text_left -= len(text)
            kept.append(RichOutput(mime, text, note=entry.get("note") is True and mime == "text/plain"))
        else:
            refused.append(f"an output of type {mime[:60]!r} was refused")
    if len(entries) > caps["images"] + _MORE_ENTRIES:
        refused.append(f"{len(entries) - caps['images'] - _MORE_ENTRIES} more outputs were not shown")
    return kept, refused


def _error(value: object) -> PythonError | None:
    if not isinstance(value, dict):
        return None
    return PythonError(
        _text(value.get("type"), _MAX_ERROR_TYPE) or "Exception",
        _text(value.get("message"), _MAX_MESSAGE),
        _text(value.get("traceback"), _MAX_TRACEBACK),
    )


def decode_result(
    payload: bytes, call_id: int, caps: dict[str, int]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The agent's summary (type-checked; AgentFailure if it is not one) and the outcome fields
    the interpreter's answer gives (empty when there is none)."""
    line, _, raw = payload.partition(b"\n")
    try:
        summary = json.loads(line)
    except (ValueError, RecursionError):
        summary = None
    if not isinstance(summary, dict):  # the code ran: a failure, never a reason to run it again
        raise AgentFailure("the sandbox agent sent a malformed result")
    fields: dict[str, Any] = {
        "interrupted": summary.get("interrupted") is True,
        "deadline_hit": summary.get("deadline_hit") is True,
        "new_interpreter": summary.get("new") is True,
        "previous_end": _end(summary.get("previous")),
        "end": _end(summary.get("ended")),
        "stdout_bytes": _int(summary.get("stdout_bytes")) or 0,
        "stderr_bytes": _int(summary.get("stderr_bytes")) or 0,
        "memory_kb": _int(summary.get("rss_kb")),
        "oom_kills": _int(summary.get("oom_kills")),
    }
    if fields["end"] is not None:
        fields["exit_code"] = fields["end"].exit_code
    if not raw or fields["end"] is not None:
        return fields, {}
    return fields, _answer(raw, call_id, caps)


def _answer(raw: bytes, call_id: int, caps: dict[str, int]) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):  # deep nesting is no answer either
        answer = None
    if not isinstance(answer, dict) or answer.get("id") != call_id:
        broken = PythonError("InterpreterError", "the interpreter's answer was malformed", "")
        return {"error": broken}
    rich, refused = _rich(answer.get("rich"), caps)
    value = answer.get("value")
    return {
        "value": _text(value, caps["value"] + 64) if isinstance(value, str) else None,
        "error": _error(answer.get("error")),
        "rich": tuple(rich),
        "refused": tuple(refused),
    }
