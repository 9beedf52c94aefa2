"""The run_python MCP tool: code in the caller's long-lived interpreter; images as image content."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import CallToolResult
from pydantic import Field

from gateway.calls.python_results import PythonResult, call_tool_result
from gateway.calls.service import ExecutionService
from gateway.http.caller import source_ip, wants_progress
from policy import Principal

__all__ = ["register_run_python"]

T = TypeVar("T")
#: tools.py's: the authenticated caller of a tool, and a call with its errors mapped for the client.
Resolve = Callable[[ExecutionService, Context[Any, Any], str], Principal]
Guard = Callable[[str, Principal, Awaitable[Any]], Awaitable[Any]]

_DESCRIPTION = (
    "Run Python 3 in your sandbox's long-lived interpreter, like a notebook cell: variables, imports "
    "and open files stay from one call to the next (until reset_sandbox, the profile's idle limit, or "
    "the interpreter's end, which the next call reports as state_lost). Returns stdout, stderr, the "
    "value of the last line if it is an expression, the exception with its traceback, and rich "
    "outputs: matplotlib figures as PNG images, DataFrames as Markdown tables. At the timeout the code "
    "gets KeyboardInterrupt and its variables survive; code that does not stop is killed. Same sandbox, "
    "files and network as execute_python."
)


def register_run_python(
    mcp: MCPServer[Any], service: ExecutionService, resolve: Resolve, guard: Guard
) -> None:
    """Add run_python to `mcp` (a profile lists it in `tools` to allow it)."""

    @mcp.tool(name="run_python", description=_DESCRIPTION, structured_output=True)
    async def run_python(
        code: Annotated[
            str, Field(description="Python source; the last line's value is shown, as in a REPL")
        ],
        ctx: Context[Any, Any],
        timeout_s: Annotated[
            float | None,
            Field(description="Seconds before the code is interrupted; at most the profile's maximum"),
        ] = None,
    ) -> Annotated[CallToolResult, PythonResult]:
        principal = resolve(service, ctx, "run_python")

        async def progress(output_bytes: float, latest: str) -> None:
            await ctx.report_progress(output_bytes, None, latest)

        relay = progress if wants_progress(ctx) else None
        call = service.run_python(principal, code, timeout_s, source_ip=source_ip(ctx), on_progress=relay)
        result, outcome = await guard("run_python", principal, call)
        return call_tool_result(result, outcome)
