"""What the upstream clients hand the gateway: tools as listed, results as JSON-ready values."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mcp_types import CallToolResult, Tool

from gateway.errors import UpstreamFailed

__all__ = ["UpstreamResult", "UpstreamTool", "result_of", "tool_of"]


@dataclass(frozen=True)
class UpstreamTool:
    """One tool an upstream server lists and the upstreams file exposes."""

    server: str
    name: str
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None


@dataclass(frozen=True)
class UpstreamResult:
    """A tool's result. `is_error` results are returned, not raised: the tool ran and said it failed.

    `content` holds the MCP content blocks as JSON, `text` the text blocks joined by newlines, and
    `size` the bytes of the result as compact UTF-8 JSON (`{"content", "structuredContent", "isError"}`).
    """

    is_error: bool
    content: list[dict[str, Any]]
    structured: dict[str, Any] | None
    text: str
    size: int


def tool_of(server: str, tool: Tool) -> UpstreamTool:
    return UpstreamTool(
        server=server,
        name=tool.name,
        description=tool.description or "",
        input_schema=dict(tool.input_schema),
        output_schema=dict(tool.output_schema) if tool.output_schema is not None else None,
    )


def result_of(server: str, tool: str, result: CallToolResult, *, max_bytes: int) -> UpstreamResult:
    """The result as JSON values; UpstreamFailed when its JSON is larger than `max_bytes`."""
    content = [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]
    structured = result.structured_content
    if structured is not None and not isinstance(structured, dict):
        raise UpstreamFailed(
            f"upstream {server}: tool {tool} returned structured content that is not an object"
        )
    encoded = json.dumps(
        {"content": content, "structuredContent": structured, "isError": bool(result.is_error)},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8", errors="surrogatepass")
    if len(encoded) > max_bytes:
        raise UpstreamFailed(
            f"upstream {server}: tool {tool} returned {len(encoded)} bytes, more than the {max_bytes} allowed"
        )
    text = "\n".join(block["text"] for block in content if block.get("type") == "text")
    return UpstreamResult(
        is_error=bool(result.is_error), content=content, structured=structured, text=text, size=len(encoded)
    )
