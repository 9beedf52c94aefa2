"""The performance goals, checked side by side in one run, and where the fast path's time goes.

Each goal prints as one line ending in `met`, `missed` or `not measured` (its part of the run did
not run, or its row had no sample); the JSON keeps the figure and the verdict under the goal's key.
Nothing here fails a run: the benchmark reports, it does not judge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench import report
from bench.cpu import cpu_line
from bench.report import (
    FALLBACK,
    FAST,
    FIRST,
    INFO,
    RAW_PROXY,
    RAW_UNIX,
    first_variant,
    throughput_workload,
)
from bench.report import ms_text as _ms
from bench.stateful import KEPT, NEW_PROCESS, STATEFUL
from bench.stats import Series
from bench.streaming import STREAM, mb_per_s

__all__ = ["GOALS", "goal_lines"]

#: key -> (what, unit, the bound, True when the figure must be at least the bound, else at most)
GOALS: dict[str, tuple[str, str, float, bool]] = {
    "warm_true_p50_ms": ("warm `execute_bash true`, fast path, p50", "ms", 5.0, False),
    "raw_proxy_over_fast_p50": ("raw exec_run through the proxy p50 / fast path `true` p50", "x", 8.0, True),
    "gateway_own_p50_ms": ("the gateway's own time per `true` (spans on), p50", "ms", 2.0, False),
    "calls_per_s_at_32": ("32 concurrent principals, fast path, no error", "calls/s", 400.0, True),
    "first_call_warm_pool_p50_ms": ("a new principal's first call, warm pool, p50", "ms", 25.0, False),
    "stream_mb_per_s": ("100 MB of output through one call (cap applies), fast path", "MB/s", 100.0, True),
}


def verdict(value: float, bound: float, at_least: bool) -> str:
    if math.isnan(value):
        return "not measured"
    return "met" if (value >= bound if at_least else value <= bound) else "missed"


def _row(series: list[Series], workload: str, variant: str) -> dict[str, Any] | None:
    for one in series:
        if one.workload == workload and one.variant == variant:
            return one.summary()
    return None


def _p50(series: list[Series], workload: str, variant: str) -> float:
    """The row's p50 (ms), nan when it did not run or had no sample."""
    row = _row(series, workload, variant)
    return float(row["p50_ms"]) if row and row["n"] else math.nan


def _figures(
    series: list[Series], levels: tuple[int, ...], stages: dict[str, Any] | None
) -> dict[str, float]:
    fast = _p50(series, "true", FAST)
    top = _row(series, throughput_workload(32), FAST) if 32 in levels else None
    rate = float(top["calls_per_s"]) if top and top["n"] and not top["errors"] else math.nan
    own = ((stages or {}).get("execute_bash true") or {}).get("stages", {}).get("gateway", {})
    return {
        "warm_true_p50_ms": fast,
        "raw_proxy_over_fast_p50": _p50(series, "true", RAW_PROXY) / fast if fast else math.nan,
        "gateway_own_p50_ms": float(own.get("p50_us", math.nan)) / 1000,
        "calls_per_s_at_32": rate,
        "first_call_warm_pool_p50_ms": _p50(series, FIRST, first_variant(FAST, True)),
        "stream_mb_per_s": mb_per_s(_p50(series, STREAM, FAST)),
    }


def goal_lines(
    series: list[Series],
    levels: tuple[int, ...],
    extras: dict[str, Any],
) -> tuple[list[str], dict[str, Any]]:
    """One line per goal, then the figures that explain them; the same as JSON."""
    figures = _figures(series, levels, extras.get("stages"))
    lines: list[str] = []
    out: dict[str, Any] = {}
    for key, (what, unit, bound, at_least) in GOALS.items():
        value = figures[key]
        said = verdict(value, bound, at_least)
        out[key] = {"value": value, "goal": bound, "at_least": at_least, "verdict": said}
        shown = "-" if math.isnan(value) else f"{value:.1f}"
        lines.append(f"{what}: {shown} {unit} (goal {'>=' if at_least else '<='} {bound:g} {unit}): {said}")
    _context(series, levels, extras, lines.append, out)
    return lines, out


def _context(
    series: list[Series],
    levels: tuple[int, ...],
    extras: dict[str, Any],
    say: Callable[[str], None],
    out: dict[str, Any],
) -> None:
    """Figures next to the goals: the unix-socket ratio, errors at the top level, the fallback's
    stream, bystanders, stateful calls and the fast path's breakdown."""

    fast = _p50(series, "true", FAST)
    out["raw_unix_over_fast_p50"] = _p50(series, "true", RAW_UNIX) / fast if fast else math.nan
    ratio = out["raw_unix_over_fast_p50"]
    say(f"raw exec_run through the engine's socket p50 / fast path `true` p50: {_ms(ratio)}x")
    top = max(levels)
    for path, key in ((FAST, "fast"), (FALLBACK, "fallback")):
        row = _row(series, throughput_workload(top), path)
        out[f"errors_at_{top}_{key}"] = row["errors"] if row else "not measured"
        say(f"errors with {top} concurrent principals, {path}: {out[f'errors_at_{top}_{key}']}")
    out["stream_mb_per_s_fallback"] = mb_per_s(_p50(series, STREAM, FALLBACK))
    say(f"100 MB of output through the fallback: {_ms(out['stream_mb_per_s_fallback'])} MB/s")
    for path, key in ((FAST, "fast"), (FALLBACK, "fallback")):
        alone = _row(series, report.BYSTANDER_ALONE, path)
        loaded = _row(series, report.BYSTANDER_LOADED, path)
        if alone is None or loaded is None:
            continue
        out[f"bystander_{key}_ms"] = {
            "alone_p50": alone["p50_ms"],
            "alone_p99": alone["p99_ms"],
            "loaded_p50": loaded["p50_ms"],
            "loaded_p99": loaded["p99_ms"],
        }
        say(
            f"a bystander's `true`, {path}: p50/p99 {_ms(alone['p50_ms'])}/{_ms(alone['p99_ms'])} ms with "
            f"the neighbours idle, {_ms(loaded['p50_ms'])}/{_ms(loaded['p99_ms'])} ms with them at full load "
            f"({loaded['note']})"
        )
    kept, fresh = _p50(series, STATEFUL, KEPT), _p50(series, STATEFUL, NEW_PROCESS)
    out["stateful_p50_ms"] = {"run_python": kept, "execute_python": fresh}
    say(
        f"`x += 1`: run_python (kept interpreter) p50 {kept:.1f} ms, execute_python (a new process each "
        f"call) p50 {fresh:.1f} ms"
    )
    inner = _row(series, "true", FAST)
    inner_p50 = float(inner["inner_exec_p50_ms"]) if inner else math.nan
    info, spawn = _p50(series, INFO, FAST), extras.get("spawn_ms")
    out["fast_true_breakdown_ms"] = {
        "client_p50": fast,
        "gateway_exec_p50": inner_p50,
        "sandbox_info_p50": info,
        "spawn_true_median": spawn[0] if spawn else math.nan,
        "spawn_bash_true_median": spawn[1] if spawn else math.nan,
        "spawn_timeout_bash_true_median": spawn[2] if spawn else math.nan,
    }
    say(
        f"where the fast path's `true` goes: {fast:.1f} ms at the client, of which the gateway's "
        f"docker.exec (agent round trip) p50 {inner_p50:.1f} ms; an MCP call that reaches no engine "
        f"(sandbox_info) p50 {info:.1f} ms"
    )
    if spawn:
        say(
            f"inside a sandbox, spawning `true` takes {spawn[0]:.1f} ms, what a fast-path call runs "
            f"(`bash -c true`) {spawn[1]:.1f} ms, what a fallback call runs (`timeout --kill-after=2 30s "
            f"bash -c true`) {spawn[2]:.1f} ms (median of 30)"
        )
    for path, key in ((FAST, "fast"), (FALLBACK, "fallback")):
        row = _row(series, throughput_workload(top), path)
        if row and row.get("cpu_ms_per_call"):
            out[f"cpu_ms_per_call_at_{top}_{key}"] = row["cpu_ms_per_call"]
            say(cpu_line(row["cpu_ms_per_call"], f"{top} concurrent principals, {path}"))
