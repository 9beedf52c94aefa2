"""Where the machine's CPU goes while a row is measured: the gateway, the benchmark's own MCP
clients, the sandboxes (their agents and what those run), the engine, and everything else.

Read from /proc (the benchmark runs on the gateway's machine): each process's user and system
time, with that of the children it reaped, summed per group at the window's start and end. A
process that ended in between counts in the group of the process that reaped it (a command in
its sandbox's agent; on the fallback path, a `docker exec` command is reaped by the engine's shim,
so it counts as the engine's), so the sums stay whole. "other" is the machine's busy time (all cores,
interrupts included) less the groups: the kernel's work for no process, the socket proxy, other
programs. Linux only; elsewhere a window measures nothing and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GROUPS", "CpuWindow", "Usage", "cpu_line", "snapshot"]

GROUPS = ("gateway", "clients", "sandboxes", "engine", "other")
_ENGINE = frozenset({"dockerd", "containerd", "containerd-shim", "containerd-shim-runc-v2", "runc"})
_PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Usage:
    """CPU seconds used so far: the machine's busy time and each group's."""

    busy_s: float
    groups: dict[str, float]


def _stat(pid: str) -> tuple[str, float] | None:
    """A process's command name and CPU seconds (its own and its reaped children's)."""
    try:
        raw = (_PROC / pid / "stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return name, sum(int(value) for value in fields[11:15]) / _TICK


def _in_a_container(pid: str) -> bool:
    try:
        cgroup = (_PROC / pid / "cgroup").read_text()
    except OSError:
        return False
    return "docker" in cgroup


def _busy_s() -> float:
    with open(_PROC / "stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle, iowait
    return (sum(values[:8]) - idle) / _TICK  # guest time is already in user


def snapshot(gateway_pid: int) -> Usage | None:
    """The machine's CPU use so far, by group; None where /proc cannot say."""
    if not (_PROC / "stat").is_file():
        return None
    groups = dict.fromkeys(GROUPS[:-1], 0.0)
    me = str(os.getpid())
    for entry in os.scandir(_PROC):
        if not entry.name.isdigit():
            continue
        seen = _stat(entry.name)
        if seen is None:
            continue
        name, seconds = seen
        if entry.name == str(gateway_pid):
            groups["gateway"] += seconds
        elif entry.name == me:
            groups["clients"] += seconds
        elif name in _ENGINE:
            groups["engine"] += seconds
        elif _in_a_container(entry.name):
            groups["sandboxes"] += seconds
    return Usage(_busy_s(), groups)


class CpuWindow:
    """The CPU each group used between `start()` and `stop(calls)`, as milliseconds per call."""

    def __init__(self, gateway_pid: int) -> None:
        self.gateway_pid = gateway_pid
        self._start: Usage | None = None
        #: group -> ms per call, and "total"; empty until stopped (or where /proc cannot say).
        self.per_call_ms: dict[str, float] = {}

    def start(self) -> None:
        self._start = snapshot(self.gateway_pid)

    def stop(self, calls: int) -> None:
        end = snapshot(self.gateway_pid)
        if self._start is None or end is None or calls <= 0:
            return
        used = {group: end.groups[group] - self._start.groups[group] for group in GROUPS[:-1]}
        busy = end.busy_s - self._start.busy_s
        used["other"] = max(0.0, busy - sum(used.values()))  # so the total is at least `busy`
        self.per_call_ms = {group: seconds * 1000 / calls for group, seconds in used.items()}
        self.per_call_ms["total"] = sum(used.values()) * 1000 / calls


def cpu_line(per_call_ms: dict[str, float], what: str, cores: int | None = None) -> str:
    """One line: each group's CPU per call, the total, and the rate the machine's cores allow at it."""
    cores = cores or os.cpu_count() or 1
    parts = ", ".join(f"{group} {per_call_ms.get(group, 0.0):.2f}" for group in GROUPS)
    total = per_call_ms.get("total", 0.0)
    line = f"CPU per call with {what}: {parts} ms, {total:.2f} ms in all"
    if total:
        line += f"; at that cost {cores} cores allow {cores * 1000 / total:.0f} calls/s at most"
    return line
