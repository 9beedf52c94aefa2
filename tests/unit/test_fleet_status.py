"""The per-host rows of /ready, `sandbox-gateway hosts` and the host metrics."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from audit import AuditLog
from gateway.fleet.backend import FleetBackend
from gateway.fleet.hosts import parse_hosts
from gateway.fleet.status import host_rows, observe_hosts
from tests.unit.fleet_support import GOOD_IMAGE, FakeClock, Hosts, host, hosts_file, make_fleet


@pytest.fixture
def fleet(audit: AuditLog) -> Iterator[tuple[FleetBackend, Hosts, FakeClock]]:
    clock = FakeClock()
    text = hosts_file(host("a", 3, labels={"gpu": "a100"}), host("b", 5, drain=True), host("c", 2))
    backend, made = make_fleet(text, audit, clock, up=False)
    yield backend, made, clock
    backend.close()


def by_name(backend: FleetBackend) -> dict[str, dict[str, object]]:
    return {row["name"]: row for row in host_rows(backend)}


def test_a_row_per_host_in_file_order(fleet: tuple[FleetBackend, Hosts, FakeClock]) -> None:
    backend, _, _ = fleet
    rows = host_rows(backend)
    assert [r["name"] for r in rows] == ["a", "b", "c"]
    a = rows[0]
    assert a == {
        "name": "a",
        "address": "tcp://a.internal:2376",
        "state": "unknown",
        "placeable": False,
        "drain": False,
        "capacity": 3,
        "sandboxes": 0,
        "free": 3,
        "labels": {"gpu": "a100"},
        "errors": 0,
        "last_error": None,
        "last_ok_s_ago": None,
    }


def test_rows_follow_health_drain_and_what_is_placed(fleet: tuple[FleetBackend, Hosts, FakeClock]) -> None:
    backend, _, clock = fleet
    for name in ("a", "b", "c"):
        backend.health.ok(name)
    backend.health.failed("c", "connection refused")
    backend.health.failed("c", "connection refused")
    backend.create("sgw-1", {"Image": GOOD_IMAGE})
    rows = by_name(backend)
    assert rows["a"]["state"] == "up" and rows["a"]["placeable"] is True
    assert (rows["a"]["sandboxes"], rows["a"]["free"]) == (1, 2), "only a could take it"
    assert rows["b"]["state"] == "up" and rows["b"]["placeable"] is False, "drained"
    assert rows["c"]["placeable"] is False and rows["c"]["errors"] == 2
    assert rows["c"]["last_error"] == "connection refused"
    assert isinstance(rows["a"]["last_ok_s_ago"], float)
    clock.advance(backend.health.down_after_s)
    backend.health.failed("c", "timed out")
    assert by_name(backend)["c"]["state"] == "down"


def test_free_is_never_negative(fleet: tuple[FleetBackend, Hosts, FakeClock]) -> None:
    """A reload may lower a host's capacity below what it holds."""
    backend, made, _ = fleet
    for i in range(3):
        made["a"].add(f"sgw-{i}")
    backend.health.ok("a")
    backend.list({})
    backend.configure(parse_hosts(hosts_file(host("a", 1), host("b", 5), host("c", 2))))
    row = by_name(backend)["a"]
    assert (row["capacity"], row["sandboxes"], row["free"]) == (1, 3, 0)
    assert backend.free("a") == -2


def test_each_host_has_gauges_of_its_own(fleet: tuple[FleetBackend, Hosts, FakeClock]) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    backend, _, _ = fleet
    backend.health.ok("a")
    backend.create("sgw-1", {"Image": GOOD_IMAGE})
    reader = InMemoryMetricReader()
    observe_hosts(backend, MeterProvider(metric_readers=[reader]))
    data = reader.get_metrics_data()
    assert data is not None
    seen: dict[tuple[str, object], object] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    seen[(metric.name, dict(point.attributes or {}).get("host"))] = getattr(
                        point, "value", None
                    )
    assert seen[("sandbox_gateway.host.sandboxes", "a")] == 1
    assert seen[("sandbox_gateway.host.capacity", "b")] == 5
    assert (seen[("sandbox_gateway.host.up", "a")], seen[("sandbox_gateway.host.up", "c")]) == (1, 0)
    assert seen[("sandbox_gateway.host.errors", "a")] == 0
