"""Traces, audit events and metrics of real MCP calls over HTTP, read in-process."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from audit.chain import verify_lines
from audit.schema import AuditEvent
from gateway.stages import STAGES
from tests.conftest import FIRST_CALL_SPANS_POOLED
from tests.e2e.conftest import InProcessGateway, mcp_client
from tests.support import audit_events, eventually_async, matching

pytestmark = pytest.mark.anyio


def descendants(spans: list[ReadableSpan], root: ReadableSpan) -> list[ReadableSpan]:
    found, frontier = [], [root.context.span_id]
    while frontier:
        parent = frontier.pop()
        children = [s for s in spans if s.parent is not None and s.parent.span_id == parent]
        found.extend(children)
        frontier.extend(c.context.span_id for c in children)
    return found


async def test_a_tool_call_continues_the_clients_trace_down_to_each_docker_call(
    inproc_gateway: InProcessGateway, span_exporter: InMemorySpanExporter
) -> None:
    # A warm pool is filled: the first call takes a ready sandbox.
    await eventually_async(
        lambda: inproc_gateway.service.broker.pool.sandboxes, timeout_s=60, interval_s=0.05
    )
    span_exporter.clear()
    agent = trace.get_tracer("agent")
    async with mcp_client(inproc_gateway.url, inproc_gateway.tokens["alice"]) as client:
        with agent.start_as_current_span("agent step") as step:
            result = await client.call_tool("execute_bash", {"command": "echo traced"})
    assert not result.is_error
    trace_id = format(step.get_span_context().trace_id, "032x")
    spans = list(span_exporter.get_finished_spans())
    server = next(s for s in spans if s.name == "tools/call execute_bash" and s.kind == SpanKind.SERVER)
    assert format(server.context.trace_id, "032x") == trace_id, "the client's W3C trace context is honoured"
    below = {s.name for s in descendants(spans, server)}
    assert below == FIRST_CALL_SPANS_POOLED
    inproc_gateway.service.audit.flush()  # exec.finish is written off the call's path
    finish = audit_events(inproc_gateway.sink, "exec.finish")[-1]
    assert finish["trace_id"] == trace_id, "the audit event names the same trace"


async def test_a_run_python_call_is_a_span_with_its_interpreter_call_below_and_in_the_audit(
    inproc_gateway: InProcessGateway, span_exporter: InMemorySpanExporter
) -> None:
    async with mcp_client(inproc_gateway.url, inproc_gateway.tokens["alice"]) as client:
        await client.call_tool("run_python", {"code": "warm = 1"})
        span_exporter.clear()
        result = await client.call_tool("run_python", {"code": "warm + 1"})
    assert not result.is_error
    spans = list(span_exporter.get_finished_spans())
    server = next(s for s in spans if s.name == "tools/call run_python" and s.kind == SpanKind.SERVER)
    python = [s for s in descendants(spans, server) if s.name == "docker.python"]
    assert len(python) == 1 and python[0].attributes is not None
    assert python[0].attributes["sandbox_gateway.exec_path"] == "agent"
    assert python[0].attributes["sandbox_gateway.principal"] == "alice"
    inproc_gateway.service.audit.flush()
    finish = [e for e in audit_events(inproc_gateway.sink, "exec.finish") if e.get("tool") == "run_python"][
        -1
    ]
    assert finish["trace_id"] == format(server.context.trace_id, "032x")
    assert finish["interpreter"]["new"] is False and finish["outcome"]["status"] == "ok"
    AuditEvent.model_validate(finish)


async def test_audit_events_for_allow_deny_timeout_oom_and_auth_failure(
    inproc_gateway: InProcessGateway,
) -> None:
    async with mcp_client(inproc_gateway.url, inproc_gateway.tokens["bob"]) as client:
        await client.call_tool("execute_bash", {"command": "echo ok"})
        await client.call_tool("execute_bash", {"command": "true", "timeout_s": 999})
        await client.call_tool("execute_bash", {"command": "sleep 30", "timeout_s": 1})
        await client.call_tool("execute_python", {"code": "x = bytearray(2 * 1024**3)"})
    httpx.post(inproc_gateway.url, json={}, headers={"Authorization": "Bearer sgw_nope"})
    inproc_gateway.service.audit.flush()
    events = audit_events(inproc_gateway.sink)
    for event in events:
        AuditEvent.model_validate(event)
    bob = matching(events, principal="bob")
    decisions = [e["decision"]["result"] for e in matching(bob, "policy.decision")]
    assert decisions == ["allow", "deny", "allow", "allow"]
    denied = matching(bob, "policy.decision", decision="deny")[0]
    assert denied["decision"]["reasons"] == ["timeout-above-max"]
    finishes = [e["outcome"] for e in matching(bob, "exec.finish")]
    assert [(f["exit_code"], f["timed_out"], f["oom_killed"]) for f in finishes] == [
        (0, False, False),
        (124, True, False),
        (137, False, True),
    ]
    starts = matching(bob, "exec.start")
    assert all(set(e["code"]) == {"hmac_sha256"} for e in starts), "code is HMACed by default"
    assert "bytearray" not in "".join(inproc_gateway.sink.lines)
    failed = matching(events, "auth.failed")[-1]
    assert failed["detail"]["reason"] == "unknown-token" and failed["actor"]["source_ip"] == "127.0.0.1"
    assert "sgw_nope" not in "".join(inproc_gateway.sink.lines)
    numbered = [(str(i), line) for i, line in enumerate(inproc_gateway.sink.lines, 1)]
    assert verify_lines(numbered, expect_genesis=True).ok


async def test_when_no_sink_can_write_calls_are_refused_and_ready_turns_false(
    inproc_gateway: InProcessGateway,
) -> None:
    sink = inproc_gateway.sink
    async with mcp_client(inproc_gateway.url, inproc_gateway.tokens["alice"]) as client:
        await client.call_tool("execute_bash", {"command": "rm -f /workspace/marker"})
        sink.fail = True
        try:
            refused = await client.call_tool("execute_bash", {"command": "touch /workspace/marker"})
            ready = httpx.get(f"{inproc_gateway.base}/ready")
        finally:
            sink.fail = False
        check = await client.call_tool(
            "execute_bash", {"command": "ls /workspace/marker 2>&1 || echo absent"}
        )
    assert refused.is_error and "audit-unavailable" in refused.content[0].text  # type: ignore[union-attr]
    assert ready.status_code == 503 and ready.json()["audit"] is False
    assert check.structured_content and check.structured_content["stdout"].strip().endswith("absent")
    assert httpx.get(f"{inproc_gateway.base}/ready").status_code == 200


async def test_a_tool_calls_span_says_where_its_time_went_stage_by_stage(
    inproc_gateway: InProcessGateway, span_exporter: InMemorySpanExporter
) -> None:
    async with mcp_client(inproc_gateway.url, inproc_gateway.tokens["alice"]) as client:
        await client.call_tool("execute_bash", {"command": "true"})
        span_exporter.clear()
        slept = await client.call_tool("execute_bash", {"command": "sleep 0.3"})
        info = await client.call_tool("sandbox_info", {})
    assert not slept.is_error and not info.is_error
    spans = list(span_exporter.get_finished_spans())

    def stages_of(tool: str) -> dict[str, int]:
        server = next(s for s in spans if s.name == f"tools/call {tool}" and s.kind == SpanKind.SERVER)
        prefix = "sandbox_gateway.stage."
        attributes = server.attributes or {}
        found = {k[len(prefix) : -3]: v for k, v in attributes.items() if k.startswith(prefix)}
        return {k: int(v) for k, v in found.items() if isinstance(v, int)}

    bash, sandbox_info = stages_of("execute_bash"), stages_of("sandbox_info")
    assert set(bash) == set(sandbox_info) == set(STAGES)
    assert bash["sandbox"] >= 300_000, "the command's 0.3 s are the sandbox's, not the gateway's"
    assert sandbox_info["sandbox"] == 0, "sandbox_info sends nothing to a sandbox"
    for stages in (bash, sandbox_info):
        assert min(stages["auth"], stages["rate"], stages["policy"], stages["audit"], stages["http_in"]) > 0
        parts = sum(v for k, v in stages.items() if k not in ("gateway", "sandbox"))
        assert abs(parts - stages["gateway"]) <= len(STAGES), "the stages add up to the gateway's time"
