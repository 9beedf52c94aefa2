"""The broker's quotas without an engine: host and tenant caps on live sandboxes, calls running at
once per principal, the sandbox-creation rate, and a parallel burst that must not overshoot a cap."""

from __future__ import annotations

import anyio
import pytest

from audit import MemorySink
from gateway.errors import QuotaExceeded
from gateway.sandboxes.broker import Broker
from policy import Principal
from policy.engine import PolicyEngine
from tests.unit.broker_support import bash, decide, events, make_policy, until
from tests.unit.conftest import MakeBroker
from tests.unit.fake_backend import FakeBackend, Gate, held

pytestmark = pytest.mark.anyio


def engine_with(exec_path: str = "agent", **default: object) -> PolicyEngine:
    return PolicyEngine(make_policy(exec_path, default=dict(default)))


async def run(broker: Broker, engine: PolicyEngine, principal: Principal, code: str = "true") -> bytes:
    outcome = await broker.execute(principal, decide(engine, principal), bash(code))
    return outcome.stdout


async def test_the_host_cap_refuses_one_sandbox_too_many_until_one_goes(
    make_broker: MakeBroker, fake: FakeBackend
) -> None:
    broker = make_broker(max_sandboxes=2)
    engine = engine_with()
    await run(broker, engine, Principal("alice"))
    await run(broker, engine, Principal("bob"))
    with pytest.raises(QuotaExceeded) as refused:
        await run(broker, engine, Principal("carol"))
    assert refused.value.code == "host-sandbox-quota"
    assert len(fake.containers()) == 2 and len(fake.called("create")) == 2
    assert broker.sandbox_of(Principal("carol")) is None

    # Existing sandboxes keep serving at the cap; a freed slot lets the next one in.
    assert await run(broker, engine, Principal("alice"), "again") == b"again\n"
    assert await broker.reset(Principal("alice"))
    assert await run(broker, engine, Principal("carol"), "in") == b"in\n"


async def test_the_tenant_cap_counts_one_tenant_only(make_broker: MakeBroker, fake: FakeBackend) -> None:
    broker = make_broker()
    engine = engine_with(lifecycle={"max_sandboxes_per_tenant": 2})
    await run(broker, engine, Principal("a", tenant="acme"))
    await run(broker, engine, Principal("b", tenant="acme"))
    with pytest.raises(QuotaExceeded) as refused:
        await run(broker, engine, Principal("c", tenant="acme"))
    assert refused.value.code == "tenant-sandbox-quota"
    assert "acme" in refused.value.message
    # Another tenant has a cap of its own.
    await run(broker, engine, Principal("c", tenant="globex"))
    assert len(fake.containers()) == 3


async def test_calls_running_at_once_are_capped_per_principal(
    broker: Broker, fake: FakeBackend, exec_path: str
) -> None:
    engine = engine_with(exec_path, exec={"max_concurrent": 2})
    alice, bob = Principal("alice"), Principal("bob")
    gate = Gate()
    fake.handler = held(gate)
    results: list[bytes] = []

    async def hold() -> None:
        results.append(await run(broker, engine, alice, "hold"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold)
        tasks.start_soon(hold)
        await until(lambda: fake.active == 2, what="two held calls")
        assert broker.running_calls == 2
        with pytest.raises(QuotaExceeded) as refused:
            await run(broker, engine, alice)
        assert refused.value.code == "concurrent-exec-quota"
        # Another principal is not held back by alice's calls.
        assert await run(broker, engine, bob, "free") == b"free\n"
        gate.open()
    assert results == [b"hold\n", b"hold\n"]
    assert broker.running_calls == 0
    assert await run(broker, engine, alice, "after") == b"after\n"
    # The refused call ran nothing: two held calls and one more, in one sandbox.
    alice_box = broker.sandbox_of(alice)
    assert alice_box is not None
    assert [c.code for c in fake.ran("bash") if c.container.id == alice_box.container_id] == [
        "hold",
        "hold",
        "after",
    ]


async def test_the_sandbox_creation_rate_is_per_principal(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    engine = engine_with(rate_limits={"sandbox_creations": "2/minute"})
    alice = Principal("alice")
    await run(broker, engine, alice)
    await broker.reset(alice)
    await run(broker, engine, alice)
    await broker.reset(alice)
    with pytest.raises(QuotaExceeded) as refused:
        await run(broker, engine, alice)
    assert refused.value.code == "sandbox-creation-rate"
    assert len(fake.called("create")) == 2
    hits = events(sink, "ratelimit.hit")
    assert [(h["limits"]["limit"], h["limits"]["rate"]) for h in hits] == [("sandbox_creations", "2/minute")]
    # Using the sandbox one has is no creation; bob's budget is his own.
    await run(broker, engine, Principal("bob"))


@pytest.mark.parametrize("cap", ["host", "tenant"])
async def test_a_parallel_burst_does_not_overshoot_a_cap(
    make_broker: MakeBroker, fake: FakeBackend, cap: str
) -> None:
    """Ten principals at once while creates are slow: exactly the cap gets sandboxes."""
    if cap == "host":
        broker, engine = make_broker(max_sandboxes=3), engine_with()
        code = "host-sandbox-quota"
    else:
        broker, engine = make_broker(), engine_with(lifecycle={"max_sandboxes_per_tenant": 3})
        code = "tenant-sandbox-quota"
    creating = Gate()
    fake.on_call = lambda method, _: creating.wait() if method == "create" else None
    done: list[str] = []
    refused: list[str] = []

    async def one(i: int) -> None:
        try:
            await run(broker, engine, Principal(f"p{i}"))
            done.append(f"p{i}")
        except QuotaExceeded as exc:
            refused.append(exc.code)

    async with anyio.create_task_group() as tasks:
        for i in range(10):
            tasks.start_soon(one, i)
        # Every call has been admitted or refused while the admitted creates are still held.
        await until(lambda: len(refused) == 7 and len(fake.called("create")) == 3, what="the burst")
        creating.open()
    assert len(done) == 3 and refused == [code] * 7
    assert len(fake.containers()) == 3
    assert len(broker.sandboxes) == 3
