"""The MCP tools. Each resolves the caller from the authenticated request, never from arguments."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from audit import AuditWriteError
from gateway.calls.library import Library, LibraryListing
from gateway.calls.results import (
    AdminPolicy,
    AdminSandboxes,
    ExecResult,
    FileContent,
    FileList,
    FileWritten,
    ResetResult,
    SandboxInfo,
)
from gateway.calls.service import ExecutionService
from gateway.errors import GatewayError
from gateway.http.caller import principal_of, source_ip, wants_progress
from gateway.http.python_tool import register_run_python
from policy import Principal

__all__ = ["register_tools"]

_log = logging.getLogger("sandbox_gateway.tools")
T = TypeVar("T")

Timeout = Annotated[
    float | None,
    Field(description="Seconds before the command is stopped; at most the profile's maximum (default 30)"),
]


def _principal(
    service: ExecutionService, ctx: Context[Any, Any], tool: str, needs: str = "sandbox:exec"
) -> Principal:
    """The authenticated caller, if its credential carries the scope this tool needs; a refusal is
    recorded (`tool.rejected`) with its code."""
    principal = principal_of(ctx)
    if principal is None:
        service.record_rejection(None, tool, "unauthenticated", source_ip=source_ip(ctx))
        raise ToolError("unauthenticated: no principal on this request")
    if needs not in principal.scopes:
        service.record_rejection(principal, tool, "insufficient-scope", source_ip=source_ip(ctx), scope=needs)
        raise ToolError(f"insufficient-scope: this tool needs the {needs} scope, which the credential lacks")
    return principal


async def _guarded(tool: str, principal: Principal, call: Awaitable[T]) -> T:
    """Map gateway errors to tool errors with a stable code; never leak internals to the client."""
    try:
        return await call
    except GatewayError as exc:
        raise ToolError(f"{exc.code}: {exc.message}") from exc
    except AuditWriteError as exc:
        raise ToolError("audit-unavailable: the audit log cannot be written, so nothing was run") from exc
    except Exception as exc:
        _log.exception("tool %s failed for principal %s", tool, principal.id)
        raise ToolError("internal-error: the gateway failed to run this call; it has been logged") from exc


async def _run(
    service: ExecutionService, ctx: Context[Any, Any], tool: str, code: str, timeout_s: float | None
) -> ExecResult:
    principal = _principal(service, ctx, tool)

    async def progress(output_bytes: float, latest: str) -> None:
        # A no-op unless the client sent a progress token with this call.
        await ctx.report_progress(output_bytes, None, latest)

    relay = progress if wants_progress(ctx) else None
    call = service.execute(principal, tool, code, timeout_s, source_ip=source_ip(ctx), on_progress=relay)
    return await _guarded(tool, principal, call)


def register_tools(
    mcp: MCPServer[Any],
    service: ExecutionService,
    *,
    skills_dir: Path | None = None,
    tools_dir: Path | None = None,
) -> None:
    """Add the gateway's tools to `mcp`; each profile names which of them its principals may call."""

    @mcp.tool(
        name="execute_bash",
        description=(
            "Run a bash command in your own sandbox (no network, read-only root filesystem; "
            "/workspace and /tmp are writable and persist between your calls). Returns exit_code, "
            "stdout, stderr, duration_ms, timed_out and truncated."
        ),
        structured_output=True,
    )
    async def execute_bash(
        command: Annotated[str, Field(description="The bash command or script to run")],
        ctx: Context[Any, Any],
        timeout_s: Timeout = None,
    ) -> ExecResult:
        return await _run(service, ctx, "execute_bash", command, timeout_s)

    @mcp.tool(
        name="execute_python",
        description=(
            "Run Python 3 code in your own sandbox (same sandbox and files as execute_bash; no network). "
            "Print what you want back. "
            "Returns exit_code, stdout, stderr, duration_ms, timed_out and truncated."
        ),
        structured_output=True,
    )
    async def execute_python(
        code: Annotated[str, Field(description="Python source code, run as __main__")],
        ctx: Context[Any, Any],
        timeout_s: Timeout = None,
    ) -> ExecResult:
        return await _run(service, ctx, "execute_python", code, timeout_s)

    register_run_python(mcp, service, _principal, _guarded)

    @mcp.tool(
        name="sandbox_info",
        description=(
            "Your profile and effective limits (CPU, memory, writable paths and sizes, timeouts, "
            "output caps, rates) and your sandbox's state and time left."
        ),
        structured_output=True,
    )
    async def sandbox_info(ctx: Context[Any, Any]) -> SandboxInfo:
        principal = _principal(service, ctx, "sandbox_info")
        return await _guarded("sandbox_info", principal, service.info(principal, source_ip=source_ip(ctx)))

    @mcp.tool(
        name="reset_sandbox",
        description="Throw away your sandbox and its files; your next call starts in a fresh one.",
        structured_output=True,
    )
    async def reset_sandbox(ctx: Context[Any, Any]) -> ResetResult:
        principal = _principal(service, ctx, "reset_sandbox")
        return await _guarded("reset_sandbox", principal, service.reset(principal, source_ip=source_ip(ctx)))

    @mcp.tool(
        name="admin_list_sandboxes",
        description="List the live sandboxes of your tenant (needs the sandbox:admin scope).",
        structured_output=True,
    )
    async def admin_list_sandboxes(ctx: Context[Any, Any]) -> AdminSandboxes:
        principal = _principal(service, ctx, "admin_list_sandboxes", needs="sandbox:admin")
        return await _guarded(
            "admin_list_sandboxes", principal, service.admin_list(principal, source_ip=source_ip(ctx))
        )

    @mcp.tool(
        name="admin_remove_sandbox",
        description="Remove the sandbox of a principal of your tenant (needs the sandbox:admin scope).",
        structured_output=True,
    )
    async def admin_remove_sandbox(
        principal: Annotated[
            str, Field(description="The principal (of your tenant) whose sandbox to remove")
        ],
        ctx: Context[Any, Any],
    ) -> ResetResult:
        caller = _principal(service, ctx, "admin_remove_sandbox", needs="sandbox:admin")
        call = service.admin_remove(caller, principal, source_ip=source_ip(ctx))
        return await _guarded("admin_remove_sandbox", caller, call)

    @mcp.tool(
        name="admin_policy",
        description=(
            "The policy in force: its digest and each profile's limits; given principal and tool, the "
            "Decision for that principal of your tenant, with reasons (needs the sandbox:admin scope)."
        ),
        structured_output=True,
    )
    async def admin_policy(
        ctx: Context[Any, Any],
        principal: Annotated[
            str | None, Field(description="A principal of your tenant whose Decision to explain")
        ] = None,
        tool: Annotated[str | None, Field(description="The tool to explain the Decision for")] = None,
    ) -> AdminPolicy:
        caller = _principal(service, ctx, "admin_policy", needs="sandbox:admin")
        call = service.admin_policy(caller, principal, tool, source_ip=source_ip(ctx))
        return await _guarded("admin_policy", caller, call)

    @mcp.tool(
        name="write_file",
        description="Create or replace a file under /workspace (content as UTF-8 text or base64).",
        structured_output=True,
    )
    async def write_file(
        path: Annotated[str, Field(description="A path under /workspace (relative paths start there)")],
        content: Annotated[str, Field(description="The file's content")],
        ctx: Context[Any, Any],
        encoding: Annotated[str, Field(description="utf-8 (default) or base64")] = "utf-8",
    ) -> FileWritten:
        principal = _principal(service, ctx, "write_file", needs="sandbox:files")
        call = service.write_file(principal, path, content, encoding, source_ip=source_ip(ctx))
        return await _guarded("write_file", principal, call)

    @mcp.tool(
        name="read_file",
        description="Read a file under /workspace; returns content, encoding, size and truncated.",
        structured_output=True,
    )
    async def read_file(
        path: Annotated[str, Field(description="A path under /workspace")],
        ctx: Context[Any, Any],
        encoding: Annotated[str, Field(description="utf-8 (default) or base64 for binary files")] = "utf-8",
        max_bytes: Annotated[int | None, Field(description="Return at most this many bytes")] = None,
    ) -> FileContent:
        principal = _principal(service, ctx, "read_file", needs="sandbox:files")
        call = service.read_file(principal, path, encoding, max_bytes, source_ip=source_ip(ctx))
        return await _guarded("read_file", principal, call)

    @mcp.tool(
        name="list_files",
        description="List a directory under /workspace (name, type and size of each entry).",
        structured_output=True,
    )
    async def list_files(
        ctx: Context[Any, Any],
        path: Annotated[str, Field(description="A directory under /workspace")] = "/workspace",
    ) -> FileList:
        principal = _principal(service, ctx, "list_files", needs="sandbox:files")
        return await _guarded(
            "list_files", principal, service.list_files(principal, path, source_ip=source_ip(ctx))
        )

    skills, tools = Library(skills_dir, "/skills", "skills"), Library(tools_dir, "/tools", "tools")

    @mcp.tool(
        name="list_skills",
        description="The helper modules under /skills (importable from sandbox code).",
        structured_output=True,
    )
    async def list_skills(ctx: Context[Any, Any]) -> LibraryListing:
        principal = _principal(service, ctx, "list_skills")
        return await _guarded("list_skills", principal, service.library(principal, "list_skills", skills))

    @mcp.tool(
        name="list_tools",
        description="The files under /tools (read-only, mounted in every sandbox).",
        structured_output=True,
    )
    async def list_tools(ctx: Context[Any, Any]) -> LibraryListing:
        principal = _principal(service, ctx, "list_tools")
        return await _guarded("list_tools", principal, service.library(principal, "list_tools", tools))

    for library in (skills, tools):
        for path in library.files():
            _publish(mcp, library, path.relative_to(library.root.resolve()).as_posix())  # type: ignore[union-attr]


def _publish(mcp: MCPServer[Any], library: Library, relative: str) -> None:
    def read() -> str:
        return library.read(relative)

    mcp.resource(
        f"{library.scheme}:///{relative}",
        name=f"{library.mount}/{relative}",
        mime_type="text/x-python" if relative.endswith(".py") else "text/plain",
    )(read)
