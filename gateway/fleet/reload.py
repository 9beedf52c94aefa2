"""Hosts file reload (SIGHUP, with the policy): the new file is checked first; a bad one is refused
and the hosts in use stay. Hosts that start or stop draining are recorded one by one."""

from __future__ import annotations

from pathlib import Path

from audit import AuditLog
from gateway.errors import ConfigError
from gateway.fleet.backend import FleetBackend
from gateway.fleet.hosts import load_hosts

__all__ = ["reload_hosts"]


def reload_hosts(fleet: FleetBackend, path: Path, audit: AuditLog) -> bool:
    """Read `path` and use it. True if the new hosts are in force."""
    before = {h.name: h for h in fleet.hosts.hosts}
    try:
        hosts = load_hosts(path)
    except ConfigError as exc:
        audit.emit("hosts.reload", outcome="rejected", error=exc.message)
        return False
    try:
        fleet.configure(hosts)
    except Exception as exc:  # noqa: BLE001 - a host's connection could not be made: nothing changed
        audit.emit("hosts.reload", outcome="rejected", error=f"{type(exc).__name__}: {exc}"[:300])
        return False
    after = {h.name: h for h in hosts.hosts}
    for name, host in after.items():
        old = before.get(name)
        if old is not None and old.drain != host.drain:
            audit.emit("host.drain", host=name, drain=host.drain)
    audit.emit(
        "hosts.reload",
        outcome="ok",
        added=sorted(after.keys() - before.keys()),
        removed=sorted(before.keys() - after.keys()),
        changed=sorted(n for n in after.keys() & before.keys() if after[n] != before[n]),
    )
    return True
