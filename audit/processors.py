"""The audit pipeline's processors: small callables, each doing one thing.

Order in the chain: enrich (context, time, id, trace) -> redact (code, secrets) -> structure ->
chain (hash, and the rendered line).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import threading
import time
import uuid
from collections.abc import MutableMapping
from typing import Any, Literal

from opentelemetry import trace

from audit.chain import canonical
from audit.schema import GROUPS, TOP_LEVEL

__all__ = [
    "CAPTURED_AT",
    "CAPTURED_ID",
    "AddEventId",
    "AddTimestamp",
    "AddTraceContext",
    "ChainHashes",
    "RecordCode",
    "RedactSecrets",
    "Structure",
    "rfc3339",
]

EventDict = MutableMapping[str, Any]
CodeMode = Literal["full", "hmac", "none"]

_SECRET_KEYS = frozenset({"token", "authorization", "password", "secret", "api_key", "bearer", "cookie"})
#: A key naming a credential, anywhere in it, any case (one compiled scan instead of one per word).
_SECRET_KEY = re.compile("|".join(sorted(_SECRET_KEYS)), re.IGNORECASE)


#: Reserved keys a deferred event carries from its call to the pipeline: the time of the call
#: (seconds since the epoch) and the event id given to it then. Each is removed by its processor.
CAPTURED_AT = "_audit_captured_at"
CAPTURED_ID = "_audit_captured_id"


class AddTimestamp:
    """`ts`: RFC 3339 UTC with microseconds; the time of the call when it was captured then."""

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        at = event.pop(CAPTURED_AT, None)
        event["ts"] = rfc3339(at if isinstance(at, float) else time.time())
        return event


def rfc3339(seconds: float) -> str:
    """Seconds since the epoch as RFC 3339 UTC with microseconds (`2026-11-26T14:42:26.173635Z`)."""
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")


class AddEventId:
    """`event_id`: unique per event, so a SIEM can deduplicate; the one given at the call, if any."""

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        given = event.pop(CAPTURED_ID, None)
        event["event_id"] = given if isinstance(given, str) else uuid.uuid4().hex
        return event


class AddTraceContext:
    """`trace_id` and `span_id` of the current OpenTelemetry span, when there is one."""

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event.setdefault("trace_id", format(context.trace_id, "032x"))
            event.setdefault("span_id", format(context.span_id, "016x"))
        return event


class RecordCode:
    """`code` (the submitted command or source) as the policy says: HMAC-SHA256 (default), full or none.

    HMAC with a configured key lets an investigator check "was this exact code run?" without the
    log holding the code. The mode can change on a policy reload.
    """

    def __init__(self, mode: CodeMode = "hmac", key: bytes | None = None) -> None:
        self.mode: CodeMode = mode
        self._key = key if key else uuid.uuid4().bytes + uuid.uuid4().bytes

    def digest(self, text: str) -> dict[str, str] | None:
        """`text` as the policy has code recorded: its HMAC, itself, or nothing."""
        if self.mode == "none":
            return None
        if self.mode == "full":
            return {"text": text}
        return {"hmac_sha256": hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()}

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        code = event.pop("code", None)
        recorded = self.digest(code) if isinstance(code, str) else None
        if recorded is not None:
            event["code"] = recorded
        return event


class RedactSecrets:
    """Drops the value of any key that names a credential, at any depth."""

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        redacted: EventDict = _redact(event)
        return redacted


#: Values with nothing inside to redact (exact types: a subclass takes the general checks).
_LEAVES = frozenset({str, int, float, bool, type(None)})
#: Keys already judged (the gateway's own field names, mostly); bounded, past that judged each time.
_KEY_VERDICTS: dict[str, bool] = {}
_KEYS_REMEMBERED = 4096


def _names_a_secret(key: object) -> bool:
    text = str(key)
    verdict = _KEY_VERDICTS.get(text)
    if verdict is None:
        verdict = _SECRET_KEY.search(text) is not None
        if len(_KEY_VERDICTS) < _KEYS_REMEMBERED:
            _KEY_VERDICTS[text] = verdict
    return verdict


def _redact(value: Any) -> Any:
    if isinstance(value, MutableMapping):
        for key in list(value):
            secret = _KEY_VERDICTS.get(key)
            if secret is None:
                secret = _names_a_secret(key)
            if secret:
                value[key] = "[redacted]"
            else:
                item = value[key]
                if type(item) not in _LEAVES:
                    value[key] = _redact(item)
    elif isinstance(value, list):
        return [item if type(item) in _LEAVES else _redact(item) for item in value]
    return value


class Structure:
    """Moves flat keys into the schema's groups (actor, decision, resource, outcome, limits, detail)."""

    def __call__(self, logger: object, method: str, event: EventDict) -> EventDict:
        out: dict[str, Any] = {}
        for key, value in event.items():
            if value is None:
                continue
            if key in TOP_LEVEL:
                out[key] = value
            elif key in GROUPS:
                group, name = GROUPS[key]
                out.setdefault(group, {})[name] = value
            else:
                out.setdefault("detail", {})[key] = value
        return out


class ChainHashes:
    """Adds `prev_hash` and `hash`, and renders the line: the last processor. The head moves only
    when the line was written (commit).

    The line is the canonical JSON of the event with its hash, and the hash covers the canonical
    JSON of the event without it. Keys are sorted, so the line is that text with `"hash":...`
    spliced in between the keys that sort before "hash" and those after: one encoding serves both.
    """

    def __init__(self, head: str) -> None:
        self.head = head
        self._pending: str | None = None
        self.lock = threading.Lock()

    def __call__(self, logger: object, method: str, event: EventDict) -> str:
        event.pop("hash", None)  # the chain's own field: never one a caller sets
        event["prev_hash"] = self.head
        before = canonical({key: value for key, value in event.items() if key < "hash"})
        after = canonical({key: value for key, value in event.items() if key > "hash"})
        # Both hold a key ("event" sorts before "hash", "prev_hash" after), so neither is "{}".
        digest = hashlib.sha256(f"{self.head}{before[:-1]},{after[1:]}".encode()).hexdigest()
        self._pending = digest
        return f'{before[:-1]},"hash":"{digest}",{after[1:]}'

    def commit(self) -> None:
        if self._pending is not None:
            self.head, self._pending = self._pending, None

    def rollback(self) -> None:
        self._pending = None
