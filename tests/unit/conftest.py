"""Fixtures of the engine-free tier: an in-memory backend and brokers on it that leave nothing behind."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from audit import AuditLog, MemorySink
from gateway.sandboxes.broker import Broker
from tests.unit.broker_support import GATEWAY, Clock, events
from tests.unit.fake_backend import FakeBackend

MakeBroker = Callable[..., Broker]


@pytest.fixture
def fake() -> Iterator[FakeBackend]:
    backend = FakeBackend()
    yield backend
    backend.close_everything()  # what a failed test left open is not reported again by the next one
    assert backend.errors == [], f"a command handler failed: {backend.errors!r}"


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


@pytest.fixture
def audit(sink: MemorySink) -> AuditLog:
    return AuditLog([sink])


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def assert_every_removal_audited(fake: FakeBackend, sink: MemorySink) -> None:
    """Each container the gateway removed has a `sandbox.remove` event with a reason; one that never
    became a sandbox (its start failed) has its `docker.remove` with reason `start-failed`."""
    removed = {
        e["resource"]["container_id"]: e["detail"].get("reason") for e in events(sink, "sandbox.remove")
    }
    start_failed = {
        e["resource"]["container_id"]
        for e in events(sink, "docker.remove")
        if e.get("detail", {}).get("reason") == "start-failed"
    }
    for container_id in fake.removals:
        if container_id in start_failed:
            continue
        assert removed.get(container_id), (
            f"removal of {container_id[:12]} has no sandbox.remove with a reason"
        )


@pytest.fixture
def make_broker(fake: FakeBackend, audit: AuditLog, sink: MemorySink) -> Iterator[MakeBroker]:
    """Brokers on the fake; afterwards every one is cleaned up and no container may remain."""
    made: list[Broker] = []

    def make(**kwargs: Any) -> Broker:
        kwargs.setdefault("gateway_id", GATEWAY)
        broker = Broker(fake, audit, **kwargs)
        made.append(broker)
        return broker

    yield make
    fake.heal()
    for broker in made:
        broker.cleanup_all_sync()
    assert fake.containers() == [], "containers leaked"
    assert fake.open_connections() == 0, "agent connections left open"
    assert_every_removal_audited(fake, sink)
    # With its container gone, every attach stream ends; the gateway must have closed its end.
    await_closed(fake)


def await_closed(fake: FakeBackend, timeout_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while fake.gateway_ends_open() and time.monotonic() < deadline:
        time.sleep(0.002)
    assert fake.gateway_ends_open() == 0, "the gateway left attach streams open"


@pytest.fixture
def broker(make_broker: MakeBroker) -> Broker:
    return make_broker()
