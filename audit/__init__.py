"""Audit events: a structlog processor chain that renders one JSON object per line into sinks.

Every policy decision and every Docker operation is an event. Sinks are pluggable; with
`fail_closed` (the default) an event that no sink could write raises AuditWriteError, so the
caller can refuse the request rather than act unrecorded. Events a client can repeat at will
(bad tokens, requests over a rate limit) are folded per source and window (`emit_repeated`).
What is recorded after the fact can be queued (`emit_later`, see audit.writer): same chain, same
order, written off the caller's path; fail-closed, a full queue or a lost event refuses more.
"""

from audit.errors import AuditError, AuditWriteError
from audit.log import AuditLog
from audit.repeats import RepeatTable
from audit.sinks import AuditSink, FileSink, Fsync, MemorySink, StreamSink, rotated_files

__all__ = [
    "AuditError",
    "AuditLog",
    "AuditSink",
    "AuditWriteError",
    "FileSink",
    "Fsync",
    "MemorySink",
    "RepeatTable",
    "StreamSink",
    "rotated_files",
]
