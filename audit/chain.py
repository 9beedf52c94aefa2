"""The hash chain: each event carries `prev_hash` and `hash = sha256(prev_hash || canonical JSON)`.

Editing, deleting, inserting or reordering a line breaks the chain at that line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["GENESIS", "ChainReport", "canonical", "link_hash", "verify_lines"]

#: prev_hash of the very first event of a log.
GENESIS = "0" * 64


def canonical(event: dict[str, Any]) -> str:
    """The exact text hashed (and written): sorted keys, compact separators, ASCII only."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), default=str)


def link_hash(prev_hash: str, event_without_hash: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(event_without_hash)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of a verification: ok, or where and why it first broke."""

    ok: bool
    lines: int
    first_prev_hash: str | None = None
    last_hash: str | None = None
    broken_at: str | None = None  # "FILE:LINE"
    problem: str | None = None


def verify_lines(numbered: Iterable[tuple[str, str]], *, expect_genesis: bool = False) -> ChainReport:
    """Check (location, line) pairs in order. The first event may link to a rotated-away predecessor."""
    count, previous, first_prev = 0, None, None
    for where, line in numbered:
        count += 1
        try:
            event = json.loads(line)
            stated = event.pop("hash")
            prev = event["prev_hash"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return ChainReport(
                False, count, first_prev, previous, where, "not an audit event (JSON with hash)"
            )
        if first_prev is None:
            first_prev = prev
            if expect_genesis and prev != GENESIS:
                return ChainReport(
                    False, count, first_prev, previous, where, "the log does not start at genesis"
                )
        elif prev != previous:
            return ChainReport(
                False,
                count,
                first_prev,
                previous,
                where,
                "prev_hash does not match the line before: a line is missing, added or moved",
            )
        if link_hash(prev, event) != stated:
            return ChainReport(
                False, count, first_prev, previous, where, "hash mismatch: the line was edited"
            )
        previous = stated
    return ChainReport(True, count, first_prev, previous)
