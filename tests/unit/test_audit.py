"""The audit pipeline: schema, code handling, secrets, hash chain, rotation, fail-closed."""

import itertools
import json
from pathlib import Path

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from audit import AuditLog, AuditWriteError, FileSink, MemorySink, rotated_files
from audit.chain import GENESIS, verify_lines
from audit.schema import AuditEvent
from tests.support import audit_events


def test_events_follow_the_documented_schema() -> None:
    sink = MemorySink()
    log = AuditLog([sink])
    log.emit(
        "policy.decision",
        principal="alice",
        tenant="t",
        auth_method="token",
        source_ip="127.0.0.1",
        tool="execute_bash",
        decision="allow",
        reasons=["allowed"],
        rule_ids=["r"],
        profile="default",
        policy_digest="d" * 64,
        timeout_s=30,
        input_bytes=4,
    )
    log.emit(
        "exec.finish",
        outcome="ok",
        exit_code=0,
        timed_out=False,
        oom_killed=False,
        duration_ms=1.5,
        container_id="c",
        reason="x",
    )
    first, second = (AuditEvent.model_validate(e) for e in audit_events(sink))
    assert (
        first.actor is not None and first.actor.principal == "alice" and first.actor.source_ip == "127.0.0.1"
    )
    assert first.decision is not None and first.decision.result == "allow"
    assert first.limits is not None and first.limits.timeout_s == 30
    assert second.outcome is not None and second.outcome.exit_code == 0 and second.outcome.status == "ok"
    assert second.resource is not None and second.resource.container_id == "c"
    assert second.detail == {"reason": "x"}
    assert len(first.event_id) == 32 and first.ts.endswith("Z")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        pytest.param("hmac", {"hmac_sha256"}, id="hmac-by-default"),
        pytest.param("full", {"text"}, id="full"),
        pytest.param("none", None, id="none"),
    ],
)
def test_code_is_recorded_as_the_policy_says(mode: str, expected: set[str] | None) -> None:
    sink = MemorySink()
    AuditLog([sink], code_mode=mode, hmac_key=b"k" * 32).emit("exec.start", code="rm -rf /tmp/secret-plan")  # type: ignore[arg-type]
    event = audit_events(sink)[0]
    if expected is None:
        assert "code" not in event
    else:
        assert set(event["code"]) == expected
    if mode != "full":
        assert "secret-plan" not in sink.lines[0]


def test_hmac_of_the_same_code_with_the_same_key_is_stable() -> None:
    one, two = MemorySink(), MemorySink()
    AuditLog([one], hmac_key=b"k" * 32).emit("exec.start", code="ls")
    AuditLog([two], hmac_key=b"k" * 32).emit("exec.start", code="ls")
    assert audit_events(one)[0]["code"] == audit_events(two)[0]["code"]


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


def test_a_credential_key_is_redacted_every_time_and_past_the_remembered_keys() -> None:
    sink = MemorySink()
    log = AuditLog([sink])
    for i in range(5000):  # more distinct keys than the redactor remembers verdicts for
        fields = {f"field_{i}": "plain", f"Api_Key_{i}": "sgw_secret"}
        log.emit("x", **fields, nested=[{"TOKEN": "sgw_secret"}])
    assert not any("sgw_secret" in line for line in sink.lines)
    assert all('"plain"' in line for line in sink.lines)


def test_each_line_is_the_canonical_json_of_its_event_and_hash_covers_the_rest() -> None:
    sink = MemorySink()
    log = AuditLog([sink])
    log.emit("e", tool='t\u00e9\n"', ratio=0.1, big=1e16, zeta=None, alpha={"b": [1, "ü"], "a": 2})
    log.emit("e", hash="forged", prev_hash="forged", n=1)  # the chain's own fields are never a caller's
    for line in sink.lines:
        event = json.loads(line)
        assert line == json.dumps(event, sort_keys=True, separators=(",", ":"))
    events = audit_events(sink)
    assert events[1]["prev_hash"] == events[0]["hash"] and events[1]["hash"] == log.head
    report = verify_lines(((f"m:{i}", line) for i, line in enumerate(sink.lines, 1)), expect_genesis=True)
    assert report.ok and report.lines == 2


def test_bound_context_is_merged() -> None:
    sink = MemorySink()
    with structlog.contextvars.bound_contextvars(request_id="r1", principal="p"):
        AuditLog([sink]).emit("x")
    event = audit_events(sink)[0]
    assert event["request_id"] == "r1" and event["actor"] == {"principal": "p"}


def test_trace_context_is_added_inside_a_span() -> None:
    sink = MemorySink()
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        AuditLog([sink]).emit("x")
    assert audit_events(sink)[0]["trace_id"] == format(span.get_span_context().trace_id, "032x")


def test_events_form_a_hash_chain_from_genesis() -> None:
    sink = MemorySink()
    log = AuditLog([sink])
    for i in range(5):
        log.emit("e", n=i)
    events = audit_events(sink)
    assert events[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(events))
    report = verify_lines(((f"m:{i}", line) for i, line in enumerate(sink.lines, 1)), expect_genesis=True)
    assert report.ok and report.lines == 5 and report.last_hash == log.head


@pytest.mark.parametrize("tamper", ["edit", "delete", "reorder", "insert"])
def test_any_tampering_breaks_the_chain_at_that_line(tamper: str) -> None:
    sink = MemorySink()
    log = AuditLog([sink])
    for i in range(6):
        log.emit("e", n=i)
    lines = list(sink.lines)
    if tamper == "edit":
        lines[3] = lines[3].replace('"n":3', '"n":4')
    elif tamper == "delete":
        del lines[3]
    elif tamper == "reorder":
        lines[3], lines[4] = lines[4], lines[3]
    else:
        lines.insert(3, lines[1])
    report = verify_lines((f"m:{i}", line) for i, line in enumerate(lines, 1))
    assert not report.ok
    assert report.broken_at == "m:4"


def test_fail_closed_raises_and_does_not_advance_the_chain() -> None:
    sink = MemorySink()
    log = AuditLog([sink])
    log.emit("a")
    head = log.head
    sink.fail = True
    with pytest.raises(AuditWriteError):
        log.emit("b")
    assert log.head == head and not log.writable()
    sink.fail = False
    log.emit("c")
    assert verify_lines((str(i), line) for i, line in enumerate(sink.lines)).ok


def test_one_working_sink_is_enough() -> None:
    broken, working = MemorySink(), MemorySink()
    broken.fail = True
    log = AuditLog([broken, working])
    log.emit("x")
    assert len(working.lines) == 1
    assert log.failures == 1


def test_a_file_rotates_by_size_and_the_chain_continues_across_files_and_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "log.jsonl"
    log = AuditLog([FileSink(path, max_bytes=4096, backups=3)])
    for i in range(60):
        log.emit("e", n=i, padding="x" * 200)
    log.close()
    restarted = AuditLog([FileSink(path, max_bytes=4096, backups=3)])
    restarted.emit("after-restart")
    files = rotated_files(path)
    assert [p.name for p in files] == ["log.jsonl.3", "log.jsonl.2", "log.jsonl.1", "log.jsonl"]
    numbered = [
        (f"{p.name}:{n}", line) for p in files for n, line in enumerate(p.read_text().splitlines(), 1)
    ]
    report = verify_lines(numbered)
    assert report.ok, report
    assert report.first_prev_hash != GENESIS, "the oldest lines were rotated away; the chain still verifies"
    assert json.loads(numbered[-1][1])["event"] == "after-restart"


def test_writing_to_a_full_device_fails_closed(tmp_path: Path) -> None:
    log = AuditLog([FileSink(Path("/dev/full"))])
    with pytest.raises(AuditWriteError):
        log.emit("x")
    assert not log.writable()
