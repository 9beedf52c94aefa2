"""Code mode on the gateway's end of an agent channel: the tool calls a run makes, served while it
runs and cut off when it ends. What arrives is what the run's code wrote: the handler judges it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from gateway.backend.agent_calls import Call
from gateway.backend.base import ToolCallHandler

__all__ = ["serve_tool_calls"]

#: Tool calls of one run served at once (the agent lets no more than 8 wait per run).
TOOL_CALLS_AT_ONCE = 8
#: answer(connection, line): sends the answer for one call back to the agent.
Answer = Callable[[int, str], Awaitable[None]]


async def serve_tool_calls(
    call: Call, handler: ToolCallHandler, answer: Answer, deadline: float
) -> tuple[Any, bytes] | None:
    """Wait for the frame that ends `call` (None past `deadline`, a monotonic time), serving its tool
    calls meanwhile; the calls still in progress when it ends are cancelled."""
    calls = call.tool_calls
    if calls is None:
        return await call.ended(deadline - time.monotonic())
    serving = anyio.Semaphore(TOOL_CALLS_AT_ONCE)
    async with anyio.create_task_group() as tasks:

        async def serve() -> None:
            while True:
                message = await calls.get()
                await serving.acquire()
                tasks.start_soon(_answer_one, handler, answer, message, serving)

        tasks.start_soon(serve)
        end = await call.ended(deadline - time.monotonic())
        tasks.cancel_scope.cancel()
    return end


async def _answer_one(
    handler: ToolCallHandler, answer: Answer, message: bytes, serving: anyio.Semaphore
) -> None:
    try:
        conn_text, _, line = message.partition(b" ")
        if not (conn_text.isdigit() and len(conn_text) <= 9):
            return  # not what the agent sends: dropped
        await answer(int(conn_text), await handler(line))
    finally:
        serving.release()
