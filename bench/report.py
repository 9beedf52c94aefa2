"""The table, the target checks and the JSON document."""

from __future__ import annotations

import math
from typing import Any

from bench.calls import WORKLOADS
from bench.comparison import LLM_SANDBOX, LLM_WORKLOADS
from bench.stage_phase import SPANS_NOTE
from bench.stages import bars
from bench.stages import render as render_stage_table
from bench.stateful import KEPT, NEW_PROCESS, STATEFUL
from bench.streaming import STREAM

__all__ = [
    "FALLBACK",
    "FAST",
    "LEGEND",
    "LLM_SANDBOX_METHOD",
    "RAW_PROXY",
    "RAW_UNIX",
    "expected_rows",
    "first_variant",
    "ms_text",
    "render",
    "render_stages",
    "throughput_workload",
]

RAW_PROXY = "raw exec_run (proxy)"
RAW_UNIX = "raw exec_run (unix socket)"
RAW_FIRST = "raw create+start+exec_run (proxy)"
FAST = "gateway fast path (agent)"
FALLBACK = "gateway fallback (exec)"
FIRST = "first call (new principal)"
INFO = "sandbox_info (no engine call)"
#: A bystander's `true` (its sandbox running), with 8 neighbours idle, then each at its max_concurrent.
BYSTANDER_ALONE = "bystander, neighbours idle"
BYSTANDER_LOADED = "bystander, neighbours busy"


def first_variant(path: str, pool: bool) -> str:
    return f"{path}, {'warm pool' if pool else 'no pool'}"


def throughput_workload(level: int) -> str:
    return f"throughput, {level} principals"


def expected_rows(levels: tuple[int, ...]) -> list[tuple[str, str]]:
    """Every (workload, variant) row a run prints, in order."""
    llm = {workload for workload, _ in LLM_WORKLOADS.values()}
    rows = [
        (w, v)
        for w in WORKLOADS
        for v in (RAW_PROXY, RAW_UNIX, *((LLM_SANDBOX,) if w in llm else ()), FAST, FALLBACK)
    ]
    rows += [(STREAM, FAST), (STREAM, FALLBACK)]
    rows += [(FIRST, RAW_FIRST)]
    rows += [(FIRST, first_variant(path, pool)) for path in (FAST, FALLBACK) for pool in (True, False)]
    rows += [(INFO, FAST), (INFO, FALLBACK)]
    rows += [(STATEFUL, KEPT), (STATEFUL, NEW_PROCESS)]
    rows += [(throughput_workload(level), path) for level in levels for path in (FAST, FALLBACK)]
    rows += [
        (workload, path) for path in (FAST, FALLBACK) for workload in (BYSTANDER_ALONE, BYSTANDER_LOADED)
    ]
    return rows


LLM_SANDBOX_METHOD = (
    f"{LLM_SANDBOX}: one session kept open on the same image and engine (its own container settings: "
    "root, no hardening; network off), warm calls timed in its own process"
)


def render_stages(breakdowns: dict[str, dict[str, Any]]) -> str:
    """The per-stage table and a bar per workload, or why there is none."""
    lines = [f"Where the time goes, from the gateway's own spans ({SPANS_NOTE}):", ""]
    if not any(one.get("stages_seen") for one in breakdowns.values()):
        lines.append(
            "no stage figures: the gateway's spans carried no sandbox_gateway.stage.* attributes "
            "(a gateway that records them is needed)"
        )
    else:
        lines += [render_stage_table(breakdowns), ""]
        for title, summary in breakdowns.items():
            lines += [f"{title}: p50 of each part, in call order", bars(summary), ""]
    for title, summary in breakdowns.items():
        if summary.get("errors") or summary.get("missing_spans"):
            lines.append(
                f"{title}: {summary.get('errors', 0)} errors, {summary.get('missing_spans', 0)} calls "
                f"without a span {summary.get('error_samples') or ''}".rstrip()
            )
    return "\n".join(lines).rstrip()


def ms_text(value: object) -> str:
    return "-" if not isinstance(value, float) or math.isnan(value) else f"{value:.1f}"


LEGEND = (
    "p50/p95/p99: latency of one call at the client; calls/s: calls answered / wall time (rows other "
    "than throughput have one caller); exec p50: the gateway's own docker.exec operation for the same "
    "calls (from its audit events), i.e. the part spent reaching the sandbox and running the command"
)


def render(summaries: list[dict[str, Any]]) -> str:
    header = (
        f"{'workload':<30} {'variant':<38} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'calls/s':>8} {'errors':>6} {'exec p50':>8}  note"
    )
    lines = [header, "-" * len(header)]
    for row in summaries:
        rate = row["calls_per_s"]
        lines.append(
            f"{row['workload']:<30} {row['variant']:<38} {row['n']:>5} {ms_text(row['p50_ms']):>8} "
            f"{ms_text(row['p95_ms']):>8} {ms_text(row['p99_ms']):>8} "
            f"{'-' if math.isnan(rate) else f'{rate:.1f}':>8} {row['errors']:>6} "
            f"{ms_text(row['inner_exec_p50_ms']):>8}  {row['note']}".rstrip()
        )
    return "\n".join(lines)
