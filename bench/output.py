"""What a run prints and the JSON document it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from bench import report
from bench.gateways import LIFTED
from bench.goals import goal_lines
from bench.machine import machine_line
from bench.settings import PARTS, Settings
from bench.stats import Series

__all__ = ["ordered_rows", "print_results", "write_json"]


def ordered_rows(series: list[Series], levels: tuple[int, ...]) -> list[Series]:
    """Every expected row in the table's order; a row nothing measured says "not run"."""
    rows = {(s.workload, s.variant): s for s in series}
    return [rows.get(key) or Series(*key, note="not run") for key in report.expected_rows(levels)]


def print_results(
    settings: Settings,
    machine: dict[str, Any],
    ordered: list[Series],
    extras: dict[str, Any],
) -> dict[str, Any]:
    """Print the run's tables and target lines; returns the targets as JSON."""
    summaries = [s.summary() for s in ordered]
    lines, goals = goal_lines(ordered, settings.levels, extras)
    print(machine_line(machine) if machine else "machine: unknown (the engine did not answer)")
    print(
        f"mode: {'smoke' if settings.smoke else 'full'}; {settings.samples} timed calls per warm row, "
        f"{settings.first_calls} new principals per first-call row, throughput "
        + ", ".join(f"{level}x{settings.calls_each(level)}" for level in settings.levels)
        + f" calls; warm pool {settings.warm_pool}; parts: {','.join(settings.parts)}"
    )
    print(
        "method: one MCP session per principal, only the tool call timed (after initialize and "
        "tools/list); raw rows "
        "run `bash -c CMD` as 1000:1000 in /workspace, the gateway runs `timeout ... bash -c CMD`; "
        f"raw rows use the same hardened create body; {LIFTED}"
    )
    partial = settings.parts != PARTS  # only what ran is printed; the JSON keeps every row
    shown = [row for row in summaries if not partial or row["note"] != "not run"]
    if shown:
        print()
        print(report.render(shown))
        print(report.LEGEND)
    if "gateways" in settings.parts:
        print()
        for line in lines:
            print(line)
    if extras.get("llm_sandbox"):
        print(report.LLM_SANDBOX_METHOD)
    stages = extras.get("stages")
    if stages is not None:
        print()
        print(report.render_stages(stages))
    return goals


def write_json(
    path: Path,
    *,
    run_id: str,
    status: str,
    machine: dict[str, Any],
    settings: Settings,
    gateway_ids: list[str],
    ordered: list[Series],
    goals: dict[str, Any],
    extras: dict[str, Any],
    forced: list[str],
) -> None:
    document = {
        "run_id": run_id,
        "status": status,
        "machine": machine,
        "settings": settings.__dict__ | {"levels": list(settings.levels), "parts": list(settings.parts)},
        "gateway_ids": gateway_ids,
        "rows": [s.summary() for s in ordered],
        "targets": goals,
        "llm_sandbox": extras.get("llm_sandbox"),
        "stages": extras.get("stages"),
        "cleanup": forced,
    }
    path.write_text(json.dumps(finite(document), indent=2))


def finite(value: Any) -> Any:
    """NaN (nothing measured) as null, so the file is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value
