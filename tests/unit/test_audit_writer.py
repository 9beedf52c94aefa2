"""Deferred audit events (`emit_later`): written in call order on one hash chain, bounded, fail-closed
(a lost event fails the log until an `audit.gap` says what was lost), drained by close() and flush(),
with the caller's context and time, and fsynced per batch when asked."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from pathlib import Path

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from audit import AuditLog, AuditWriteError, FileSink, MemorySink
from audit.chain import GENESIS, verify_lines
from tests.support import audit_events, eventually


class GatedSink(MemorySink):
    """Keeps lines in memory. While `gate` is set, a write waits on it (saying so on `entered`),
    then fails if `fail` is set: the test decides when the writer thread is stuck, and on what."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def write(self, line: str) -> None:
        gate = self.gate
        if gate is not None:
            self.entered.set()
            assert gate.wait(timeout=30), "the test never opened the gate"
        if self.fail:
            raise OSError("gated sink set to fail")
        self.lines.append(line)

    def hold(self) -> threading.Event:
        """From now on writes wait; returns the event that lets them go."""
        self.entered.clear()
        self.gate = threading.Event()
        return self.gate

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.lines]


def _held_writer(log: AuditLog, sink: GatedSink) -> threading.Event:
    """A deferred event (`held`) the writer thread is now stuck writing; set the result to go on."""
    gate = sink.hold()
    log.emit_later("held")
    assert sink.entered.wait(timeout=30), "the writer thread never started writing"
    return gate


def _release(sink: GatedSink, gate: threading.Event) -> None:
    sink.gate = None
    gate.set()


def _verifies(lines: list[str]) -> bool:
    report = verify_lines(((f"l:{n}", line) for n, line in enumerate(lines, 1)), expect_genesis=True)
    return report.ok


def _names(lines: list[str]) -> list[str]:
    return [json.loads(line)["event"] for line in lines]


def test_emits_from_many_threads_are_written_once_each_in_the_order_of_their_calls(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog([FileSink(path)], queue_capacity=10_000)
    threads, per_thread = 8, 150
    start = threading.Barrier(threads)

    def emitter(index: int) -> None:
        start.wait()
        for n in range(per_thread):
            emit = log.emit_later if (n + index) % 3 else log.emit
            emit("e", thread=index, n=n)

    workers = [threading.Thread(target=emitter, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    log.close()
    lines = path.read_text().splitlines()
    assert _verifies(lines)
    seen = [(e["detail"]["thread"], e["detail"]["n"]) for e in map(json.loads, lines)]
    assert sorted(seen) == [(t, n) for t in range(threads) for n in range(per_thread)], "each once"
    for index in range(threads):
        assert [n for t, n in seen if t == index] == list(range(per_thread)), "a thread's calls in order"
    assert json.loads(lines[-1])["hash"] == log.head


def test_a_synchronous_emit_first_writes_what_was_queued_before_it() -> None:
    sink = GatedSink()
    log = AuditLog([sink])
    gate = _held_writer(log, sink)
    log.emit_later("a")
    log.emit_later("b")
    _release(sink, gate)
    log.emit("c")
    assert _names(sink.lines) == ["held", "a", "b", "c"], "everything queued is written before emit returns"
    assert _verifies(sink.lines)


def test_the_writer_thread_writes_deferred_events_without_being_asked() -> None:
    sink = MemorySink()
    log = AuditLog([sink])
    log.emit_later("a")
    log.emit_later("b")
    eventually(lambda: _names(sink.lines) == ["a", "b"], message="the writer thread wrote both events")
    assert _verifies(sink.lines)


def test_a_full_queue_refuses_the_next_deferred_event_and_writes_the_rest_in_order() -> None:
    sink = GatedSink()
    log = AuditLog([sink], queue_capacity=2)
    gate = _held_writer(log, sink)
    log.emit_later("a")
    log.emit_later("b")
    with pytest.raises(AuditWriteError, match="full"):
        log.emit_later("refused")
    _release(sink, gate)
    log.flush()
    log.emit_later("c")  # room again
    log.flush()
    assert _names(sink.lines) == ["held", "a", "b", "c"]
    assert _verifies(sink.lines) and log.lost == 0 and log.writable()


def test_without_fail_closed_a_full_queue_writes_the_event_at_once_in_order() -> None:
    sink = GatedSink()
    log = AuditLog([sink], fail_closed=False, queue_capacity=1)
    gate = _held_writer(log, sink)
    log.emit_later("a")
    done = threading.Event()

    def overflow() -> None:
        log.emit_later("b")  # waits for the writer (the queue is full), then writes a and b itself
        done.set()

    threading.Thread(target=overflow).start()
    _release(sink, gate)
    assert done.wait(timeout=30)
    log.flush()
    assert _names(sink.lines) == ["held", "a", "b"] and _verifies(sink.lines)


def test_a_deferred_event_no_sink_takes_fails_the_log_until_a_gap_is_written() -> None:
    sink = GatedSink()
    log = AuditLog([sink])
    log.emit("before")
    gate = _held_writer(log, sink)  # "held" is being written...
    log.emit_later("exec.finish", exit_code=0)
    log.emit_later("docker.exec", outcome="ok")
    sink.fail = True  # ...and fails: it and everything queued after it are lost
    _release(sink, gate)
    with pytest.raises(AuditWriteError, match="failed"):
        log.flush()

    assert log.failed and not log.writable() and log.lost == 3
    assert _names(sink.lines) == ["before"] and _verifies(sink.lines), "no gap in the chain on disk"
    assert log.head == json.loads(sink.lines[-1])["hash"], "the head is the last line written"
    with pytest.raises(AuditWriteError):
        log.emit_later("refused-deferred")
    with pytest.raises(AuditWriteError):
        log.emit("refused-while-the-sink-fails")  # tries the gap, which fails too
    assert log.failed and _names(sink.lines) == ["before"]

    sink.fail = False
    log.emit("after")
    assert _names(sink.lines) == ["before", "audit.gap", "after"]
    assert _verifies(sink.lines), "the chain holds end to end"
    assert not log.failed and log.writable() and log.lost == 3
    gap = sink.events()[1]["detail"]
    assert isinstance(gap, dict) and gap["lost"] == 3 and gap["lost_event_ids_truncated"] is False
    assert gap["lost_events"] == [
        {"event": "docker.exec", "count": 1},
        {"event": "exec.finish", "count": 1},
        {"event": "held", "count": 1},
    ]
    assert len(set(gap["lost_event_ids"])) == 3
    log.emit_later("deferred-again")
    log.flush()
    assert _names(sink.lines)[-1] == "deferred-again" and _verifies(sink.lines)


def test_an_emit_after_a_lost_event_is_refused_whichever_thread_found_the_loss() -> None:
    sink = GatedSink()
    log = AuditLog([sink])
    gate = _held_writer(log, sink)
    log.emit_later("a")
    _release(sink, gate)
    log.flush()
    sink.fail = True
    log.emit_later("b")  # lost by the writer thread, or by the emit below as it drains the queue
    with pytest.raises(AuditWriteError):
        log.emit("c")
    assert log.failed and _names(sink.lines) == ["held", "a"]
    sink.fail = False
    log.emit("d")
    assert _names(sink.lines) == ["held", "a", "audit.gap", "d"] and _verifies(sink.lines)
    assert sink.events()[2]["detail"]["lost_events"] == [{"event": "b", "count": 1}]  # type: ignore[index]


def test_close_and_flush_write_everything_queued(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog([FileSink(path)])
    for n in range(50):
        log.emit_later("e", n=n)
    log.flush()
    assert len(path.read_text().splitlines()) == 50
    for n in range(50, 100):
        log.emit_later("e", n=n)
    log.emit_repeated("auth.failed", {"source_ip": "192.0.2.1"}, by="reason", reason="unknown-token")
    log.emit_repeated("auth.failed", {"source_ip": "192.0.2.1"}, by="reason", reason="unknown-token")
    log.close()
    lines = path.read_text().splitlines()
    assert _verifies(lines)
    assert [json.loads(line)["detail"]["n"] for line in lines[:100]] == list(range(100))
    assert _names(lines)[100:] == ["auth.failed", "audit.repeated"], "the summary is written at close"
    with pytest.raises(AuditWriteError, match="closed"):
        log.emit_later("late")


def _seconds(ts: str) -> float:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_a_deferred_event_carries_its_callers_request_id_trace_and_time() -> None:
    sink = GatedSink()
    log = AuditLog([sink])
    gate = _held_writer(log, sink)
    tracer = TracerProvider().get_tracer("t")
    with (
        structlog.contextvars.bound_contextvars(request_id="r1", principal="alice"),
        tracer.start_as_current_span("call") as span,
    ):
        before = time.time()
        log.emit_later("exec.finish", outcome="ok")
        after = time.time()
    while time.time() <= after + 0.001:  # the event is written strictly later than its call
        time.sleep(0.001)
    with structlog.contextvars.bound_contextvars(request_id="other"):
        _release(sink, gate)
        log.flush()  # written on this thread, in another request's context: it must not leak in
    (finish,) = audit_events(sink, "exec.finish")
    assert finish["request_id"] == "r1" and finish["actor"] == {"principal": "alice"}
    assert finish["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert finish["span_id"] == format(span.get_span_context().span_id, "016x")
    assert before - 1e-6 <= _seconds(finish["ts"]) <= after + 1e-6, "ts is the time of the call"
    (held,) = audit_events(sink, "held")
    assert "request_id" not in held and "trace_id" not in held


def test_fsync_batch_makes_every_written_line_durable_and_never_fsyncs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[str, int]] = []  # (which file, its size when fsynced)
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        stat = os.fstat(fd)
        names = [p.name for p in tmp_path.glob("*.jsonl") if p.stat().st_ino == stat.st_ino]
        synced.append((names[0] if names else "a directory", stat.st_size))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    log = AuditLog([FileSink(tmp_path / "batch.jsonl", fsync="batch"), FileSink(tmp_path / "never.jsonl")])
    log.emit("sync")
    size = (tmp_path / "batch.jsonl").stat().st_size
    assert synced[-1] == ("batch.jsonl", size), "a synchronous event is on disk when emit returns"
    for n in range(20):
        log.emit_later("e", n=n)
    log.flush()
    size = (tmp_path / "batch.jsonl").stat().st_size
    assert synced[-1] == ("batch.jsonl", size), "after a flush, every line written is on disk"
    assert all(which != "never.jsonl" for which, _ in synced), "fsync never: no fsync"
    log.close()
    with pytest.raises(ValueError, match="fsync"):
        FileSink(tmp_path / "x.jsonl", fsync="always")  # type: ignore[arg-type]


def test_a_log_resumed_from_a_file_continues_its_chain_after_deferred_events(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditLog([FileSink(path)])
    first.emit_later("a")
    first.close()
    second = AuditLog([FileSink(path)])
    second.emit_later("b")
    second.close()
    lines = path.read_text().splitlines()
    assert _names(lines) == ["a", "b"] and _verifies(lines)
    assert json.loads(lines[0])["prev_hash"] == GENESIS


def test_a_closed_log_writes_nothing_into_a_file_that_took_its_descriptor_number(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, fsync="batch")
    log = AuditLog([sink])
    log.emit("before")
    log.close()
    other = tmp_path / "other.txt"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT, 0o600)  # the lowest free number: the sink's old one
    try:
        with pytest.raises(AuditWriteError):
            log.emit("after")  # e.g. a thread still ending its work once the gateway shut its log
        sink.sync()
        sink.close()  # twice: does not close the other file's descriptor
        os.fstat(fd)
    finally:
        os.close(fd)
    assert other.read_bytes() == b""
    assert _names(path.read_text().splitlines()) == ["before"]


def test_a_rotation_that_fails_half_way_never_leaves_lines_going_to_a_stale_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = FileSink(path, max_bytes=4096, backups=2)
    log = AuditLog([sink])
    reopen = sink._open

    def refuse() -> int:
        raise OSError("no descriptors left")

    monkeypatch.setattr(sink, "_open", refuse)
    for n in range(10):  # just under max_bytes (lines of about 375 bytes)
        log.emit("e", n=n, pad="x" * 100)
    with pytest.raises(AuditWriteError):  # the rotation closes the file, then cannot open one
        log.emit("e", n=10, pad="x" * 100)
    other = tmp_path / "other.txt"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT, 0o600)  # may take the closed file's number
    try:
        monkeypatch.setattr(sink, "_open", reopen)
        log.emit("after")  # the sink opens its file again
    finally:
        os.close(fd)
    assert other.read_bytes() == b""
    lines = (tmp_path / "audit.jsonl.1").read_text().splitlines() + path.read_text().splitlines()
    assert _verifies(lines) and _names(lines)[-1] == "after"


def test_a_log_closed_while_failed_writes_its_gap_when_the_sink_works_again() -> None:
    sink = GatedSink()
    log = AuditLog([sink])
    log.emit("before")
    sink.fail = True
    log.emit_later("exec.finish", exit_code=0)
    with pytest.raises(AuditWriteError):
        log.flush()
    sink.fail = False  # nothing else is emitted before the gateway shuts down
    log.close()
    assert _names(sink.lines) == ["before", "audit.gap"], "the loss is on record, not only in a metric"
    assert _verifies(sink.lines)
