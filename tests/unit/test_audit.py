"""The audit pipeline: one JSON object per event, enriched, secrets redacted, fail-closed."""

import json

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from audit import AuditLog, AuditWriteError, FileSink, MemorySink


def test_events_are_json_lines_with_id_and_timestamp() -> None:
    sink = MemorySink()
    AuditLog([sink]).emit("policy.decision", principal="alice", decision="allow")
    event = json.loads(sink.lines[0])
    assert event["event"] == "policy.decision"
    assert event["principal"] == "alice"
    assert len(event["event_id"]) == 32
    assert event["ts"].endswith("Z")


def test_secrets_never_appear() -> None:
    sink = MemorySink()
    AuditLog([sink]).emit(
        "x",
        token="sgw_secret",
        headers={"Authorization": "Bearer sgw_secret"},
        items=[{"password": "hunter2"}],
    )
    assert "sgw_secret" not in sink.lines[0]
    assert "hunter2" not in sink.lines[0]


def test_bound_context_is_merged() -> None:
    sink = MemorySink()
    with structlog.contextvars.bound_contextvars(request_id="r1"):
        AuditLog([sink]).emit("x")
    assert json.loads(sink.lines[0])["request_id"] == "r1"


def test_trace_context_is_added_inside_a_span() -> None:
    sink = MemorySink()
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        AuditLog([sink]).emit("x")
    event = json.loads(sink.lines[0])
    assert event["trace_id"] == format(span.get_span_context().trace_id, "032x")


def test_fail_closed_raises_when_no_sink_writes() -> None:
    sink = MemorySink()
    sink.fail = True
    log = AuditLog([sink])
    with pytest.raises(AuditWriteError):
        log.emit("x")
    assert not log.writable()


def test_one_working_sink_is_enough() -> None:
    broken, working = MemorySink(), MemorySink()
    broken.fail = True
    log = AuditLog([broken, working])
    log.emit("x")
    assert len(working.lines) == 1
    assert log.failures == 1


def test_file_sink_appends(tmp_path) -> None:
    path = tmp_path / "audit" / "log.jsonl"
    log = AuditLog([FileSink(path)])
    log.emit("a")
    log.emit("b")
    assert [json.loads(line)["event"] for line in path.read_text().splitlines()] == ["a", "b"]
