"""The hosts as operators see them: one row per host for /ready, `sandbox-gateway hosts` and the
per-host metrics (sandbox_gateway.host.*)."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from gateway.backend.base import Backend
from gateway.backend.docker_engine import DockerBackend, tls_config
from gateway.fleet.backend import FleetBackend
from gateway.fleet.hosts import HostsFile, HostSpec

__all__ = ["connect_host", "host_rows", "observe_hosts"]


def connect_host(
    host: HostSpec, hosts: HostsFile, *, timeout_s: float = 15.0, pool_size: int = 32
) -> Backend:
    """The Backend of one host: its socket proxy over TLS with the gateway's client pair."""
    tls = hosts.tls_of(host)
    engine_tls = tls_config(str(tls.ca), str(tls.cert), str(tls.key)) if tls is not None else None
    return DockerBackend(host.address, timeout_s=timeout_s, pool_size=pool_size, tls=engine_tls)


def host_rows(fleet: FleetBackend) -> list[dict[str, Any]]:
    """Name, address, state, drain, capacity, sandboxes, free, labels, errors, last error and how
    long ago the host last answered, for every host of the file."""
    now = time.monotonic()
    rows = []
    for host in fleet.hosts.hosts:
        health = fleet.health.of(host.name)
        last_ok = health.last_ok if health is not None else None
        rows.append(
            {
                "name": host.name,
                "address": host.address,
                "state": health.state if health is not None else "unknown",
                "placeable": bool(health and health.placeable and not host.drain),
                "drain": host.drain,
                "capacity": host.capacity,
                "sandboxes": fleet.inventory.count(host.name),
                "free": max(0, fleet.free(host.name)),
                "labels": dict(host.labels),
                "errors": health.errors if health is not None else 0,
                "last_error": health.last_error if health is not None else None,
                "last_ok_s_ago": round(now - last_ok, 1) if last_ok is not None else None,
            }
        )
    return rows


def observe_hosts(fleet: FleetBackend, meter_provider: MeterProvider | None = None) -> None:
    """Per-host gauges, labelled with the host's name: sandboxes, capacity, up (1/0), errors."""
    meter = metrics.get_meter("sandbox_gateway.fleet", meter_provider=meter_provider)

    def gauge(field: str, convert: Any = int) -> Any:
        def observe(options: CallbackOptions) -> list[Observation]:
            return [Observation(convert(row[field]), {"host": row["name"]}) for row in host_rows(fleet)]

        return observe

    meter.create_observable_gauge("sandbox_gateway.host.sandboxes", [gauge("sandboxes")])
    meter.create_observable_gauge("sandbox_gateway.host.capacity", [gauge("capacity")])
    meter.create_observable_gauge("sandbox_gateway.host.up", [gauge("state", lambda s: int(s == "up"))])
    meter.create_observable_gauge("sandbox_gateway.host.errors", [gauge("errors")])
