"""Output streaming: a command that writes 100 MB, through one call, under the profile's output cap.

The cap applies as it always does: the call returns the first `MAX_OUTPUT` bytes and
`truncated: true`, and the gateway reads the rest to the command's end without keeping it. Each call
is checked on both ends: its result holds exactly the capped prefix, and its `exec.finish` audit
event counts every byte the command wrote, so a call that stopped reading early is an error, not a
fast sample. Throughput is the command's output over the call's end-to-end time.
"""

from __future__ import annotations

import math
import time
from typing import Any

from mcp import Client
from mcp.types import CallToolResult

from bench.calls import session, timed
from bench.gateways import MAX_OUTPUT, AuditTail, BenchGateway
from bench.stats import Series
from policy.units import parse_size
from tests.support import EventuallyFailed, eventually_async, matching

__all__ = [
    "COMMAND",
    "KEPT_BYTES",
    "STREAM",
    "STREAM_BYTES",
    "mb_per_s",
    "stream_calls",
    "stream_problem",
    "stream_samples",
]

STREAM_BYTES = 100_000_000
STREAM = "100 MB output, cap applies"
COMMAND = f"head -c {STREAM_BYTES} /dev/zero | tr '\\0' a"
#: What a call returns of it: the first bytes, up to the benchmark profile's cap.
KEPT_BYTES = parse_size(MAX_OUTPUT)


def stream_samples(samples: int) -> int:
    """Calls in the streaming row: each moves 100 MB, so a tenth of the warm rows' (2 to 20)."""
    return min(20, max(2, samples // 10))


def mb_per_s(p50_ms: float) -> float:
    """The command's output (MB, 10^6 bytes) per second of a call that took `p50_ms`."""
    return STREAM_BYTES / 1e6 / (p50_ms / 1000) if p50_ms > 0 else math.nan


def stream_problem(content: dict[str, Any], is_error: bool) -> str | None:
    """Why a streaming call's result is not the capped prefix of 100 MB of `a`, or None."""
    if is_error:
        return "tool error"
    if content.get("exit_code") != 0:
        return f"exit code {content.get('exit_code')}: {str(content.get('stderr'))[:200]}"
    stdout = str(content.get("stdout", ""))
    if content.get("truncated") is not True or len(stdout) != KEPT_BYTES or stdout.strip("a"):
        return f"not the capped prefix: {len(stdout)} chars, truncated={content.get('truncated')}"
    return None


async def stream_calls(
    gateway: BenchGateway, tail: AuditTail, token: str, variant: str, samples: int
) -> Series:
    """`samples` calls writing 100 MB each from a principal whose sandbox is running."""
    series = Series(STREAM, variant)
    try:
        async with session(gateway.url, token) as client:
            await _call(client, Series(STREAM, "warm-up"))
            mark = tail.mark()
            started = time.perf_counter()
            for _ in range(samples):
                await _call(client, series)
            series.wall_s = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - reported as an error of this row
        series.error(f"session: {type(exc).__name__}: {exc}")
        return series
    await _check_counted(tail, mark, samples, series)
    series.inner_ms = tail.durations("exec", mark)
    return series


async def _call(client: Client, series: Series) -> None:
    def check(result: CallToolResult) -> str | None:
        return stream_problem(result.structured_content or {}, result.is_error)

    await timed(client, "execute_bash", {"command": COMMAND}, None, series, check=check)


async def _check_counted(tail: AuditTail, mark: int, samples: int, series: Series) -> None:
    """Every timed call's `exec.finish` (written just after its answer) counts all 100 MB."""

    def finished() -> list[Any]:
        tail.poll()
        counted = [e["outcome"].get("stdout_bytes") for e in matching(tail.events[mark:], "exec.finish")]
        if len(counted) < samples:
            raise AssertionError(f"{len(counted)} of {samples} exec.finish events")
        return counted

    try:
        counted = await eventually_async(finished, timeout_s=30)
    except EventuallyFailed as exc:
        series.error(str(exc))
        return
    short = [n for n in counted if n != STREAM_BYTES]
    if short:
        series.error(f"the audit log counts {short[:3]} bytes written where the command wrote {STREAM_BYTES}")
        series.latencies_ms.clear()
