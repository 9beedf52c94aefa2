"""The suite's own helpers (tests/support): waiting for a condition, and picking audit events."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import anyio
import pytest

from audit import AuditLog, MemorySink
from tests.support import EventuallyFailed, audit_events, eventually, eventually_async, matching


def test_eventually_returns_the_first_truthy_value() -> None:
    tries = itertools.count(1)
    assert eventually(lambda: [n] if (n := next(tries)) >= 3 else [], interval_s=0) == [3]


def test_eventually_retries_assertions_and_reports_the_last_one() -> None:
    tries = itertools.count(1)

    def check() -> bool:
        raise AssertionError(f"try {next(tries)}")

    expected = r"the thing did not happen within 0.2 s \(\d+ tries; last error: AssertionError: try \d+"
    with pytest.raises(EventuallyFailed, match=expected) as failure:
        eventually(check, timeout_s=0.2, interval_s=0.01, message="the thing did not happen")
    assert isinstance(failure.value.__cause__, AssertionError)


def test_eventually_reports_the_last_falsy_value() -> None:
    with pytest.raises(EventuallyFailed, match=r"last value: \[\]"):
        eventually(lambda: [], timeout_s=0.05, interval_s=0.01)


def test_eventually_stops_at_once_on_an_error_it_does_not_retry() -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="gone"):
        eventually(lambda: (_ for _ in ()).throw(RuntimeError("gone")), timeout_s=5)
    assert time.monotonic() - started < 1


def test_eventually_retries_what_it_is_told_to() -> None:
    tries = itertools.count(1)

    def check() -> bool:
        if next(tries) < 3:
            raise ConnectionError("not yet")
        return True

    assert eventually(check, interval_s=0, retry_on=(ConnectionError,))


def test_eventually_async_takes_plain_and_async_checks_and_cancels_a_try_at_the_deadline() -> None:
    async def main() -> None:
        tries = itertools.count(1)

        async def slow_to_pass() -> int:
            await anyio.sleep(0)
            return n if (n := next(tries)) >= 2 else 0

        assert await eventually_async(slow_to_pass, interval_s=0) == 2
        assert await eventually_async(lambda: "ready") == "ready"

        async def hangs() -> bool:
            await anyio.sleep(60)
            return True

        started = time.monotonic()
        with pytest.raises(EventuallyFailed, match="still running at the deadline"):
            await eventually_async(hangs, timeout_s=0.2)
        assert time.monotonic() - started < 5

    anyio.run(main)


def test_audit_events_match_by_the_flat_field_names(tmp_path: Path) -> None:
    sink = MemorySink()
    audit = AuditLog([sink])
    audit.emit("exec.finish", principal="bob", outcome="ok", exit_code=0, tool="execute_bash")
    audit.emit("exec.finish", principal="alice", outcome="error", error="cancelled")
    audit.emit("sandbox.remove", principal="bob", reason="idle")
    assert [e["actor"]["principal"] for e in audit_events(sink, "exec.finish")] == ["bob", "alice"]
    (bob,) = audit_events(sink, "exec.finish", principal="bob", outcome="ok", tool="execute_bash")
    assert bob["outcome"]["exit_code"] == 0
    assert audit_events(sink, principal="bob", reason="idle")[0]["event"] == "sandbox.remove"
    assert audit_events(sink, "exec.finish", reason=None) == audit_events(sink, "exec.finish")
    assert matching(audit_events(sink), "exec.finish", error="cancelled")[0]["actor"]["principal"] == "alice"


def test_a_file_is_read_up_to_its_last_complete_line(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    log.write_text('{"event": "a"}\nnot json\n{"event": "b"}\n{"event": "c", "detail"')
    assert [e["event"] for e in audit_events(log, text_lines=True)] == ["a", "b"]
    with pytest.raises(ValueError, match="Expecting value"):
        audit_events(log)
