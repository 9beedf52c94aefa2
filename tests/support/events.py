"""Audit events as the tests read them: from a gateway's audit file (JSON lines) or an in-memory sink,
picked by name and by field.

Fields are matched by the flat names the gateway emits them with (`audit.schema.GROUPS`): a top-level
field by its name (`tool`, `request_id`), a grouped one by its flat name (`principal` is
`actor.principal`, `outcome` is `outcome.status`, `decision` is `decision.result`, `limit` is
`limits.limit`), and any other name is a key of `detail` (`reason`, `of`, `pool`). A field an event
does not carry matches None.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from audit import MemorySink
from audit.schema import GROUPS, TOP_LEVEL

__all__ = ["Event", "audit_events", "field", "matching", "read_events", "settled_events"]

Event = dict[str, Any]


def read_events(source: Path | MemorySink, *, text_lines: bool = False) -> list[Event]:
    """Every event of `source`, in order. A file is read as it stands: a last line still being
    written (no newline yet) is left for the next read. With `text_lines`, lines that are not JSON
    objects (a log that mixes both, like the socket proxy's) are passed over; otherwise every line
    must be an event."""
    if isinstance(source, MemorySink):
        lines = list(source.lines)
    else:
        text = source.read_text()
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    if text_lines:
        lines = [line for line in lines if line.startswith("{")]
    return [json.loads(line) for line in lines]


def field(event: Event, name: str) -> Any:
    """The value of a flat field name in `event` (see the module's docstring), or None."""
    if name in TOP_LEVEL:
        return event.get(name)
    group, key = GROUPS.get(name, ("detail", name))
    return (event.get(group) or {}).get(key)


def matching(events: Iterable[Event], event: str | None = None, /, **match: Any) -> list[Event]:
    """The events named `event` (any, when None) whose fields hold the given values."""
    return [
        one
        for one in events
        if (event is None or one.get("event") == event)
        and all(field(one, name) == value for name, value in match.items())
    ]


def audit_events(
    source: Path | MemorySink, event: str | None = None, /, *, text_lines: bool = False, **match: Any
) -> list[Event]:
    """The events of `source` named `event` whose fields hold the given values, e.g.
    `audit_events(gateway.audit_log, "exec.finish", principal="bob", outcome="ok")`."""
    return matching(read_events(source, text_lines=text_lines), event, **match)


def settled_events(
    source: Path | MemorySink, event: str | None = None, /, *, timeout_s: float = 30, **match: Any
) -> list[Event]:
    """`audit_events`, once every execution started in `source` has its `exec.finish`: that event
    (and `docker.exec` before it) is written off the call's path, moments after the answer. For
    reading after the calls of interest have returned."""
    from tests.support.waiting import eventually

    def finished() -> list[Event]:
        events = read_events(source)
        started = {e.get("request_id") for e in matching(events, "exec.start")}
        ended = {e.get("request_id") for e in matching(events, "exec.finish")}
        return events if started <= ended else []

    return matching(
        eventually(finished, timeout_s=timeout_s, message="every exec.start finished"), event, **match
    )
