"""Repeated events folded into one summary per source and window, in a table of bounded size.

A client that sends a thousand bad tokens, or keeps knocking past a rate limit, would otherwise
write a thousand lines and, through rotation, push older evidence out of the log. Instead:

- the first occurrence from a source in a window is written at once (and the first of each
  variant, such as another failure reason, so a revoked token is not hidden behind a flood of
  unknown ones): an alert fires without waiting for the window to end;
- the rest are counted, and when the window ends one summary carries the count, the first and
  last time and the count per variant;
- the table holds at most `capacity` sources. When it is full, a new source is not tracked on its
  own: it is counted in one overflow entry per event name, and the caller is told once per window
  so that it can say so.

A window starts at a source's first occurrence and lasts `window_s`. Pure logic: the clocks are
injected, and nothing here writes anything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["OTHER", "Key", "Observation", "RepeatTable", "Summary", "Variant"]

#: The fields that name a source, e.g. (("source_ip", "203.0.113.7"),), sorted by name.
Key = tuple[tuple[str, str], ...]
#: A field whose values are counted apart, and this occurrence's value, e.g. ("reason", "revoked").
Variant = tuple[str, str]
#: The value under which occurrences are counted once an entry holds `max_variants` of them.
OTHER = "other"


@dataclass(frozen=True, slots=True)
class Summary:
    """What a window saw from one source (or, with `overflow`, from every source not tracked)."""

    event: str
    key: Key
    count: int
    recorded: int
    first: float
    last: float
    window_s: float
    counts: dict[Variant, int]
    overflow: bool = False

    @property
    def suppressed(self) -> int:
        """Occurrences that got no line of their own."""
        return self.count - self.recorded


@dataclass(frozen=True, slots=True)
class Observation:
    """What the caller writes for one occurrence: ended windows first, then the rest."""

    closed: list[Summary]
    record: bool = False
    overflow_started: bool = False


@dataclass(slots=True)
class _Entry:
    started: float  # on the window clock
    first: float  # on the wall clock
    last: float
    count: int = 0
    recorded: int = 0
    counts: dict[Variant, int] = field(default_factory=dict)

    def add(self, wall: float, variant: Variant | None, max_variants: int, *, tracked: bool) -> bool:
        """Count one occurrence; True when it is to be written on its own."""
        self.count += 1
        self.last = wall
        first, other = self.count == 1, False
        if variant is not None:
            if variant not in self.counts and len(self.counts) >= max_variants:
                variant, other = (variant[0], OTHER), True
            first = first or variant not in self.counts
            self.counts[variant] = self.counts.get(variant, 0) + 1
        record = tracked and first and not other
        self.recorded += record
        return record

    def summary(self, event: str, key: Key, window_s: float, *, overflow: bool) -> Summary:
        return Summary(
            event,
            key,
            self.count,
            self.recorded,
            self.first,
            self.last,
            window_s,
            dict(self.counts),
            overflow,
        )


class RepeatTable:
    """observe(event, key, variant) -> Observation; expire() and drain() -> the summaries to write.

    Only windows in which something went unwritten produce a summary. Thread-safe.
    """

    def __init__(
        self,
        window_s: float = 60.0,
        capacity: int = 512,
        *,
        max_variants: int = 8,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s <= 0 or capacity < 1 or max_variants < 1:
            raise ValueError("a repeat table needs window_s > 0, capacity >= 1 and max_variants >= 1")
        self.window_s = window_s
        self.capacity = capacity
        self.max_variants = max_variants
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        # Every entry has the same window length and starts when it is inserted, so insertion
        # order is the order in which windows end: expiry looks at the front only.
        self._entries: dict[tuple[str, Key], _Entry] = {}
        self._overflow: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def observe(self, event: str, key: Key, variant: Variant | None = None) -> Observation:
        """Count one occurrence of `event` from the source `key`."""
        with self._lock:
            now, wall = self._clock(), self._wall()
            closed = self._expire(now)
            entry = self._entries.get((event, key))
            if entry is None and len(self._entries) >= self.capacity:
                spill = self._overflow.get(event)
                started = spill is None
                if spill is None:
                    spill = self._overflow[event] = _Entry(now, wall, wall)
                spill.add(wall, variant, self.max_variants, tracked=False)
                return Observation(closed, overflow_started=started)
            if entry is None:
                entry = self._entries[(event, key)] = _Entry(now, wall, wall)
            return Observation(closed, record=entry.add(wall, variant, self.max_variants, tracked=True))

    def expire(self) -> list[Summary]:
        """The summaries of windows that have ended; their sources are forgotten."""
        with self._lock:
            return self._expire(self._clock())

    def drain(self) -> list[Summary]:
        """Every open window's summary, ended or not (at shutdown, so nothing counted is lost)."""
        with self._lock:
            entries = [(event, key, entry, False) for (event, key), entry in self._entries.items()]
            entries += [(event, (), entry, True) for event, entry in self._overflow.items()]
            self._entries.clear()
            self._overflow.clear()
        return self._summaries(entries)

    def _ended(self, entry: _Entry, now: float) -> bool:
        return now - entry.started >= self.window_s

    def _expire(self, now: float) -> list[Summary]:
        ended: list[tuple[str, Key, _Entry, bool]] = []
        while self._entries:
            (event, key), entry = next(iter(self._entries.items()))
            if not self._ended(entry, now):
                break
            del self._entries[(event, key)]
            ended.append((event, key, entry, False))
        for event, entry in list(self._overflow.items()):
            if self._ended(entry, now):
                del self._overflow[event]
                ended.append((event, (), entry, True))
        return self._summaries(ended)

    def _summaries(self, entries: list[tuple[str, Key, _Entry, bool]]) -> list[Summary]:
        return [
            entry.summary(event, key, self.window_s, overflow=overflow)
            for event, key, entry, overflow in entries
            if entry.count > entry.recorded
        ]
