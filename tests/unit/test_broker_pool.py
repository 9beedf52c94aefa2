"""Warm pools without an engine: filled ahead, handed out once (renamed to their principal's name),
retired when the pool shrinks or its spec goes, never handed out when old, and within the host cap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from audit import MemorySink
from gateway.errors import EngineError, QuotaExceeded
from gateway.sandboxes import pool_keeper
from gateway.sandboxes.broker import Broker
from gateway.sandboxes.naming import POOL, POOL_PREFIX, PRINCIPAL, sandbox_name
from gateway.sandboxes.pool import pool_targets
from policy import Principal
from policy.engine import PolicyEngine
from tests.unit.broker_support import (
    GATEWAY,
    Clock,
    bash,
    decide,
    events,
    make_policy,
    removal_reasons,
    until,
)
from tests.unit.conftest import MakeBroker
from tests.unit.fake_backend import FakeBackend, Gate, held

pytestmark = pytest.mark.anyio


def pooled_engine(size: int = 2, exec_path: str = "agent", **lifecycle: object) -> PolicyEngine:
    return PolicyEngine(make_policy(exec_path, default={"lifecycle": {"warm_pool": size, **lifecycle}}))


@asynccontextmanager
async def maintained(broker: Broker, engine: PolicyEngine) -> AsyncIterator[None]:
    """The broker's pool configured from `engine` and kept filled while the block runs."""
    broker.pool.configure(pool_targets(engine))
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(broker.maintain_pool)
            yield
            # Stop the loop when it rests (full, or at the host cap), not in the middle of a fill.
            await until(lambda: not broker.pool.wanted() or at_cap(broker), what="the pool loop to rest")
            tasks.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the test's own failure, not wrapped in a group
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def at_cap(broker: Broker) -> bool:
    return len(broker.sandboxes) + len(broker.pool.sandboxes) >= broker.max_sandboxes


async def pool_of(broker: Broker, size: int) -> set[str]:
    await until(lambda: len(broker.pool.sandboxes) == size, what=f"a pool of {size}")
    return {s.container_id for s in broker.pool.sandboxes}


async def run(broker: Broker, engine: PolicyEngine, who: str, code: str = "true") -> bytes:
    principal = Principal(who)
    return (await broker.execute(principal, decide(engine, principal), bash(code))).stdout


async def test_the_pool_fills_with_unassigned_sandboxes(
    broker: Broker, fake: FakeBackend, sink: MemorySink, exec_path: str
) -> None:
    engine = pooled_engine(2, exec_path)
    async with maintained(broker, engine):
        pooled = await pool_of(broker, 2)
        await anyio.sleep(0)  # one more turn of the loop: it must not make a third
        assert {c.id for c in fake.containers()} == pooled
    for container in fake.containers():
        assert container.name.startswith(POOL_PREFIX)
        assert container.labels[POOL] == "true" and PRINCIPAL not in container.labels
    created = events(sink, "sandbox.create")
    assert sorted(e["resource"]["container_id"] for e in created) == sorted(pooled)
    assert all(e["detail"]["pool"] is True for e in created)
    assert broker.sandboxes == [], "nobody owns a pooled sandbox"


async def test_a_pooled_sandbox_goes_to_one_principal_under_its_name_and_the_pool_refills(
    broker: Broker, fake: FakeBackend, sink: MemorySink, exec_path: str
) -> None:
    engine = pooled_engine(2, exec_path)
    async with maintained(broker, engine):
        pooled = await pool_of(broker, 2)
        creates = len(fake.called("create"))
        assert await run(broker, engine, "alice", "mine") == b"mine\n"
        assert await run(broker, engine, "bob") == b"true\n"
        alice, bob = broker.sandbox_of(Principal("alice")), broker.sandbox_of(Principal("bob"))
        assert alice is not None and bob is not None
        assert {alice.container_id, bob.container_id} == pooled
        assert fake.container(alice.container_id).name == sandbox_name(GATEWAY, "default/alice")
        assert fake.container(bob.container_id).name == sandbox_name(GATEWAY, "default/bob")
        assigned = [e["resource"]["container_id"] for e in events(sink, "sandbox.assign")]
        assert assigned == [alice.container_id, bob.container_id]
        assert fake.ran("bash")[0].container.id == alice.container_id

        refilled = await pool_of(broker, 2)
        assert not refilled & pooled, "a handed-out sandbox never returns to the pool"
        assert all(name.startswith(POOL_PREFIX) for name in fake.called("create")[creates:])


async def test_shrinking_the_pool_or_dropping_its_spec_retires_pooled_sandboxes(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    async with maintained(broker, pooled_engine(3)):
        pooled = await pool_of(broker, 3)
        broker.pool.configure(pool_targets(pooled_engine(1)))
        await until(lambda: len(fake.containers()) == 1, what="the pool to shrink")
        kept = {c.id for c in fake.containers()}
        assert kept <= pooled and {s.container_id for s in broker.pool.sandboxes} == kept

        broker.pool.configure({})  # no profile keeps a pool of this spec any more
        await until(lambda: fake.containers() == [], what="the pool to go")
    reasons = removal_reasons(sink)
    assert {reasons[c] for c in pooled} == {"pool-retired"}


async def test_pooled_sandboxes_a_drain_dooms_are_retired_and_replaced(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    """Fleet mode: after a host starts draining, its ready pooled sandboxes go (a new principal
    would otherwise get a sandbox on the drained host); the pool refills elsewhere."""
    async with maintained(broker, pooled_engine(3)):
        pooled = await pool_of(broker, 3)
        doomed = sorted(pooled)[:2]
        assert broker.pool.retire_if(lambda sandbox: sandbox.container_id in doomed) == 2
        assert not {s.container_id for s in broker.pool.sandboxes} & set(doomed)
        await until(lambda: len(broker.pool.sandboxes) == 3, what="the pool to refill")
        await until(lambda: not {c.id for c in fake.containers()} & set(doomed), what="the doomed to go")
    reasons = removal_reasons(sink)
    assert {reasons[c] for c in doomed} == {"pool-retired"}
    assert broker.pool.retire_if(lambda sandbox: False) == 0


async def test_a_pooled_sandbox_made_while_its_host_starts_draining_is_retired_when_ready(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    """The drain comes while a pool sandbox on that host is being created: it never joins the pool
    (a new principal would get a sandbox on the drained host); it is removed and made elsewhere."""
    held = Gate()
    creating: list[str] = []

    def hold_first_create(method: str, name: str) -> None:
        if method == "create" and not creating:
            creating.append(name)
            held.wait()

    fake.on_call = hold_first_create
    async with maintained(broker, pooled_engine(1)):
        await until(lambda: bool(creating), what="the pool's first create")
        assert broker.pool.retire_if(lambda sandbox: sandbox.name == creating[0]) == 0
        held.open()
        await until(lambda: bool(fake.called("start")), what="its start")
        doomed = fake.called("start")[0]
        await until(lambda: doomed in removal_reasons(sink), what="its removal")
        (kept,) = await pool_of(broker, 1)
        assert kept != doomed and fake.container(kept).name != creating[0]
    fake.on_call = None
    assert removal_reasons(sink)[doomed] == "pool-retired"
    assert doomed not in {c.id for c in fake.containers()}


async def test_an_old_pooled_sandbox_is_not_handed_out(
    broker: Broker, fake: FakeBackend, sink: MemorySink, clock: Clock
) -> None:
    engine = pooled_engine(1, max_age_s=1000)
    async with maintained(broker, engine):
        (old,) = await pool_of(broker, 1)
        clock.advance(501)  # past half its max age: its principal would get too little of it
        await run(broker, engine, "alice")
        alice = broker.sandbox_of(Principal("alice"))
        assert alice is not None and alice.container_id != old
        assert alice.name == sandbox_name(GATEWAY, "default/alice")
        await until(lambda: old in removal_reasons(sink), what="the old one to be removed")
        assert removal_reasons(sink)[old] == "pool-retired"
        (fresh,) = await pool_of(broker, 1)
        assert fresh not in (old, alice.container_id)


async def test_reaping_retires_old_pooled_sandboxes(
    broker: Broker, fake: FakeBackend, sink: MemorySink, clock: Clock
) -> None:
    engine = pooled_engine(2, max_age_s=1000)
    async with maintained(broker, engine):
        pooled = await pool_of(broker, 2)
        clock.advance(501)
        await broker.reap_expired()
        await until(lambda: not pooled & {c.id for c in fake.containers()}, what="the old ones to go")
        assert await pool_of(broker, 2) != pooled
    assert {removal_reasons(sink)[c] for c in pooled} == {"pool-retired"}


async def test_a_pooled_sandbox_that_cannot_be_renamed_serves_its_call_then_goes_and_the_next_says_so(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    """The rename runs alongside the first call: that call is served in the pooled sandbox; a
    sandbox that could not be given its principal's name is then removed, and the principal's next
    call runs in a new one, named after the principal, and says its sandbox was replaced."""
    engine = pooled_engine(1)
    async with maintained(broker, engine):
        (pooled,) = await pool_of(broker, 1)
        fake.fail("rename", EngineError("the Docker engine failed to rename a sandbox"))
        assert await run(broker, engine, "alice", "served") == b"served\n"
        assert broker.sandbox_of(Principal("alice")) is None
        assert removal_reasons(sink)[pooled] == "pool-assign-failed"
        assert pooled not in {c.id for c in fake.containers()}
        alice = Principal("alice")
        outcome = await broker.execute(alice, decide(engine, alice), bash("next"))
        assert outcome.stdout == b"next\n" and outcome.sandbox_replaced is True
        mine = broker.sandbox_of(alice)
        assert mine is not None and mine.container_id != pooled
        assert mine.name == sandbox_name(GATEWAY, "default/alice")


async def test_a_pooled_sandboxs_first_call_runs_while_it_is_renamed_and_returns_after(
    broker: Broker, fake: FakeBackend
) -> None:
    engine = pooled_engine(1)
    async with maintained(broker, engine):
        (pooled,) = await pool_of(broker, 1)
        held = Gate()
        fake.on_call = lambda method, _: held.wait() if method == "rename" else None
        answers: list[bytes] = []

        async def first() -> None:
            answers.append(await run(broker, engine, "alice", "first"))

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            await until(lambda: bool(fake.called("rename")), what="the rename")
            await until(
                lambda: any(c.container.id == pooled and c.code == "first" for c in fake.ran("bash")),
                what="the command, in the pooled sandbox",
            )
            assert answers == [], "the call waits for its sandbox's rename"
            held.open()
        fake.on_call = None
        assert answers == [b"first\n"]
        alice = broker.sandbox_of(Principal("alice"))
        assert alice is not None and alice.container_id == pooled
        assert {c.name for c in fake.containers() if c.id == pooled} == {
            sandbox_name(GATEWAY, "default/alice")
        }


@pytest.mark.parametrize("bound_s", [30.0, 0.01])
async def test_the_pool_refills_after_a_handed_out_sandboxs_first_call_ends_or_the_bound(
    broker: Broker, fake: FakeBackend, monkeypatch: pytest.MonkeyPatch, bound_s: float
) -> None:
    """A refill's create would compete with the first call the pool exists to speed up, so it
    waits for that call; for no longer than the bound, so a call that never ends cannot starve it."""
    monkeypatch.setattr(pool_keeper, "_HANDOVER_WAIT_S", bound_s)
    engine = pooled_engine(1)
    async with maintained(broker, engine):
        (pooled,) = await pool_of(broker, 1)
        creates = len(fake.called("create"))
        gate = Gate()
        fake.handler = held(gate)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run, broker, engine, "alice", "hold")
            await until(lambda: fake.active == 1, what="the first call to run")
            if bound_s > 1:
                for _ in range(20):  # the pool loop's chances to refill
                    await anyio.sleep(0)
                assert len(fake.called("create")) == creates and broker.pool.sandboxes == []
                gate.open()
            await until(lambda: len(broker.pool.sandboxes) == 1, what="the pool to refill")
            gate.open()
        alice = broker.sandbox_of(Principal("alice"))
        assert alice is not None and alice.container_id == pooled


async def test_the_pool_stays_within_the_host_cap(make_broker: MakeBroker, fake: FakeBackend) -> None:
    broker = make_broker(max_sandboxes=2)
    engine = pooled_engine(2)
    async with maintained(broker, engine):
        await pool_of(broker, 2)
        await run(broker, engine, "alice")  # takes a pooled one: nothing is added
        await run(broker, engine, "bob")
        with pytest.raises(QuotaExceeded) as refused:
            await run(broker, engine, "carol")
        assert refused.value.code == "host-sandbox-quota"
        await anyio.sleep(0.01)  # the pool loop had its chances to refill
        assert len(fake.containers()) == 2 and broker.pool.sandboxes == []


async def test_the_pool_refills_when_the_host_cap_frees_up(
    make_broker: MakeBroker, fake: FakeBackend
) -> None:
    """Once the cap stopped the pool from filling, a sandbox going away must let it fill again."""
    broker = make_broker(max_sandboxes=2)
    engine = pooled_engine(2)
    async with maintained(broker, engine):
        await pool_of(broker, 2)
        await run(broker, engine, "alice")
        await run(broker, engine, "bob")
        assert broker.pool.sandboxes == []
        assert await broker.reset(Principal("alice"))
        await until(lambda: len(broker.pool.sandboxes) == 1, timeout_s=1, what="the pool to refill")
        assert len(fake.containers()) == 2


async def test_a_call_cancelled_while_a_pooled_sandbox_is_handed_to_it_leaves_nothing_behind(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    """The client goes away during the rename that gives it a pooled sandbox: that sandbox ends up
    its principal's or removed, never in between (running, and neither pooled nor anyone's)."""
    engine = pooled_engine(1)
    async with maintained(broker, engine):
        (pooled,) = await pool_of(broker, 1)
        held = Gate()
        fake.on_call = lambda method, _: held.wait() if method == "rename" else None
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run, broker, engine, "alice", "first")
                await until(lambda: bool(fake.called("rename")), what="the rename")
                scope.cancel()
                held.open()
        fake.on_call = None
        assert await run(broker, engine, "alice", "next") == b"next\n"
        alice = broker.sandbox_of(Principal("alice"))
        assert alice is not None
        if alice.container_id != pooled:
            assert removal_reasons(sink)[pooled] == "pool-assign-failed"
        await pool_of(broker, 1)  # refilled
        known = {alice.container_id} | {s.container_id for s in broker.pool.sandboxes}
        assert {c.id for c in fake.containers()} <= known
