"""A calculator over stdio, for the upstream-client tests: `add`, `multiply`, `stats`, and `pid`
(the server's process id, so a test can kill it)."""

from __future__ import annotations

import os
import statistics
from typing import Any

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel


class Stats(BaseModel):
    mean: float
    min: float
    max: float


def build_server() -> MCPServer[Any]:
    mcp: MCPServer[Any] = MCPServer("calc", version="1.0")

    @mcp.tool()
    def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    @mcp.tool()
    def multiply(a: float, b: float) -> float:
        """Multiply two numbers."""
        return a * b

    @mcp.tool()
    def stats(values: list[float]) -> Stats:
        """Mean, smallest and largest of a list of numbers."""
        return Stats(mean=statistics.fmean(values), min=min(values), max=max(values))

    @mcp.tool()
    def pid() -> int:
        """This server's process id."""
        return os.getpid()

    @mcp.tool()
    def environment() -> dict[str, str]:
        """The environment this server was started with."""
        return dict(os.environ)

    return mcp


if __name__ == "__main__":
    build_server().run("stdio")
