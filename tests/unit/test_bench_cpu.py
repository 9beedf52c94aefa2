"""The benchmark's CPU split: grouping of processes, per-call arithmetic, the line it prints."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from bench import cpu
from bench.cpu import GROUPS, CpuWindow, cpu_line, snapshot
from bench.goals import goal_lines
from bench.report import FAST, throughput_workload
from bench.stats import Series


def _process(root: Path, pid: int, name: str, ticks: tuple[int, int, int, int], cgroup: str = "0::/") -> None:
    """A /proc/<pid> with a stat line (utime, stime, cutime, cstime as given) and a cgroup file."""
    folder = root / str(pid)
    folder.mkdir(parents=True, exist_ok=True)
    before = " ".join(["S", "1"] + ["0"] * 9)  # state, ppid, ... up to utime
    after = " ".join(["20", "0"] * 10)
    utime, stime, cutime, cstime = ticks
    (folder / "stat").write_text(f"{pid} ({name}) {before} {utime} {stime} {cutime} {cstime} {after}\n")
    (folder / "cgroup").write_text(cgroup + "\n")


def _machine(root: Path, busy: int) -> None:
    # user nice system idle iowait irq softirq steal
    (root / "stat").write_text(f"cpu  {busy} 0 0 5000 7 0 0 0 0 0\ncpu0 1 2 3 4\n")


def test_each_process_counts_in_its_group_and_the_rest_is_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "_PROC", tmp_path)
    monkeypatch.setattr(cpu, "_TICK", 100)
    me = os.getpid()

    def world(scale: int) -> None:
        _machine(tmp_path, 1000 * scale)
        _process(tmp_path, 4242, "python", (10 * scale, 5 * scale, 0, 0))  # the gateway
        _process(tmp_path, me, "python", (20 * scale, 0, 0, 0))  # the benchmark's clients
        _process(
            tmp_path, 77, "python3", (3 * scale, 1 * scale, 6 * scale, 0), "0::/system.slice/docker-ab.scope"
        )
        _process(tmp_path, 78, "dockerd", (2 * scale, 2 * scale, 0, 0))
        _process(tmp_path, 79, "containerd-shim", (1 * scale, 0, 0, 0))
        _process(tmp_path, 80, "sshd", (9 * scale, 0, 0, 0))  # in no group: part of "other"

    world(1)
    window = CpuWindow(4242)
    window.start()
    world(3)
    window.stop(calls=10)
    # Differences (ticks of 10 ms): gateway 30, clients 40, sandboxes 20, engine 10, busy 2000.
    expected = {"gateway": 30, "clients": 40, "sandboxes": 20, "engine": 10, "other": 1900, "total": 2000}
    assert window.per_call_ms == pytest.approx(expected)


def test_a_window_without_calls_or_proc_measures_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cpu, "_PROC", tmp_path / "absent")
    window = CpuWindow(1)
    window.start()
    window.stop(calls=5)
    assert snapshot(1) is None and window.per_call_ms == {}


def test_on_this_machine_the_benchmarks_own_work_counts_as_its_clients() -> None:
    window = CpuWindow(gateway_pid=-1)
    window.start()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    window.stop(calls=1)
    assert window.per_call_ms["clients"] >= 250
    assert window.per_call_ms["total"] >= window.per_call_ms["clients"]


def test_the_line_names_every_group_and_the_ceiling_the_cores_allow() -> None:
    line = cpu_line(
        {"gateway": 5.0, "clients": 3.0, "sandboxes": 1.5, "engine": 0.3, "other": 0.2, "total": 10.0},
        "32 x",
        cores=2,
    )
    assert all(group in line for group in GROUPS)
    assert "10.00 ms in all" in line and "2 cores allow 200 calls/s at most" in line


def test_the_goal_lines_carry_the_split_of_the_top_throughput_row() -> None:
    row = Series(throughput_workload(32), FAST, latencies_ms=[1.0] * 10, wall_s=1.0)
    row.cpu_ms = {
        "gateway": 4.0,
        "clients": 4.0,
        "sandboxes": 2.0,
        "engine": 0.0,
        "other": 0.0,
        "total": 10.0,
    }
    lines, out = goal_lines([row], (32,), {})
    assert out["cpu_ms_per_call_at_32_fast"]["total"] == 10.0
    assert any(line.startswith("CPU per call with 32 concurrent principals") for line in lines)
