"""An optional comparison row: llm-sandbox's Docker session on the same image and the same engine.

llm-sandbox is never a dependency of this project. The rows run when an interpreter can import it:
`--llm-sandbox-python PATH` (or SGW_BENCH_LLM_SANDBOX_PYTHON), else the benchmark's own. That
interpreter runs `bench/llm_sandbox_probe.py` (which imports nothing of the project) against the
engine's unix socket; otherwise both rows say why they were skipped. Its container carries the
benchmark's labels, so the run's clean-up finds it even if the probe is killed before it removes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.stats import Series

__all__ = ["LLM_SANDBOX", "LLM_WORKLOADS", "interpreter", "llm_sandbox_rows", "llm_sandbox_version"]

LLM_SANDBOX = "llm-sandbox session (unix socket)"
PROBE = Path(__file__).with_name("llm_sandbox_probe.py")
ENV = "SGW_BENCH_LLM_SANDBOX_PYTHON"
#: The probe's rows -> the table's workloads, with what the row measures.
LLM_WORKLOADS: dict[str, tuple[str, str]] = {
    "true": ("true", 'execute_command("true")'),
    "print(1)": ("python3 -c 'print(1)'", 'run("print(1)"): code copied in, then `python FILE`'),
}


def interpreter(option: str | None) -> str:
    return option or os.environ.get(ENV) or sys.executable


def llm_sandbox_version(python: str) -> str | None:
    """llm-sandbox's version as `python` sees it, or None when it cannot import it."""
    check = "import importlib.metadata as m, llm_sandbox, docker; print(m.version('llm-sandbox'))"
    try:
        done = subprocess.run([python, "-c", check], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def skipped(why: str) -> list[Series]:
    return [Series(workload, LLM_SANDBOX, note=f"skipped: {why}") for workload, _ in LLM_WORKLOADS.values()]


def rows_from(document: dict[str, Any]) -> list[Series]:
    """The table's rows from the probe's JSON document (no calls/s: the probe times calls only)."""
    out = []
    version = document.get("version", "?")
    for name, (workload, what) in LLM_WORKLOADS.items():
        row = document.get("rows", {}).get(name, {})
        series = Series(workload, LLM_SANDBOX, note=f"llm-sandbox {version}: {what}")
        series.latencies_ms = [float(value) for value in row.get("latencies_ms", [])]
        for message in row.get("errors", []):
            series.error(str(message))
        if not row:
            series.error(f"the probe returned no {name!r} row")
        out.append(series)
    return out


def llm_sandbox_rows(
    python: str, *, image: str, socket_path: str, samples: int, labels: dict[str, str]
) -> tuple[list[Series], str | None]:
    """Run the probe (`samples` warm calls per row); returns the rows and llm-sandbox's version
    (None when it is not installed: the rows are then skipped with a note)."""
    version = llm_sandbox_version(python)
    if version is None:
        return skipped(
            f"llm-sandbox (with docker) is not importable by {python}; install it in a venv of its "
            "own and pass --llm-sandbox-python"
        ), None
    argv = [python, str(PROBE), "--image", image, "--socket", socket_path, "--samples", str(samples)]
    argv += [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300 + samples, check=False)
    if done.returncode != 0:
        rows = skipped("")
        for series in rows:
            series.note = f"llm-sandbox {version}"
            series.error(f"the probe failed ({done.returncode}): {done.stderr.strip()[-280:]}")
        return rows, version
    return rows_from(json.loads(done.stdout)), version
