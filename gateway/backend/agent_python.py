"""A run_python call over a sandbox's agent channel: the `py` request, its output, its RESULT.

The agent times the call itself (the interrupt at the timeout, the kill after the grace, its
deadline); the gateway keeps a deadline of its own on top, and kills the call when its caller goes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from gateway.agent.protocol import RESULT
from gateway.backend.agent_calls import GONE, failure
from gateway.backend.base import OutputCallback
from gateway.backend.interpreter_results import PythonOutcome, PythonRequest, decode_result
from gateway.errors import AgentCannotStart, AgentFailure, InterpreterBusy, InterpreterUnavailable

if TYPE_CHECKING:
    from gateway.backend.agent_channel import AgentChannel

__all__ = ["SLACK_S", "run_python"]

#: RESULTs up to this size are decoded on the event loop (a typical answer is a few hundred bytes);
#: bigger ones, which may hold images to check, on the sandbox's own thread.
_DECODE_INLINE = 4 * 1024
#: Beyond the agent's own deadline, how long the gateway waits before it gives up on the call.
SLACK_S = 2.0


def _request(call_id: int, request: PythonRequest) -> tuple[dict[str, Any], float]:
    deadline_s = request.timeout_s + request.interrupt_grace_s + request.grace_s
    body = {
        "op": "py",
        "id": call_id,
        "code": request.code,
        "env": request.env,
        "cwd": request.workdir,
        "timeout_s": request.timeout_s,
        "kill_after_s": request.interrupt_grace_s,
        "deadline_s": deadline_s,
        "max_output": request.max_output_bytes,
        "idle_s": request.idle_timeout_s,
        "caps": request.caps,
    }
    return body, deadline_s


async def run_python(
    channel: AgentChannel, request: PythonRequest, on_output: OutputCallback | None = None
) -> PythonOutcome:
    """Run `request.code` in the sandbox's interpreter; returns when the call ends, its deadline
    passes or the stream breaks (FAIL: AgentFailure and its kinds)."""
    async with channel.calling(request.max_output_bytes, on_output) as (call_id, call):
        started = time.monotonic()
        body, deadline_s = _request(call_id, request)
        await channel.send(body)
        try:
            end = await call.ended(deadline_s + SLACK_S)
        except BaseException:  # cancelled (the client went away): the code is interrupted, then ended,
            with anyio.CancelScope(shield=True):  # and the interpreter is free before the next call
                await channel.kill(call_id)
                await call.ended(request.interrupt_grace_s + SLACK_S)
            raise
        if end is None:  # the agent missed its deadline: it is told to end the call, and has its grace
            await channel.kill(call_id)
            end = await call.ended(request.interrupt_grace_s + SLACK_S)
    out, err = call.out, call.err
    common: dict[str, Any] = {
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "duration_ms": (time.monotonic() - started) * 1000,
    }
    if end is None or end[0] is GONE:
        fields: dict[str, Any] = {"deadline_hit": end is None, "sandbox_lost": end is not None}
        fields.update(stdout_bytes=out.total, stderr_bytes=err.total)
        return _outcome(common, fields, {}, request)
    kind, payload = end
    if kind == RESULT:  # a big answer is decoded on this sandbox's own thread, off the event loop
        if len(payload) > _DECODE_INLINE:
            decoded = await anyio.to_thread.run_sync(
                decode_result, payload, call_id, request.caps, limiter=channel.decoding
            )
        else:
            decoded = decode_result(payload, call_id, request.caps)
        fields, answer = decoded
        fields["stdout_bytes"] = max(out.total, fields["stdout_bytes"])
        fields["stderr_bytes"] = max(err.total, fields["stderr_bytes"])
        return _outcome(common, fields, answer, request)
    error, message = failure(payload)  # FAIL
    if error == "busy":
        raise InterpreterBusy("the sandbox's interpreter is still ending an earlier call of yours; retry")
    if error == "bad-request" and "unknown op" in message:
        raise InterpreterUnavailable(
            "this sandbox's image predates run_python; rebuild it (`sandbox-gateway setup`) and reset_sandbox"
        )
    raise (AgentCannotStart if error == "no-resources" else AgentFailure)(message)


def _outcome(
    common: dict[str, Any], fields: dict[str, Any], answer: dict[str, Any], request: PythonRequest
) -> PythonOutcome:
    totals = max(fields["stdout_bytes"], fields["stderr_bytes"])
    return PythonOutcome(**common, **fields, **answer, truncated=totals > request.max_output_bytes)
