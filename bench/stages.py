"""Where one call's time goes, from the gateway's own spans: a stage table and a proportional bar.

The gateway records each stage as an integer-microsecond attribute `sandbox_gateway.stage.<name>_us`
on the MCP SDK's SERVER span `tools/call <tool>`. Each call is matched to its span by trace id (the
benchmark sends its own `traceparent` in the request's `_meta`), and what the span does not cover,
"client, transport and response write" = end to end at the client - gateway_us - sandbox_us, is
worked out per call before its percentiles are taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.otlp import SERVER, SpanRecord
from bench.stats import percentile

__all__ = [
    "CLIENT_REST",
    "END_TO_END",
    "GATEWAY",
    "STAGES",
    "StageSample",
    "bars",
    "join",
    "render",
    "stage_values",
    "summarise",
]

PREFIX = "sandbox_gateway.stage."
#: The gateway's stages in the order a call passes them (audit runs in between several of them).
STAGES: tuple[tuple[str, str], ...] = (
    ("http_in", "HTTP and MCP framing in"),
    ("auth", "authentication"),
    ("rate", "rate limits"),
    ("policy", "policy"),
    ("audit", "audit writes"),
    ("broker", "broker (rest of the handler)"),
    ("sandbox", "sandbox round trip"),
    ("encode", "result encoding"),
)
GATEWAY = "gateway"
CLIENT_REST = "client_rest"
END_TO_END = "end_to_end"
LABELS = dict(STAGES) | {
    GATEWAY: "gateway's own time (sum, without sandbox)",
    CLIENT_REST: "client, transport and response write",
    END_TO_END: "end to end at the client",
}
#: The parts a bar is made of: they add up to the end-to-end time of each call.
PARTS = (*(name for name, _ in STAGES), CLIENT_REST)


@dataclass(frozen=True)
class StageSample:
    """One call: its client-measured latency and the stages its span carried (µs)."""

    end_to_end_us: float
    stages: dict[str, int]

    @property
    def client_rest_us(self) -> float | None:
        """End to end minus the gateway's own time and the sandbox round trip; None without gateway_us."""
        gateway = self.stages.get(GATEWAY)
        if gateway is None:
            return None
        return self.end_to_end_us - gateway - self.stages.get("sandbox", 0)


def stage_values(attributes: dict[str, Any]) -> dict[str, int]:
    """`sandbox_gateway.stage.<name>_us` integer attributes as {name: µs}; anything else is ignored."""
    out = {}
    for key, value in attributes.items():
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if key.startswith(PREFIX) and key.endswith("_us") and is_int:
            out[key[len(PREFIX) : -len("_us")]] = value
    return out


def join(spans: list[SpanRecord], tool: str, calls: dict[str, float]) -> tuple[list[StageSample], int]:
    """Pair each call (trace id -> end to end µs) with the SERVER span `tools/call <tool>` of its
    trace. Returns the pairs, in the calls' order, and how many calls had no such span."""
    name = f"tools/call {tool}"
    by_trace = {span.trace_id: span for span in spans if span.name == name and span.kind == SERVER}
    samples = [
        StageSample(elapsed, stage_values(by_trace[trace].attributes))
        for trace, elapsed in calls.items()
        if trace in by_trace
    ]
    return samples, len(calls) - len(samples)


def _quantiles(values: list[float]) -> dict[str, float | int]:
    ordered = sorted(values)
    return {"n": len(ordered), "p50_us": percentile(ordered, 50), "p90_us": percentile(ordered, 90)}


def summarise(samples: list[StageSample], missing_spans: int = 0) -> dict[str, Any]:
    """p50/p90 per stage (over the calls that carried it), of the gateway's sum, the end-to-end time
    and the client's rest; `stages_seen` is False when no span carried any stage attribute."""
    names = [name for name, _ in STAGES] + [GATEWAY]
    stages = {
        name: _quantiles([float(s.stages[name]) for s in samples if name in s.stages]) for name in names
    }
    rests = [rest for s in samples if (rest := s.client_rest_us) is not None]
    return {
        "calls": len(samples),
        "missing_spans": missing_spans,
        "stages_seen": any(s.stages for s in samples),
        END_TO_END: _quantiles([s.end_to_end_us for s in samples]),
        "stages": stages,
        CLIENT_REST: _quantiles(rests),
    }


def _row(summary: dict[str, Any], name: str) -> dict[str, Any]:
    if name in (END_TO_END, CLIENT_REST):
        return dict(summary[name])
    return dict(summary["stages"][name])


def _us(value: object) -> str:
    return "-" if not isinstance(value, int | float) or math.isnan(value) else f"{value:,.0f}"


def render(breakdowns: dict[str, dict[str, Any]]) -> str:
    """One table, a p50/p90 column pair per workload (µs), stages in call order."""
    titles = list(breakdowns)
    width = max(len(label) for label in LABELS.values())
    header = f"{'stage (µs)':<{width}}" + "".join(f" | {title[:21]:^21}" for title in titles)
    sub = f"{'':<{width}}" + "".join(f" | {'p50':>10} {'p90':>10}" for _ in titles)
    lines = [header, sub, "-" * len(sub)]
    order = [name for name, _ in STAGES] + [GATEWAY, CLIENT_REST, END_TO_END]
    for name in order:
        cells = []
        for title in titles:
            row = _row(breakdowns[title], name)
            cells.append(f" | {_us(row['p50_us']):>10} {_us(row['p90_us']):>10}")
        lines.append(f"{LABELS[name]:<{width}}" + "".join(cells))
    lines.append(f"{'calls matched to a span':<{width}}" + "".join(
        f" | {breakdowns[t]['calls']:>10} {'':>10}" for t in titles
    ))  # fmt: skip
    return "\n".join(lines)


EIGHTHS = " ▏▎▍▌▋▊▉"


def _bar(offset: float, length: float) -> str:
    """Spaces up to `offset` columns (rounded), then a block `length` columns long, in eighths of a
    column, at least one eighth."""
    full, part = divmod(max(1, round(length * 8)), 8)
    return " " * round(offset) + "█" * full + EIGHTHS[part].strip()


def bars(summary: dict[str, Any], width: int = 60) -> str:
    """Each part's p50 as a bar on one time axis, one after the other (a waterfall: the call runs
    top to bottom); the axis is the sum of the parts' p50s, so each bar's length is its share."""
    parts = [(name, float(_row(summary, name)["p50_us"])) for name in PARTS]
    parts = [(name, value) for name, value in parts if not math.isnan(value) and value > 0]
    total = sum(value for _, value in parts)
    if total <= 0:
        return "(no stage figures)"
    label_width = max(len(LABELS[name]) for name, _ in parts)
    lines, offset = [], 0.0
    for name, value in parts:
        length = value / total * width
        share = f"{value / total:>4.0%}"
        lines.append(f"{LABELS[name]:<{label_width}} {_us(value):>7} µs {share} |{_bar(offset, length)}")
        offset += length
    lines.append(
        f"{'sum of the p50s':<{label_width}} {_us(total):>7} µs      "
        f"(end to end p50 {_us(summary[END_TO_END]['p50_us'])} µs)"
    )
    return "\n".join(lines)
