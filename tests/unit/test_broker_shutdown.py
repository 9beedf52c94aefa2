"""Shutdown without an engine: every sandbox of this gateway goes (known, pooled or only labelled),
nothing of another gateway's, and `wait_idle` tells how many calls still run."""

from __future__ import annotations

import anyio
import pytest

from audit import MemorySink
from gateway.backend.base import ExecOutcome
from gateway.sandboxes.broker import Broker
from gateway.sandboxes.naming import GATEWAY as GATEWAY_LABEL
from gateway.sandboxes.naming import MANAGED
from gateway.sandboxes.pool import pool_targets
from policy import Principal
from policy.engine import PolicyEngine
from tests.unit.broker_support import GATEWAY, bash, decide, events, make_policy, until
from tests.unit.fake_backend import FakeBackend, Gate, held

pytestmark = pytest.mark.anyio


async def run(broker: Broker, engine: PolicyEngine, who: str, code: str = "true") -> ExecOutcome:
    principal = Principal(who)
    return await broker.execute(principal, decide(engine, principal), bash(code))


async def populated(broker: Broker, fake: FakeBackend, exec_path: str) -> tuple[set[str], str]:
    """Two principals' sandboxes, a warm pool of two, a labelled leftover the broker does not know,
    and another gateway's sandbox; returns this gateway's container ids and the other one's."""
    engine = PolicyEngine(make_policy(exec_path, default={"lifecycle": {"warm_pool": 2}}))
    await run(broker, engine, "alice")
    await run(broker, engine, "bob")
    broker.pool.configure(pool_targets(engine))
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(broker.maintain_pool)
        await until(lambda: len(broker.pool.sandboxes) == 2, what="the pool")
        tasks.cancel_scope.cancel()
    leftover = fake.add_container("sgw-leftover", {MANAGED: "true", GATEWAY_LABEL: GATEWAY})
    other = fake.add_container("sgw-other", {MANAGED: "true", GATEWAY_LABEL: "another-gateway"})
    ours = {c.id for c in fake.containers()} - {other.id}
    assert len(ours) == 5 and leftover.id in ours
    return ours, other.id


@pytest.mark.parametrize("how", ["sync", "async"])
async def test_cleanup_removes_every_sandbox_of_this_gateway_and_nothing_else(
    broker: Broker, fake: FakeBackend, sink: MemorySink, exec_path: str, how: str
) -> None:
    ours, other = await populated(broker, fake, exec_path)
    removed = broker.cleanup_all_sync() if how == "sync" else await broker.cleanup_all()
    assert removed == 5
    assert [c.id for c in fake.containers()] == [other]
    shutdown = [e for e in events(sink, "sandbox.remove") if e["detail"]["reason"] == "shutdown"]
    assert {e["resource"]["container_id"] for e in shutdown} == ours
    assert broker.sandboxes == [] and broker.sandbox_of(Principal("alice")) is None
    assert fake.open_connections() == 0, "every agent connection was closed"
    fake.vanish(other)


async def test_wait_idle_reports_the_calls_still_running(broker: Broker, fake: FakeBackend) -> None:
    engine = PolicyEngine(make_policy())
    gate = Gate()
    fake.handler = held(gate)
    outcomes: list[ExecOutcome] = []

    async def hold(who: str) -> None:
        outcomes.append(await run(broker, engine, who, "hold"))

    assert await broker.wait_idle(1) == 0
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold, "alice")
        tasks.start_soon(hold, "bob")
        await until(lambda: fake.active == 2, what="two held calls")
        assert broker.running_calls == 2
        assert await broker.wait_idle(0.01) == 2, "still running when the wait ran out"
        gate.open()
        assert await broker.wait_idle(5) == 0
    assert [o.stdout for o in outcomes] == [b"hold\n", b"hold\n"]


async def test_a_call_running_at_cleanup_ends_as_lost_and_nothing_is_left(
    broker: Broker, fake: FakeBackend, exec_path: str
) -> None:
    engine = PolicyEngine(make_policy(exec_path))
    gate = Gate()
    fake.handler = held(gate)
    outcomes: list[ExecOutcome] = []

    async def hold() -> None:
        outcomes.append(await run(broker, engine, "alice", "hold"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold)
        await until(lambda: fake.active == 1, what="the held call")
        assert await broker.cleanup_all() == 1
        gate.open()
    assert outcomes[0].sandbox_lost and outcomes[0].exit_code is None
    assert fake.containers() == [] and broker.sandboxes == []
