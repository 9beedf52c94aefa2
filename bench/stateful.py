"""Stateful calls: `x += 1` in run_python's kept interpreter against execute_python running the same
work in a new process each call, one principal, one MCP session each, side by side in one run."""

from __future__ import annotations

import time
from typing import Any

import anyio

from bench.calls import CALL_TIMEOUT_S, session
from bench.gateways import AuditTail, BenchGateway
from bench.stats import Series

__all__ = ["KEPT", "NEW_PROCESS", "STATEFUL", "stateful_calls"]

STATEFUL = "x += 1"
KEPT = "run_python (kept interpreter)"
NEW_PROCESS = "execute_python (new process)"


async def _one(client: Any, tool: str, arguments: dict[str, Any], expected: str, series: Series) -> None:
    started = time.perf_counter()
    try:
        with anyio.fail_after(CALL_TIMEOUT_S):
            result = await client.call_tool(tool, arguments)
    except Exception as exc:  # noqa: BLE001 - counted as this row's error
        series.error(f"{type(exc).__name__}: {exc}")
        return
    elapsed = (time.perf_counter() - started) * 1000
    content: dict[str, Any] = result.structured_content or {}
    got = content.get("value") if tool == "run_python" else content.get("stdout")
    if result.is_error or got != expected:
        series.error(f"unexpected answer: {str(got)[:100]!r}")
        return
    series.latencies_ms.append(elapsed)


async def stateful_calls(gateway: BenchGateway, tail: AuditTail, token: str, samples: int) -> list[Series]:
    """`samples` calls each way; each run_python call checks that x went up by exactly one."""
    kept, fresh = Series(STATEFUL, KEPT), Series(STATEFUL, NEW_PROCESS)
    try:
        async with session(gateway.url, token) as client:
            await _one(client, "run_python", {"code": "x = 0\nx"}, "0", Series("", "warm-up"))
            mark = tail.mark()
            started = time.perf_counter()
            for count in range(1, samples + 1):
                await _one(client, "run_python", {"code": "x += 1\nx"}, str(count), kept)
            kept.wall_s = time.perf_counter() - started
            kept.inner_ms = tail.durations("python", mark)
            code = {"code": "x = 0\nx += 1\nprint(x)"}
            for _ in range(3):
                await _one(client, "execute_python", code, "1\n", Series("", "warm-up"))
            mark = tail.mark()
            started = time.perf_counter()
            for _ in range(samples):
                await _one(client, "execute_python", code, "1\n", fresh)
            fresh.wall_s = time.perf_counter() - started
            fresh.inner_ms = tail.durations("exec", mark)
    except Exception as exc:  # noqa: BLE001 - reported as an error of these rows
        kept.error(f"session: {type(exc).__name__}: {exc}")
    return [kept, fresh]
