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
from bench.stats import Series

__all__ = [
    "FALLBACK",
    "FAST",
    "LEGEND",
    "LLM_SANDBOX_METHOD",
    "RAW_PROXY",
    "RAW_UNIX",
    "expected_rows",
    "render",
    "render_stages",
    "targets",
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


def _ms(value: object) -> str:
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
            f"{row['workload']:<30} {row['variant']:<38} {row['n']:>5} {_ms(row['p50_ms']):>8} "
            f"{_ms(row['p95_ms']):>8} {_ms(row['p99_ms']):>8} "
            f"{'-' if math.isnan(rate) else f'{rate:.1f}':>8} {row['errors']:>6} "
            f"{_ms(row['inner_exec_p50_ms']):>8}  {row['note']}".rstrip()
        )
    return "\n".join(lines)


def _find(series: list[Series], workload: str, variant: str) -> dict[str, Any] | None:
    for one in series:
        if one.workload == workload and one.variant == variant:
            return one.summary()
    return None


def targets(
    series: list[Series], levels: tuple[int, ...], spawn_ms: tuple[float, float] | None = None
) -> tuple[list[str], dict[str, Any]]:
    """The issue's three targets as lines and as JSON, plus where the fast path's time goes."""
    lines: list[str] = []
    out: dict[str, Any] = {}

    def p50(workload: str, variant: str) -> float:
        row = _find(series, workload, variant)
        return float(row["p50_ms"]) if row and row["n"] else math.nan

    fast = p50("true", FAST)
    for raw, key in ((RAW_PROXY, "raw_proxy_over_fast_p50"), (RAW_UNIX, "raw_unix_over_fast_p50")):
        ratio = p50("true", raw) / fast if fast else math.nan
        out[key] = ratio
        verdict = "met" if ratio >= 4 else "missed" if not math.isnan(ratio) else "not measured"
        lines.append(f"`true`: {raw} p50 / fast path p50 = {ratio:.2f}x (target >= 4x): {verdict}")
    first = p50(FIRST, first_variant(FAST, True))
    out["first_call_warm_pool_fast_p50_ms"] = first
    verdict = "met" if first < 50 else "missed" if not math.isnan(first) else "not measured"
    lines.append(
        f"first call by a new principal, fast path, warm pool: p50 {first:.1f} ms (target < 50 ms): {verdict}"
    )
    top = max(levels)
    for path in (FAST, FALLBACK):
        row = _find(series, throughput_workload(top), path)
        errors = row["errors"] if row else "not measured"
        out[f"errors_at_{top}_{'fast' if path == FAST else 'fallback'}"] = errors
        lines.append(f"errors with {top} concurrent principals, {path}: {errors} (target 0)")
    for path, key in ((FAST, "fast"), (FALLBACK, "fallback")):
        alone, loaded = _find(series, BYSTANDER_ALONE, path), _find(series, BYSTANDER_LOADED, path)
        if alone is None or loaded is None:
            continue
        out[f"bystander_{key}_ms"] = {
            "alone_p50": alone["p50_ms"],
            "alone_p99": alone["p99_ms"],
            "loaded_p50": loaded["p50_ms"],
            "loaded_p99": loaded["p99_ms"],
        }
        lines.append(
            f"a bystander's `true`, {path}: p50/p99 {_ms(alone['p50_ms'])}/{_ms(alone['p99_ms'])} ms with "
            f"the neighbours idle, {_ms(loaded['p50_ms'])}/{_ms(loaded['p99_ms'])} ms with them at full load "
            f"({loaded['note']})"
        )
    kept, fresh = p50(STATEFUL, KEPT), p50(STATEFUL, NEW_PROCESS)
    out["stateful_p50_ms"] = {"run_python": kept, "execute_python": fresh}
    lines.append(
        f"`x += 1`: run_python (kept interpreter) p50 {kept:.1f} ms, execute_python (a new process each "
        f"call) p50 {fresh:.1f} ms"
    )
    info, inner = p50(INFO, FAST), _find(series, "true", FAST)
    inner_p50 = float(inner["inner_exec_p50_ms"]) if inner else math.nan
    out["fast_true_breakdown_ms"] = {
        "client_p50": fast,
        "gateway_exec_p50": inner_p50,
        "sandbox_info_p50": info,
        "spawn_true_median": spawn_ms[0] if spawn_ms else math.nan,
        "spawn_timeout_bash_true_median": spawn_ms[1] if spawn_ms else math.nan,
    }
    lines.append(
        f"where the fast path's `true` goes: {fast:.1f} ms at the client, of which the gateway's "
        f"docker.exec (agent round trip) p50 {inner_p50:.1f} ms; an MCP call that reaches no engine "
        f"(sandbox_info) p50 {info:.1f} ms"
    )
    if spawn_ms:
        lines.append(
            f"inside a sandbox, spawning `true` takes {spawn_ms[0]:.1f} ms and what a call runs, "
            f"`timeout --kill-after=2 30s bash -c true`, {spawn_ms[1]:.1f} ms (median of 30)"
        )
    return lines, out
