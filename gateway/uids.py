"""Host uids for sandboxes: each sandbox runs as a uid (and gid) of its own, from one range.

Per-user kernel counters (processes, inotify instances and watches, message-queue bytes, pending
signals, keys) are kept per host uid. With a uid of its own, nothing one sandbox does to them is
felt by another sandbox or by a host account. The range must hold no host account; `setup` and
`serve` check /etc/passwd, /etc/group, /etc/subuid and /etc/subgid. The socket proxy accepts
exactly this range, and refuses a create whose uid another sandbox already has.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ConfigError

__all__ = ["DEFAULT_UID_RANGE", "UidRange", "host_accounts_in"]

#: Far above the ranges distributions hand out (accounts below 60000, subordinate ids from 100000).
DEFAULT_UID_RANGE = "2000000000-2000999999"
_ACCOUNT_FILES = ("/etc/passwd", "/etc/group")
_SUBORDINATE_FILES = ("/etc/subuid", "/etc/subgid")


@dataclass(frozen=True, slots=True)
class UidRange:
    """An inclusive range of host uids, `low-high`."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> UidRange:
        low_text, sep, high_text = text.strip().partition("-")
        if not sep or not low_text.isdigit() or not high_text.isdigit():
            raise ConfigError(f"sandbox uid range {text!r} is not LOW-HIGH, e.g. {DEFAULT_UID_RANGE}")
        low, high = int(low_text), int(high_text)
        if not 1000 <= low <= high < 2**31 - 1:
            raise ConfigError(f"sandbox uid range {text!r} must lie within 1000-2147483646, low <= high")
        if high - low < 63:
            raise ConfigError(f"sandbox uid range {text!r} is too small (at least 64 uids)")
        return cls(low, high)

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self.low <= uid <= self.high

    def pick(self, taken: Collection[int] = ()) -> int:
        """A random uid of the range that is not in `taken` (the socket proxy has the last word)."""
        size = self.high - self.low + 1
        for _ in range(64):
            uid = self.low + secrets.randbelow(size)
            if uid not in taken:
                return uid
        # Mostly taken: walk the whole range once from a random place.
        start = secrets.randbelow(size)
        for step in range(size):
            uid = self.low + (start + step) % size
            if uid not in taken:
                return uid
        raise ConfigError(f"every uid of the sandbox uid range {self} is taken; widen it")


def _ranges(root: Path) -> Iterator[tuple[str, int, int]]:
    for name in _ACCOUNT_FILES:
        path = root / name.lstrip("/")
        for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit():
                yield f"{name}: {fields[0]}", int(fields[2]), int(fields[2])
    for name in _SUBORDINATE_FILES:
        path = root / name.lstrip("/")
        for line in path.read_text(errors="replace").splitlines() if path.exists() else ():
            fields = line.split(":")
            if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                start = int(fields[1])
                yield f"{name}: {fields[0]}", start, start + int(fields[2]) - 1


def host_accounts_in(uids: UidRange, root: Path = Path("/")) -> list[str]:
    """Host accounts, groups and subordinate ranges that overlap `uids` (none is the only safe answer)."""
    return [what for what, low, high in _ranges(root) if low <= uids.high and high >= uids.low]
