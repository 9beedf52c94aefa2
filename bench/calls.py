"""Measurements through a real MCP client over streamable HTTP, one MCP session per principal.

Only the tool call is timed. The session is set up before the clock starts: initialize, then
tools/list, as an agent host does before its model can call a tool (the SDK client would otherwise
list the tools inside the first call, to validate its structured result).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult

from bench.cpu import CpuWindow
from bench.gateways import AuditTail, BenchGateway
from bench.stats import Series, percentile
from tests.support import eventually_async

__all__ = ["WORKLOADS", "bystander", "first_calls", "info_calls", "throughput", "warm_calls"]

#: workload -> (command, expected stdout)
WORKLOADS: dict[str, tuple[str, str]] = {
    "true": ("true", ""),
    "python3 -c 'print(1)'": ("python3 -c 'print(1)'", "1\n"),
    "1 MB output": ("head -c 1000000 /dev/zero | tr '\\0' a", "a" * 1_000_000),
}
#: Bound on any single call, so a hung call becomes an error instead of a hung benchmark.
CALL_TIMEOUT_S = 60


@asynccontextmanager
async def session(url: str, token: str) -> AsyncIterator[Client]:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        await client.list_tools()
        yield client


def problem(result: CallToolResult, expected_stdout: str | None) -> str | None:
    """Why a call's result is not the expected one, or None."""
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content)
        return f"tool error: {text}"
    if expected_stdout is None:
        return None
    content: dict[str, Any] = result.structured_content or {}
    if content.get("exit_code") != 0:
        return f"exit code {content.get('exit_code')}: {str(content.get('stderr'))[:200]}"
    if content.get("stdout") != expected_stdout or content.get("truncated"):
        size = len(str(content.get("stdout")))
        return f"unexpected stdout ({size} chars, truncated={content.get('truncated')})"
    return None


async def timed(
    client: Client, tool: str, arguments: dict[str, Any], expected: str | None, series: Series, *,
    check: Callable[[CallToolResult], str | None] | None = None,
) -> None:  # fmt: skip
    """One call; its latency goes to the series when it answered as expected (`check`, when given,
    says why not instead of `problem`), else an error."""
    started = time.perf_counter()
    try:
        with anyio.fail_after(CALL_TIMEOUT_S):
            result = await client.call_tool(tool, arguments)
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported, none stops the run
        series.error(f"{type(exc).__name__}: {exc}")
        return
    elapsed = (time.perf_counter() - started) * 1000
    why = check(result) if check is not None else problem(result, expected)
    if why is not None:
        series.error(why)
        return
    series.latencies_ms.append(elapsed)


def _p50(values: list[float]) -> str:
    ordered = sorted(values)
    return f"{percentile(ordered, 50):.1f}" if ordered else "-"


async def warm_calls(
    gateway: BenchGateway, tail: AuditTail, token: str, workload: str, *, variant: str, samples: int
) -> Series:
    """`samples` calls of one workload by a principal whose sandbox is already running."""
    series = Series(workload, variant)
    command, expected = WORKLOADS[workload]
    arguments = {"command": command}
    try:
        async with session(gateway.url, token) as client:
            for _ in range(3):  # the first takes the sandbox; the rest warm both ends up
                await timed(client, "execute_bash", arguments, expected, Series(workload, "warm-up"))
            mark = tail.mark()
            started = time.perf_counter()
            for _ in range(samples):
                await timed(client, "execute_bash", arguments, expected, series)
            series.wall_s = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - reported as an error of this row
        series.error(f"session: {type(exc).__name__}: {exc}")
        return series
    series.inner_ms = tail.durations("exec", mark)
    return series


async def info_calls(gateway: BenchGateway, token: str, variant: str, samples: int) -> Series:
    """`sandbox_info`: auth, policy, audit and MCP over HTTP, but no engine call."""
    series = Series("sandbox_info (no engine call)", variant)
    try:
        async with session(gateway.url, token) as client:
            for _ in range(3):
                await timed(client, "sandbox_info", {}, None, Series("", "warm-up"))
            started = time.perf_counter()
            for _ in range(samples):
                await timed(client, "sandbox_info", {}, None, series)
            series.wall_s = time.perf_counter() - started
    except Exception as exc:  # noqa: BLE001 - reported as an error of this row
        series.error(f"session: {type(exc).__name__}: {exc}")
    return series


async def first_calls(
    gateway: BenchGateway, tail: AuditTail, tokens: list[str], variant: str, *, pool: bool
) -> Series:
    """One `true` by each new principal (its first call ever), timed after initialize.

    With a warm pool, each sample starts only when the pool is full again, as for principals that
    arrive no faster than the pool refills; the principal's sandbox is reset afterwards, so sandboxes
    do not pile up on the engine."""
    series = Series("first call (new principal)", variant)
    pooled, mark = 0, tail.mark()
    started = time.perf_counter()
    for token in tokens:
        if pool:
            await tail.wait_pool_ready(gateway.warm_pool)
        assigned_before = tail.assigned()
        try:
            async with session(gateway.url, token) as client:
                await timed(client, "execute_bash", {"command": "true"}, "", series)
                await client.call_tool("reset_sandbox", {})
        except Exception as exc:  # noqa: BLE001 - reported as an error of this row
            series.error(f"session: {type(exc).__name__}: {exc}")
        pooled += tail.assigned() - assigned_before
    series.wall_s = time.perf_counter() - started
    series.inner_ms = tail.durations("exec", mark)
    if pool:
        steps = f"docker.rename p50 {_p50(tail.durations('rename', mark))} ms"
    else:
        ops = ["create", "start"] + (["attach"] if gateway.exec_path == "agent" else [])
        steps = ", ".join(f"docker.{op} p50 {_p50(tail.durations(op, mark))} ms" for op in ops)
    series.note = f"{pooled}/{len(tokens)} from the warm pool; {steps}"
    return series


async def throughput(
    gateway: BenchGateway, tail: AuditTail, tokens: list[str], *, calls_each: int, workload: str, variant: str
) -> Series:
    """Every principal its own session, `true` in a loop; the clock runs from when all are ready
    (session open, sandbox running after one untimed call) until the last call answers. The
    machine's CPU is read over the same window (bench/cpu.py)."""
    series = Series(workload, variant)
    ready, all_ready, go = 0, anyio.Event(), anyio.Event()

    def arrived() -> None:
        nonlocal ready
        ready += 1
        if ready == len(tokens):
            all_ready.set()

    async def principal(token: str) -> None:
        counted = False
        try:
            async with session(gateway.url, token) as client:
                await timed(client, "execute_bash", {"command": "true"}, "", series_warmup)
                arrived()
                counted = True
                await go.wait()
                for _ in range(calls_each):
                    await timed(client, "execute_bash", {"command": "true"}, "", series)
        except Exception as exc:  # noqa: BLE001 - reported as an error of this row
            series.error(f"session: {type(exc).__name__}: {exc}")
        finally:
            if not counted:
                arrived()

    series_warmup = Series(workload, "warm-up")
    cpu = CpuWindow(gateway.server.process.pid)
    async with anyio.create_task_group() as tasks:
        for token in tokens:
            tasks.start_soon(principal, token)
        await all_ready.wait()
        mark = tail.mark()
        cpu.start()
        started = time.perf_counter()
        go.set()
    series.wall_s = time.perf_counter() - started
    cpu.stop(len(series.latencies_ms) + len(series.errors))
    series.cpu_ms = cpu.per_call_ms
    series.inner_ms = tail.durations("exec", mark)
    for message in series_warmup.errors:
        series.error(f"first call: {message}")
    return series


#: What each neighbour's calls run, over and over while the bystander is measured: a long command.
NEIGHBOUR_COMMAND = "sleep 10"


async def neighbours_running(gateway: BenchGateway, count: int, timeout_s: float = 120) -> None:
    """Until the gateway says (on /ready) that at least `count` calls are running."""
    async with httpx.AsyncClient(timeout=10) as http:

        async def running() -> bool:
            body = (await http.get(f"{gateway.server.base}/ready")).json()
            return bool((body.get("executions") or {}).get("running", 0) >= count)

        await eventually_async(
            running, timeout_s=timeout_s, interval_s=0.05, message=f"{count} calls were not running"
        )


async def bystander(
    gateway: BenchGateway,
    token: str,
    neighbours: list[str],
    *,
    per_neighbour: int,
    samples: int,
    variants: tuple[Series, Series],
) -> None:
    """A bystander's `true`: `samples` calls with every neighbour idle, then `samples` calls while
    each neighbour runs `per_neighbour` long commands at once (its max_concurrent) without a pause.
    Both rows come from the same gateway and the same bystander session, one after the other."""
    alone, loaded = variants
    stop = anyio.Event()

    async def neighbour(token: str) -> None:
        async with session(gateway.url, token) as client:

            async def keep_busy() -> None:
                while not stop.is_set():
                    await timed(client, "execute_bash", {"command": NEIGHBOUR_COMMAND}, "", noise)

            async with anyio.create_task_group() as calls:
                for _ in range(per_neighbour):
                    calls.start_soon(keep_busy)

    noise = Series("neighbours", "noise")
    try:
        async with session(gateway.url, token) as client:
            for _ in range(3):
                await timed(client, "execute_bash", {"command": "true"}, "", Series("", "warm-up"))
            started = time.perf_counter()
            for _ in range(samples):
                await timed(client, "execute_bash", {"command": "true"}, "", alone)
            alone.wall_s = time.perf_counter() - started
            async with anyio.create_task_group() as load:
                for one in neighbours:
                    load.start_soon(neighbour, one)
                try:
                    await neighbours_running(gateway, len(neighbours) * per_neighbour)
                    started = time.perf_counter()
                    for _ in range(samples):
                        await timed(client, "execute_bash", {"command": "true"}, "", loaded)
                    loaded.wall_s = time.perf_counter() - started
                finally:
                    stop.set()  # each neighbour's current command ends; none starts again
    except Exception as exc:  # noqa: BLE001 - reported as an error of this row
        loaded.error(f"{type(exc).__name__}: {exc}")
    for message in noise.errors:
        loaded.error(f"a neighbour's call: {message}")
    alone.note = "`true`"
    loaded.note = f"`true`; {len(neighbours)} neighbours x {per_neighbour} `{NEIGHBOUR_COMMAND}` running"
