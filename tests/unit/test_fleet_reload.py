"""Hosts file reload (SIGHUP): a good file is in force at once, with each host that starts or stops
draining recorded; a bad one is refused, recorded, and the hosts in use stay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from audit import AuditLog, MemorySink
from gateway.fleet.backend import FleetBackend
from gateway.fleet.reload import reload_hosts
from tests.unit.broker_support import events
from tests.unit.fleet_support import FakeClock, Hosts, host, hosts_file, make_fleet


@pytest.fixture
def fleet(audit: AuditLog) -> Iterator[tuple[FleetBackend, Hosts]]:
    pair = make_fleet(hosts_file(host("a"), host("b"), host("c")), audit, FakeClock())
    yield pair
    pair[0].close()


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_drain_change_is_recorded_host_by_host(
    fleet: tuple[FleetBackend, Hosts], tmp_path: Path, sink: MemorySink, audit: AuditLog
) -> None:
    backend, _ = fleet
    path = write(tmp_path / "hosts.yaml", hosts_file(host("a", drain=True), host("b"), host("c", drain=True)))
    assert reload_hosts(backend, path, audit)
    assert [e["detail"] for e in events(sink, "host.drain")] == [
        {"host": "a", "drain": True},
        {"host": "c", "drain": True},
    ]
    assert backend.hosts.named("a").drain  # type: ignore[union-attr]
    (ok,) = events(sink, "hosts.reload")
    assert ok["outcome"]["status"] == "ok"
    assert ok["detail"] == {"added": [], "removed": [], "changed": ["a", "c"]}

    write(path, hosts_file(host("a"), host("b"), host("c", drain=True)))
    assert reload_hosts(backend, path, audit)
    assert events(sink, "host.drain")[-1]["detail"] == {"host": "a", "drain": False}
    assert len(events(sink, "host.drain")) == 3, "c still drains: no new event"


def test_added_removed_and_changed_hosts_are_listed(
    fleet: tuple[FleetBackend, Hosts], tmp_path: Path, sink: MemorySink, audit: AuditLog
) -> None:
    backend, made = fleet
    path = write(tmp_path / "hosts.yaml", hosts_file(host("a", 7), host("c"), host("e"), host("d")))
    assert reload_hosts(backend, path, audit)
    (ok,) = events(sink, "hosts.reload")
    assert ok["detail"] == {"added": ["d", "e"], "removed": ["b"], "changed": ["a"]}
    assert backend.names() == ["a", "c", "e", "d"]
    assert events(sink, "host.drain") == [], "a new host that drains is listed as added, not as a drain"
    assert set(made.by_name) == {"a", "b", "c", "d", "e"}


def test_an_unchanged_file_changes_nothing(
    fleet: tuple[FleetBackend, Hosts], tmp_path: Path, sink: MemorySink, audit: AuditLog
) -> None:
    backend, made = fleet
    engines = [backend.engine(n) for n in backend.names()]
    path = write(tmp_path / "hosts.yaml", hosts_file(host("a"), host("b"), host("c")))
    assert reload_hosts(backend, path, audit)
    assert events(sink, "hosts.reload")[0]["detail"] == {"added": [], "removed": [], "changed": []}
    assert [backend.engine(n) for n in backend.names()] == engines
    assert len(made.made) == 3


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("hosts: [\n", "not valid YAML"),
        (hosts_file(host("a", 0)), "hosts.0.capacity"),
        (hosts_file(host("a"), host("a")), "same name"),
        (hosts_file(host("a"), insecure_private_network=False), "no TLS settings"),
        ("- a\n", "expected a mapping"),
    ],
)
def test_a_bad_file_is_refused_and_the_hosts_in_use_stay(
    fleet: tuple[FleetBackend, Hosts], tmp_path: Path, sink: MemorySink, text: str, why: str
) -> None:
    backend, made = fleet
    before = backend.hosts
    path = write(tmp_path / "hosts.yaml", text)
    assert not reload_hosts(backend, path, backend.audit)
    (rejected,) = events(sink, "hosts.reload")
    assert rejected["outcome"]["status"] == "rejected"
    assert why in rejected["outcome"]["error"] and str(path) in rejected["outcome"]["error"]
    assert backend.hosts is before and backend.names() == ["a", "b", "c"]
    assert len(made.made) == 3
    assert events(sink, "host.drain") == []


def test_a_missing_file_is_refused(
    fleet: tuple[FleetBackend, Hosts], tmp_path: Path, sink: MemorySink, audit: AuditLog
) -> None:
    backend, _ = fleet
    before = backend.hosts
    assert not reload_hosts(backend, tmp_path / "gone.yaml", audit)
    assert "cannot read the hosts file" in events(sink, "hosts.reload")[0]["outcome"]["error"]
    assert backend.hosts is before


def test_a_host_that_cannot_be_connected_is_refused_and_nothing_changes(
    fleet: tuple[FleetBackend, Hosts], tmp_path: Path, sink: MemorySink, audit: AuditLog
) -> None:
    backend, made = fleet
    before = backend.hosts
    made.refuse["d"] = ValueError("TLS file vanished")
    path = write(tmp_path / "hosts.yaml", hosts_file(host("a", drain=True), host("d")))
    assert not reload_hosts(backend, path, audit)
    (rejected,) = events(sink, "hosts.reload")
    assert rejected["outcome"]["status"] == "rejected"
    assert "TLS file vanished" in rejected["outcome"]["error"]
    assert backend.hosts is before and backend.names() == ["a", "b", "c"]
    assert events(sink, "host.drain") == []
