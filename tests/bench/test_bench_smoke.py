"""The benchmark's smoke mode: every variant runs, the table is complete, nothing is left behind.

Timings are never asserted: the benchmark reports them, it does not judge them here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import expected_rows
from bench.stage_phase import STAGE_WORKLOADS
from gateway.backend.docker_engine import DockerBackend

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_prints_every_row_and_exits_zero(tmp_path: Path, backend: DockerBackend) -> None:
    """`python -m bench --smoke` completes without an error, prints each row and the stage breakdown
    (from a gateway whose spans reach the benchmark's receiver), and removes its containers."""
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}"
    document = json.loads(out.read_text())
    levels = tuple(document["settings"]["levels"])
    table = run.stdout.splitlines()
    for workload, variant in expected_rows(levels):
        assert any(line.startswith(workload) and variant in line for line in table), (workload, variant)
    assert [(row["workload"], row["variant"]) for row in document["rows"]] == expected_rows(levels)
    assert all(row["errors"] == 0 for row in document["rows"])
    assert run.stdout.startswith("machine: ")
    samples = document["settings"]["samples"]
    assert set(document["stages"]) == set(STAGE_WORKLOADS)
    for breakdown in document["stages"].values():  # every timed call's span reached the receiver
        assert (breakdown["calls"], breakdown["missing_spans"], breakdown["errors"]) == (samples, 0, 0)
    assert "spans on" in run.stdout
    for gateway_id in document["gateway_ids"]:
        assert backend.list({"sandbox-gateway.gateway": gateway_id}) == []
    assert backend.list({"sandbox-gateway.bench": document["run_id"]}) == []
