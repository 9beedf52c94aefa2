"""The audit pipeline's processors: small callables, each doing one thing."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import MutableMapping
from typing import Any

from opentelemetry import trace

__all__ = ["AddEventId", "AddTimestamp", "AddTraceContext", "RedactSecrets"]

EventDict = MutableMapping[str, Any]

_SECRET_KEYS = frozenset({"token", "authorization", "password", "secret", "api_key", "bearer", "cookie"})


class AddTimestamp:
    """`ts`: RFC 3339 UTC with microseconds."""

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        event["ts"] = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        return event


class AddEventId:
    """`event_id`: unique per event, so a SIEM can deduplicate."""

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        event["event_id"] = uuid.uuid4().hex
        return event


class AddTraceContext:
    """`trace_id` and `span_id` of the current OpenTelemetry span, when there is one."""

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event.setdefault("trace_id", format(context.trace_id, "032x"))
            event.setdefault("span_id", format(context.span_id, "016x"))
        return event


class RedactSecrets:
    """Drops the value of any key that names a credential, at any depth."""

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        redacted: EventDict = _redact(event)
        return redacted


def _redact(value: Any) -> Any:
    if isinstance(value, MutableMapping):
        for key in list(value):
            if any(part in str(key).lower() for part in _SECRET_KEYS):
                value[key] = "[redacted]"
            else:
                value[key] = _redact(value[key])
    elif isinstance(value, list):
        return [_redact(item) for item in value]
    return value
