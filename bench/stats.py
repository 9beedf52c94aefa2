"""Samples of one variant and their summary (nearest-rank percentiles, throughput)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Series", "percentile"]


def percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted samples (nan when there are none)."""
    if not sorted_ms:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_ms)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


@dataclass
class Series:
    """Latencies (ms) of one workload on one variant, the errors met, and the wall time they took."""

    workload: str
    variant: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    #: The gateway's own `docker.exec` durations (audit events) for the same calls, when known.
    inner_ms: list[float] = field(default_factory=list)
    note: str = ""
    #: CPU per call by group while the row was measured (bench/cpu.py), when it was.
    cpu_ms: dict[str, float] = field(default_factory=dict)

    def error(self, message: str) -> None:
        self.errors.append(message[:300])

    def summary(self) -> dict[str, object]:
        ordered = sorted(self.latencies_ms)
        inner = sorted(self.inner_ms)
        return {
            "workload": self.workload,
            "variant": self.variant,
            "n": len(ordered),
            "p50_ms": percentile(ordered, 50),
            "p95_ms": percentile(ordered, 95),
            "p99_ms": percentile(ordered, 99),
            "mean_ms": sum(ordered) / len(ordered) if ordered else math.nan,
            "calls_per_s": len(ordered) / self.wall_s if self.wall_s > 0 else math.nan,
            "errors": len(self.errors),
            "error_samples": sorted(set(self.errors))[:5],
            "inner_exec_p50_ms": percentile(inner, 50),
            "note": self.note,
            "cpu_ms_per_call": dict(self.cpu_ms),
        }
