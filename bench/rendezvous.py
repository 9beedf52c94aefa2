"""`gateway.fleet.placement`'s score, vectorised with numpy over hosts, and a fleet that places names
one after another the way the gateway does (free-capacity weights, optionally bounded loads).

The arithmetic is the reference's, step for step: splitmix64 on uint64 arrays (numpy's uint64 array
arithmetic wraps modulo 2**64, which is what the reference's `& _MASK` does; every constant is an
np.uint64 so nothing is promoted to int64 or float), then u = ((x >> 11) + 0.5) / 2**53 in float64
and score = -weight / ln(u). Ties, which do not happen in practice, go to the lowest host index;
the reference breaks them by name, so host names sort in index order (`host_names`).
`check` compares both implementations; the simulation runs it first and the tests run it too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.fleet.placement import Candidate, Load, bounded, choose, score, stable_hash

__all__ = ["Fleet", "best", "check", "hashes", "host_names", "log_units", "mix64", "principal_names"]

Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Hashes = NDArray[np.uint64]

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_TWO_53 = float(1 << 53)


def host_names(count: int, seed: int) -> list[str]:
    """Host names whose sort order is their index order (so ties break alike), up to a million."""
    return [f"s{seed}-host-{j:06d}" for j in range(count)]


def principal_names(count: int, seed: int) -> list[str]:
    return [f"s{seed}-principal-{i}" for i in range(count)]


def hashes(names: Sequence[str]) -> Hashes:
    """`stable_hash` of every name (blake2b, as the gateway computes it)."""
    return np.fromiter((stable_hash(name) for name in names), dtype=np.uint64, count=len(names))


def mix64(values: Hashes) -> Hashes:
    """splitmix64's finaliser on every element (a new array)."""
    x = values.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _C1
    x ^= x >> np.uint64(27)
    x *= _C2
    x ^= x >> np.uint64(31)
    return x


def log_units(name_hashes: Hashes, host_hashes: Hashes) -> Floats:
    """ln(u) for every (name, host): shape (names, hosts), all < 0. The score is -weight / this."""
    mixed = mix64(name_hashes[:, None] ^ host_hashes[None, :])
    mixed >>= np.uint64(11)
    units = mixed.astype(np.float64)
    units += 0.5
    units /= _TWO_53
    return np.log(units, out=units)


def chunks(name_hashes: Hashes, host_hashes: Hashes, size: int = 2048) -> Iterator[tuple[int, Floats]]:
    """(first row, ln(u) of `size` names over every host), so memory stays at size x hosts."""
    for start in range(0, len(name_hashes), size):
        yield start, log_units(name_hashes[start : start + size], host_hashes)


def best(logs: Floats, weights: Floats) -> Ints:
    """The best host of each row: the highest -weight / ln(u); a weight <= 0 never wins."""
    scores = -weights / logs
    scores[:, weights <= 0] = -np.inf
    return np.asarray(np.argmax(scores, axis=1), dtype=np.int64)


@dataclass
class Fleet:
    """Hosts that take names one at a time: weight = free capacity; with `factor`, a host over that
    many times its share is passed over (`gateway.fleet.placement.bounded`, computed the same way)."""

    capacity: Ints
    factor: float | None = None

    def __post_init__(self) -> None:
        self.used: Ints = np.zeros(len(self.capacity), dtype=np.int64)
        self.free: Floats = self.capacity.astype(np.float64)
        self.placed = 0
        self._share = self.capacity.astype(np.float64)
        self._smallest = int(self.capacity.min())
        self._total = int(self.capacity.sum())

    def place(self, logs_row: Floats) -> int:
        """Place one name (its ln(u) over the hosts); the chosen host's index, or -1 when all are full."""
        roomy = None  # None: every host has room
        if self.placed >= self._smallest:
            roomy = self.used < self.capacity
            if not roomy.any():
                return -1
            if roomy.all():
                roomy = None
        scores = -self.free / logs_row
        if self.factor is not None:
            if roomy is None:
                total_used, total_capacity = self.placed + 1, self._total
            else:
                total_used = int(self.used[roomy].sum()) + 1
                total_capacity = int(self.capacity[roomy].sum())
            limit = np.ceil(self.factor * total_used * self._share / total_capacity)
            fair = self.used < limit
            if roomy is not None:
                fair &= roomy
            if fair.any():
                roomy = fair
        if roomy is not None:
            scores[~roomy] = -np.inf
        host = int(np.argmax(scores))
        self.used[host] += 1
        self.free[host] -= 1.0
        self.placed += 1
        return host


def _reference_sequence(names: list[str], hosts: list[str], capacity: list[int], factor: float) -> list[int]:
    """The gateway's own functions, one name after another: `bounded` then `choose`."""
    used = dict.fromkeys(hosts, 0)
    order = []
    for name in names:
        chosen = choose(
            name, bounded([Load(h, used[h], c) for h, c in zip(hosts, capacity, strict=True)], factor)
        )
        if chosen is None:
            order.append(-1)
            continue
        used[chosen] += 1
        order.append(hosts.index(chosen))
    return order


def check(seed: int, names: int = 2000, hosts: int = 50) -> dict[str, Any]:
    """Compare with `gateway.fleet.placement`: the best host of `names` names over `hosts` hosts with
    equal and with random weights (scores too), and a sequence of placements with bounded loads."""
    rng = np.random.default_rng(seed)
    name_list = principal_names(names, seed)
    host_list = host_names(hosts, seed)
    name_hashes, host_hashes = hashes(name_list), hashes(host_list)
    logs = log_units(name_hashes, host_hashes)
    mismatches, worst = 0, 0.0
    for weights in (np.ones(hosts), rng.integers(1, 300, hosts).astype(np.float64)):
        chosen = best(logs, weights)
        candidates = [Candidate(h, float(w)) for h, w in zip(host_list, weights, strict=True)]
        for i, name in enumerate(name_list):
            mismatches += choose(name, candidates) != host_list[int(chosen[i])]
        for i in range(0, names, 97):  # scores themselves, on a sample of rows
            for j in range(hosts):
                reference = score(int(name_hashes[i]), int(host_hashes[j]), float(weights[j]))
                worst = max(worst, abs(float(-weights[j] / logs[i, j]) - reference) / reference)
    small_hosts, small_names = 20, 1000
    capacity = [60 if j % 2 else 30 for j in range(small_hosts)]
    fleet = Fleet(np.array(capacity, dtype=np.int64), factor=1.1)
    seq_names = name_list[:small_names]
    seq_logs = log_units(hashes(seq_names), host_hashes[:small_hosts])
    vectorised = [fleet.place(seq_logs[i]) for i in range(small_names)]
    reference_order = _reference_sequence(seq_names, host_list[:small_hosts], capacity, 1.1)
    return {
        "names": names,
        "hosts": hosts,
        "best_host_mismatches": int(mismatches),
        "max_score_relative_difference": worst,
        "sequence_placements": small_names,
        "sequence_mismatches": sum(a != b for a, b in zip(vectorised, reference_order, strict=True)),
        "equal": mismatches == 0 and vectorised == reference_order,
    }
