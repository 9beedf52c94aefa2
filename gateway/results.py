"""Wire models of tool results (pydantic: they become MCP structured content and output schemas)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["ExecResult"]


class ExecResult(BaseModel):
    """The bounded result of one command in the caller's sandbox."""

    exit_code: int | None = Field(description="Process exit status; null when it could not be read")
    stdout: str = Field(description="Standard output, UTF-8 (invalid bytes replaced), cut at the cap")
    stderr: str = Field(description="Standard error, UTF-8 (invalid bytes replaced), cut at the cap")
    duration_ms: float = Field(description="Wall-clock time of the call inside the gateway")
    timed_out: bool = Field(description="The command was stopped at its timeout")
    truncated: bool = Field(description="stdout or stderr exceeded the output cap and was cut")
