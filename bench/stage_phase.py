"""The per-stage breakdown, live: a gateway of its own with its spans exported to the benchmark.

The headline gateways run without an exporter, so their figures stay comparable from run to run;
this one exports every span (OTLP/HTTP, a batch every 200 ms) to a `TraceReceiver` in this process,
which costs it some time of its own, hence its own end-to-end figures. Each timed call carries a
`traceparent` made here in its `_meta`, so its SERVER span is found by trace id.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
from mcp import Client
from mcp_types import RequestParamsMeta

from bench.calls import CALL_TIMEOUT_S, problem, session
from bench.gateways import PROFILE, BenchGateway, start_gateway
from bench.otlp import SERVER, SpanRecord, TraceReceiver
from bench.stages import join, summarise

__all__ = ["SPANS_NOTE", "STAGE_WORKLOADS", "span_env", "stage_breakdown", "start_stage_gateway"]

#: title -> (principal, tool, arguments, expected stdout or None)
STAGE_WORKLOADS: dict[str, tuple[str, str, dict[str, Any], str | None]] = {
    "execute_bash true": ("stage-true", "execute_bash", {"command": "true"}, ""),
    "sandbox_info": ("stage-info", "sandbox_info", {}, None),
}
SPANS_NOTE = (
    "spans on: these calls went to a separate gateway (fast path, no warm pool) that exports its "
    "spans over OTLP/HTTP to the benchmark's receiver (batches every 200 ms); the headline rows come "
    "from gateways without an exporter"
)
#: Time for the last batch of spans to arrive after the last call.
SPAN_WAIT_S = 15


def span_env(endpoint: str) -> dict[str, str]:
    """Traces only (no metrics or log export), to `endpoint`, in short batches."""
    return {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"}


def start_stage_gateway(
    workdir: Path, receiver: TraceReceiver, *, gateway_id: str, docker_host: str
) -> BenchGateway:
    principals = {principal: PROFILE for principal, *_ in STAGE_WORKLOADS.values()}
    return start_gateway(
        workdir,
        label="agent, spans exported",
        exec_path="agent",
        warm_pool=0,
        principals=principals,
        gateway_id=gateway_id,
        docker_host=docker_host,
        env=span_env(receiver.endpoint),
    )


def traceparent() -> tuple[str, RequestParamsMeta]:
    """A new sampled trace: its id and the `_meta` that carries it (W3C trace context)."""
    trace_id = secrets.token_hex(16)
    meta = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
    return trace_id, cast("RequestParamsMeta", meta)  # an open map: extra keys are allowed


async def traced_calls(
    client: Client, tool: str, arguments: dict[str, Any], expected: str | None, samples: int
) -> tuple[dict[str, float], list[str]]:
    """`samples` calls, each in a trace of its own: {trace id: end to end µs} of those that answered
    as expected, and the errors of the others."""
    calls: dict[str, float] = {}
    errors: list[str] = []
    for _ in range(samples):
        trace_id, meta = traceparent()
        started = time.perf_counter()
        try:
            with anyio.fail_after(CALL_TIMEOUT_S):
                result = await client.call_tool(tool, arguments, meta=meta)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            continue
        elapsed_us = (time.perf_counter() - started) * 1_000_000
        why = problem(result, expected)
        if why is None:
            calls[trace_id] = elapsed_us
        else:
            errors.append(why[:300])
    return calls, errors


def _arrived(tool: str, traces: set[str]) -> Any:
    name = f"tools/call {tool}"

    def done(spans: list[SpanRecord]) -> bool:
        return traces <= {span.trace_id for span in spans if span.name == name and span.kind == SERVER}

    return done


async def stage_breakdown(gateway: BenchGateway, receiver: TraceReceiver, samples: int) -> dict[str, Any]:
    """{title: summary} for each stage workload (see `bench.stages.summarise`), plus errors."""
    out: dict[str, Any] = {}
    for title, (principal, tool, arguments, expected) in STAGE_WORKLOADS.items():
        errors: list[str] = []
        calls: dict[str, float] = {}
        try:
            async with session(gateway.url, gateway.tokens[principal]) as client:
                for _ in range(3):  # the first makes the sandbox; the rest warm both ends up
                    _, warm_errors = await traced_calls(client, tool, arguments, expected, 1)
                    errors += [f"warm-up: {message}" for message in warm_errors]
                calls, timed_errors = await traced_calls(client, tool, arguments, expected, samples)
                errors += timed_errors
        except Exception as exc:  # noqa: BLE001 - reported as an error of this breakdown
            errors.append(f"session: {type(exc).__name__}: {exc}"[:300])
        await anyio.to_thread.run_sync(receiver.wait_for, _arrived(tool, set(calls)), SPAN_WAIT_S)
        matched, missing = join(receiver.spans(), tool, calls)
        summary = summarise(matched, missing)
        summary |= {"tool": tool, "errors": len(errors), "error_samples": sorted(set(errors))[:5]}
        out[title] = summary
    return out
