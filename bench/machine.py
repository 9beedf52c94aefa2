"""The machine the figures come from: CPU, memory, kernel, engine, Python."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["describe", "machine_line"]


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("nan")


def describe(engine_version: dict[str, Any]) -> dict[str, object]:
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": round(_memory_gib(), 1),
        "kernel": platform.release(),
        "docker": engine_version.get("Version", "?"),
        "docker_api": engine_version.get("ApiVersion", "?"),
        "python": platform.python_version(),
    }


def machine_line(machine: dict[str, object]) -> str:
    return (
        f"machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory_gib']} GiB, "
        f"Linux {machine['kernel']}, Docker {machine['docker']} (API {machine['docker_api']}), "
        f"Python {machine['python']}"
    )
