"""Where a new sandbox goes: rendezvous (highest random weight) hashing, weighted.

Every host gets a score for the sandbox's name: a uniform number u in (0, 1) drawn from a hash of
the name and the host, turned into `-weight / ln(u)`. The highest score wins. A host is chosen with
probability proportional to its weight, the same name always ranks the hosts the same way while the
weights stand, and when a host joins or leaves only the names whose best host changes move: about
1/N of them. No gateway needs to ask another: the same inputs give the same answer everywhere.

The weight is a host's free capacity, so fuller hosts take fewer new sandboxes. On its own that
evens the fleet out only slowly (60 sandboxes over 3 hosts often end 12/20/28), so placement also
bounds each host's load (consistent hashing with bounded loads): a host already more than `factor`
times as full as the fleet would be with the new sandbox (relative to its capacity) is passed over.
The preference order stays the name's own; only overfull hosts are skipped.

The hash is a splitmix64 mix of one 64-bit hash of the name and one of the host, which
`bench.placement` computes the same way, vectorised, for its simulation.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BALANCE", "Candidate", "Load", "bounded", "choose", "mix64", "rank", "score", "stable_hash"]

#: A host may hold at most this many times its share of the fleet's sandboxes (with the new one).
BALANCE = 1.05

_MASK = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Candidate:
    """A host that may take the sandbox, with its weight (its free capacity; > 0)."""

    name: str
    weight: float


@dataclass(frozen=True, slots=True)
class Load:
    """A host that may take the sandbox: how many it holds and may hold."""

    name: str
    used: int
    capacity: int


def bounded(hosts: Sequence[Load], factor: float = BALANCE) -> list[Candidate]:
    """The hosts with room, weighted by free capacity, without those already over `factor` times
    their share of all sandboxes (the new one counted); all with room when every one is over."""
    roomy = [h for h in hosts if h.used < h.capacity]
    if not roomy:
        return []
    total_used = sum(h.used for h in roomy) + 1
    total_capacity = sum(h.capacity for h in roomy)
    fair = [h for h in roomy if h.used < math.ceil(factor * total_used * h.capacity / total_capacity)]
    return [Candidate(h.name, float(h.capacity - h.used)) for h in fair or roomy]


def stable_hash(text: str) -> int:
    """A 64-bit hash of `text` that is the same in every process (unlike `hash()`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def mix64(value: int) -> int:
    """splitmix64's finaliser: every bit of the input moves about half the bits of the output."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK
    return value ^ (value >> 31)


def score(name_hash: int, host_hash: int, weight: float) -> float:
    """The host's score for the name: -weight / ln(u), u uniform in (0, 1) from both hashes."""
    unit = ((mix64(name_hash ^ host_hash) >> 11) + 0.5) / float(1 << 53)
    return -weight / math.log(unit)


def rank(name: str, candidates: Sequence[Candidate]) -> list[str]:
    """The candidates' names, best first (ties, which do not happen in practice, by name)."""
    name_hash = stable_hash(name)
    scored = [(score(name_hash, stable_hash(c.name), c.weight), c.name) for c in candidates if c.weight > 0]
    return [host for _, host in sorted(scored, key=lambda item: (-item[0], item[1]))]


def choose(name: str, candidates: Sequence[Candidate]) -> str | None:
    """The best host for `name`, or None when no candidate has room."""
    ranked = rank(name, candidates)
    return ranked[0] if ranked else None
