"""The benchmark's span receiver, stage aggregation and stage rendering, on synthetic spans.

Export requests are real `ExportTraceServiceRequest` protobufs POSTed to a running receiver over
HTTP; no timing is asserted, only what is parsed, matched, aggregated and printed.
"""

from __future__ import annotations

import gzip
import math
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from bench import report
from bench.otlp import SERVER, SpanRecord, TraceReceiver, decode_traces
from bench.stages import StageSample, bars, join, render, stage_values, summarise

PREFIX = "sandbox_gateway.stage."
#: A warm `execute_bash true` as the gateway would record it (µs); gateway = the sum without sandbox.
TRUE_STAGES = {
    "http_in": 900,
    "auth": 100,
    "rate": 50,
    "policy": 40,
    "audit": 1200,
    "broker": 700,
    "sandbox": 4000,
    "encode": 300,
}
TRUE_STAGES["gateway"] = sum(v for k, v in TRUE_STAGES.items() if k != "sandbox")


def _attribute(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _span(name: str, trace_id: str, stages: dict[str, int], kind: int = SERVER, **extra: Any) -> Span:
    attributes = [_attribute(f"{PREFIX}{stage}_us", value) for stage, value in stages.items()]
    attributes += [_attribute(key, value) for key, value in extra.items()]
    return Span(
        trace_id=bytes.fromhex(trace_id),
        span_id=secrets.token_bytes(8),
        name=name,
        kind=kind,  # type: ignore[arg-type]  # the enum's int value
        start_time_unix_nano=1_000,
        end_time_unix_nano=2_000,
        attributes=attributes,
    )


def _request(*spans: Span) -> bytes:
    request = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=list(spans))])]
    )
    return bytes(request.SerializeToString())


@pytest.fixture
def receiver() -> Iterator[TraceReceiver]:
    with TraceReceiver() as running:
        yield running


def _post(receiver: TraceReceiver, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        receiver.endpoint,
        content=body,
        headers={"Content-Type": "application/x-protobuf", **headers},
        timeout=10,
    )


def test_the_receiver_decodes_plain_and_gzip_exports_and_answers_an_empty_response(
    receiver: TraceReceiver,
) -> None:
    first, second = secrets.token_hex(16), secrets.token_hex(16)
    plain = _post(receiver, _request(_span("tools/call execute_bash", first, TRUE_STAGES)))
    zipped = _post(
        receiver,
        gzip.compress(_request(_span("tools/call sandbox_info", second, {"gateway": 7}, flag=True))),
        **{"Content-Encoding": "gzip"},
    )
    for response in (plain, zipped):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-protobuf"
        answer = ExportTraceServiceResponse()
        answer.ParseFromString(response.content)
        assert answer == ExportTraceServiceResponse()
    spans = receiver.spans()
    assert [(s.name, s.trace_id, s.kind) for s in spans] == [
        ("tools/call execute_bash", first, SERVER),
        ("tools/call sandbox_info", second, SERVER),
    ]
    assert stage_values(spans[0].attributes) == TRUE_STAGES
    assert spans[1].attributes == {f"{PREFIX}gateway_us": 7, "flag": True}
    assert (spans[0].start_ns, spans[0].end_ns) == (1_000, 2_000)
    assert receiver.requests == 2 and receiver.rejected == 0


def test_the_receiver_refuses_a_bad_body_an_unknown_encoding_and_another_path(
    receiver: TraceReceiver,
) -> None:
    assert _post(receiver, b"\xff\xff\xff not protobuf").status_code == 400
    assert _post(receiver, b"not gzip", **{"Content-Encoding": "gzip"}).status_code == 400
    assert _post(receiver, _request(), **{"Content-Encoding": "br"}).status_code == 415
    elsewhere = httpx.post(receiver.endpoint.replace("/v1/traces", "/v1/logs"), content=b"", timeout=10)
    assert elsewhere.status_code == 404
    assert receiver.spans() == [] and receiver.rejected == 3


def test_decode_traces_keeps_every_span_of_every_resource_and_scope() -> None:
    ids = [secrets.token_hex(16) for _ in range(3)]
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(scope_spans=[ScopeSpans(spans=[_span("a", ids[0], {})]), ScopeSpans()]),
            ResourceSpans(scope_spans=[ScopeSpans(spans=[_span("b", ids[1], {}), _span("c", ids[2], {})])]),
        ]
    )
    assert [s.trace_id for s in decode_traces(request.SerializeToString())] == ids


def test_stage_values_keep_only_integer_stage_attributes() -> None:
    attributes = {
        f"{PREFIX}auth_us": 12,
        f"{PREFIX}policy_us": "40",  # not an integer
        f"{PREFIX}flag_us": True,  # a bool is not a duration
        f"{PREFIX}audit": 5,  # no unit suffix
        "mcp.method.name": "tools/call",
    }
    assert stage_values(attributes) == {"auth": 12}


def _record(name: str, trace_id: str, stages: dict[str, int], kind: int = SERVER) -> SpanRecord:
    attributes = {f"{PREFIX}{stage}_us": value for stage, value in stages.items()}
    return SpanRecord(name, trace_id, "00", kind, 0, 1, attributes)


def test_join_pairs_each_call_with_the_server_span_of_its_trace() -> None:
    calls = {"t1": 9000.0, "t2": 9500.0, "t3": 8000.0}
    spans = [
        _record("tools/call execute_bash", "t2", {"gateway": 2}),
        _record("tools/call execute_bash", "t1", {"gateway": 1}),
        _record("tools/call execute_bash", "t3", {"gateway": 3}, kind=3),  # a client span
        _record("tools/call sandbox_info", "t3", {"gateway": 4}),  # another tool
        _record("docker.exec", "t1", {}),
    ]
    samples, missing = join(spans, "execute_bash", calls)
    pairs = [(s.end_to_end_us, s.stages) for s in samples]
    assert pairs == [(9000.0, {"gateway": 1}), (9500.0, {"gateway": 2})]
    assert missing == 1


def test_the_client_rest_is_end_to_end_minus_the_gateway_and_the_sandbox_per_call() -> None:
    assert StageSample(10_000.0, TRUE_STAGES).client_rest_us == 10_000 - TRUE_STAGES["gateway"] - 4000
    assert StageSample(5_000.0, {"gateway": 3000}).client_rest_us == 2000  # no sandbox: sandbox_info
    assert StageSample(5_000.0, {"auth": 10}).client_rest_us is None


def test_summarise_takes_percentiles_per_stage_and_of_the_per_call_rest() -> None:
    samples = [
        StageSample(10_000.0 + 1000 * i, {**TRUE_STAGES, "sandbox": 4000 + 100 * i}) for i in range(10)
    ]
    summary = summarise(samples, missing_spans=2)
    assert summary["calls"] == 10 and summary["missing_spans"] == 2 and summary["stages_seen"]
    assert summary["end_to_end"] == {"n": 10, "p50_us": 14_000.0, "p90_us": 18_000.0}
    assert summary["stages"]["sandbox"] == {"n": 10, "p50_us": 4400.0, "p90_us": 4800.0}
    assert summary["stages"]["auth"]["p50_us"] == 100.0
    gateway = TRUE_STAGES["gateway"]
    # per call: 10000 + 1000 i - gateway - (4000 + 100 i) = 6000 - gateway + 900 i
    assert summary["client_rest"]["p50_us"] == 6000 - gateway + 900 * 4
    assert summary["client_rest"]["p90_us"] == 6000 - gateway + 900 * 8


def test_summarise_without_stage_attributes_says_so() -> None:
    summary = summarise([StageSample(5000.0, {})])
    assert not summary["stages_seen"]
    assert summary["client_rest"]["n"] == 0 and math.isnan(summary["client_rest"]["p50_us"])
    assert summary["stages"]["sandbox"]["n"] == 0


def _breakdowns() -> dict[str, dict[str, Any]]:
    info = {k: v for k, v in TRUE_STAGES.items() if k != "sandbox"}
    return {
        "execute_bash true": summarise([StageSample(12_000.0, TRUE_STAGES)]),
        "sandbox_info": summarise([StageSample(6_000.0, info)]),
    }


def test_the_stage_table_lists_every_stage_with_both_workloads() -> None:
    text = render(_breakdowns())
    assert "execute_bash true" in text.splitlines()[0] and "sandbox_info" in text.splitlines()[0]
    rest = 12_000 - TRUE_STAGES["gateway"] - 4000
    (row,) = [line for line in text.splitlines() if line.startswith("client, transport and response write")]
    assert f"{rest:,}" in row and f"{6000 - TRUE_STAGES['gateway']:,}" in row
    (sandbox,) = [line for line in text.splitlines() if line.startswith("sandbox round trip")]
    assert "4,000" in sandbox and sandbox.rstrip().endswith("-")  # sandbox_info has none
    for label in ("HTTP and MCP framing in", "authentication", "audit writes", "result encoding"):
        assert any(line.startswith(label) for line in text.splitlines()), label


def _bar_cells(line: str) -> str:
    return line.split("|", 1)[1]


def test_the_bars_are_proportional_and_follow_one_another() -> None:
    text = bars(_breakdowns()["execute_bash true"], width=80)
    lines = text.splitlines()
    parts = lines[:-1]
    assert parts[0].startswith("HTTP and MCP framing in")
    assert "sandbox round trip" in parts[6] and "client, transport and response write" in parts[-1]
    widths = {line.split(" ")[0]: len(_bar_cells(line).strip()) for line in parts}
    assert widths["sandbox"] > widths["audit"] > widths["authentication"] >= 1
    # a waterfall: each bar starts where the one before it ended (within a column of rounding)
    ends = [len(_bar_cells(line).rstrip()) for line in parts]
    starts = [len(_bar_cells(line)) - len(_bar_cells(line).lstrip()) for line in parts]
    for previous_end, start in zip(ends, starts[1:], strict=False):
        assert abs(start - previous_end) <= 1
    assert ends[-1] in (79, 80, 81)
    assert lines[-1].startswith("sum of the p50s") and "12,000" in lines[-1]


def test_the_bars_leave_out_stages_a_call_does_not_have() -> None:
    text = bars(_breakdowns()["sandbox_info"])
    assert "sandbox round trip" not in text and "audit writes" in text
    assert bars(summarise([])) == "(no stage figures)"


def test_the_report_says_spans_were_on_and_when_no_stage_was_recorded() -> None:
    text = report.render_stages(_breakdowns())
    assert "spans on" in text and "execute_bash true: p50 of each part" in text
    bare = report.render_stages({"execute_bash true": summarise([StageSample(5000.0, {})])})
    assert "no sandbox_gateway.stage.* attributes" in bare and "spans on" in bare
