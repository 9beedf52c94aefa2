"""The MCP server: the SDK's, with the gateway's tools, recording the calls it refuses itself."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, cast

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from pydantic import ValidationError

from gateway import __version__
from gateway.calls.service import ExecutionService
from gateway.config import Settings
from gateway.http.caller import principal_of, source_ip
from gateway.http.tools import register_tools
from gateway.stages import StageAttributes, record_tool

__all__ = ["AuditedMCPServer", "build_mcp_server"]

_INSTRUCTIONS = (
    "Sandbox Gateway runs your code in a private, isolated sandbox with no network access. "
    "Files in /workspace persist between your calls. Limits come from your policy profile."
)
#: A refused argument is recorded by name and error type, and at most this many of them.
_MAX_INVALID = 16


class AuditedMCPServer(MCPServer[Any]):
    """The SDK's server, recording the tool calls it refuses before any handler runs: arguments
    that fail the tool's input schema (`invalid-argument`) and unknown tools (`unknown-tool`).

    Only argument names and pydantic error types are recorded, never the values (they are the
    caller's data: code, file content).
    """

    def __init__(self, name: str, *, service: ExecutionService, **settings: Any) -> None:
        super().__init__(name, middleware=[StageAttributes()], **settings)
        self.service = service

    def add_tool(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Register a tool whose own code is timed (its start and return mark the call's stages)."""
        super().add_tool(record_tool(fn), *args, **kwargs)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> Any:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if context is not None and not isinstance(exc, UnexpectedToolError):
                await self._record(name, exc, context)
            raise

    async def _record(self, name: str, exc: ToolError, ctx: Context[Any, Any]) -> None:
        tool = name[:128]
        if isinstance(exc.__cause__, ValidationError):
            invalid = [
                {"field": ".".join(map(str, error["loc"]))[:128], "error": error["type"]}
                for error in exc.__cause__.errors()[:_MAX_INVALID]
            ]
            code, detail = "invalid-argument", {"invalid": invalid}
        elif exc.__cause__ is None and name not in {t.name for t in await self.list_tools()}:
            code, detail = "unknown-tool", {}
        else:
            return  # raised by the tool itself, which recorded it
        self.service.record_rejection(principal_of(ctx), tool, code, source_ip=source_ip(ctx), **detail)


def build_mcp_server(settings: Settings, service: ExecutionService) -> AuditedMCPServer:
    """The server with the gateway's tools, and the skills and tools folders' files as resources."""
    log_level = cast(Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], settings.log_level)
    mcp = AuditedMCPServer(
        "sandbox-gateway",
        service=service,
        version=__version__,
        instructions=_INSTRUCTIONS,
        log_level=log_level,
    )
    register_tools(mcp, service, skills_dir=settings.skills_path, tools_dir=settings.tools_path)
    return mcp
