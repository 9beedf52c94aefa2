"""Warm pools on the real engine: filled ahead, one principal per sandbox, adopted after a restart."""

from __future__ import annotations

import anyio
import pytest

from audit import AuditLog, MemorySink
from gateway.backend.docker_engine import DockerBackend
from gateway.calls.service import ExecutionService
from gateway.sandboxes.broker import Broker
from gateway.sandboxes.pool import pool_targets
from policy import Principal, load_policy
from policy.engine import PolicyEngine
from tests.support import audit_events, eventually_async
from tests.support.sandboxes import sandbox_of

pytestmark = pytest.mark.anyio
POOL_LABEL = "sandbox-gateway.pool"


async def _wait_for_pool(broker: Broker, size: int) -> list[str]:
    await eventually_async(lambda: len(broker.pool.sandboxes) >= size, timeout_s=60, interval_s=0.05)
    return [s.container_id for s in broker.pool.sandboxes]


async def test_pooled_sandboxes_go_to_one_principal_each_and_the_pool_refills(
    broker: Broker, backend: DockerBackend, audit_sink: MemorySink
) -> None:
    engine = PolicyEngine(load_policy())
    service = ExecutionService(engine, broker, broker.audit)
    assert engine.policy.profiles["default"].lifecycle.warm_pool == 2
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(broker.maintain_pool)
        pooled = await _wait_for_pool(broker, 2)
        listed = await anyio.to_thread.run_sync(
            backend.list, {"sandbox-gateway.gateway": broker.gateway_id, POOL_LABEL: "true"}
        )
        assert sorted(r.id for r in listed) == sorted(pooled)
        assert all(
            r.name.startswith("sgw-pool-") and "sandbox-gateway.principal" not in r.labels for r in listed
        )

        alice = await service.execute(
            Principal("alice"), "execute_bash", "echo $HOSTNAME; touch /workspace/mine"
        )
        bob = await service.execute(Principal("bob"), "execute_bash", "ls /workspace")
        assert alice.exit_code == 0 and bob.exit_code == 0
        assert bob.stdout == "", "bob's pooled sandbox is not alice's"
        alice_box = broker.sandbox_of(Principal("alice"))
        bob_box = broker.sandbox_of(Principal("bob"))
        assert alice_box is not None and bob_box is not None
        assert {alice_box.container_id, bob_box.container_id} == set(pooled)
        assigned = audit_events(audit_sink, "sandbox.assign")
        assert [e["resource"]["container_id"] for e in assigned] == [
            alice_box.container_id,
            bob_box.container_id,
        ]
        info = await anyio.to_thread.run_sync(backend.inspect, alice_box.container_id)
        assert info.name == alice_box.name and not info.name.startswith("sgw-pool-")

        refilled = await _wait_for_pool(broker, 2)
        assert not set(refilled) & set(pooled), "a handed-out sandbox never returns to the pool"

        await broker.reset(Principal("alice"))
        again = await service.execute(Principal("alice"), "execute_bash", "ls /workspace")
        assert again.stdout == ""
        fresh = broker.sandbox_of(Principal("alice"))
        assert fresh is not None and fresh.container_id not in pooled
        tasks.cancel_scope.cancel()


async def test_a_restarted_gateway_adopts_a_handed_out_sandbox_and_drops_the_unassigned(
    backend: DockerBackend, audit_sink: MemorySink
) -> None:
    import uuid

    gateway_id = f"test-{uuid.uuid4().hex[:12]}"
    engine = PolicyEngine(load_policy())
    first = Broker(backend, AuditLog([audit_sink]), gateway_id=gateway_id)
    first.pool.configure(pool_targets(engine))
    second = Broker(backend, AuditLog([audit_sink]), gateway_id=gateway_id)
    second.pool.configure(pool_targets(engine))
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first.maintain_pool)
            await _wait_for_pool(first, 2)
            service = ExecutionService(engine, first, first.audit)
            await service.execute(Principal("carol"), "execute_bash", "echo kept > /workspace/note")
            handed = sandbox_of(first, Principal("carol"))
            await _wait_for_pool(first, 2)
            tasks.cancel_scope.cancel()
        for sandbox in [*first.sandboxes, *first.pool.sandboxes]:  # the first gateway "dies"
            sandbox.executor.close()

        kept, removed = await second.sweep({"default": engine.policy.profiles["default"].sandbox.digest()})
        assert (kept, removed) == (1, 2)
        service = ExecutionService(engine, second, second.audit)
        result = await service.execute(Principal("carol"), "execute_bash", "cat /workspace/note")
        assert result.stdout == "kept\n"
        adopted = second.sandbox_of(Principal("carol"))
        assert adopted is not None and adopted.container_id == handed.container_id
    finally:
        second.cleanup_all_sync()
        assert backend.list({"sandbox-gateway.gateway": gateway_id}) == []
