"""Upkeep.host_lost, as the fleet monitor calls it when a host goes down: the broker forgets exactly
the sandboxes on it (without removing them), closes their executors, and tells each principal on its
next call; a sandbox that is still there when its principal calls again is found by name."""

from __future__ import annotations

import pytest

from audit import MemorySink
from gateway.sandboxes.broker import Broker, Sandbox
from policy import Principal
from policy.engine import PolicyEngine
from tests.unit.broker_support import bash, decide, events, make_policy
from tests.unit.conftest import MakeBroker
from tests.unit.fake_backend import FakeBackend

pytestmark = pytest.mark.anyio
ALICE, BOB, CAROL = Principal("alice"), Principal("bob"), Principal("carol")


def specs(engine: PolicyEngine) -> dict[str, str]:
    return {name: profile.sandbox.digest() for name, profile in engine.policy.profiles.items()}


async def call(broker: Broker, engine: PolicyEngine, principal: Principal) -> bool:
    """Run a command for `principal`; whether its result says the sandbox was replaced."""
    outcome = await broker.execute(principal, decide(engine, principal), bash("echo hi"))
    assert outcome.exit_code == 0
    return outcome.sandbox_replaced


def sandbox(broker: Broker, principal: Principal) -> Sandbox:
    found = broker.sandbox_of(principal)
    assert found is not None
    return found


def spy_on_close(monkeypatch: pytest.MonkeyPatch, box: Sandbox, closed: list[str]) -> None:
    real = box.executor.close

    def close() -> None:
        closed.append(box.container_id)
        real()

    monkeypatch.setattr(box.executor, "close", close)


async def test_host_lost_forgets_exactly_the_sandboxes_on_the_lost_containers(
    make_broker: MakeBroker,
    fake: FakeBackend,
    sink: MemorySink,
    exec_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = PolicyEngine(make_policy(exec_path))
    broker = make_broker()
    await broker.sweep(specs(engine))  # after a start-up sweep, only names it kept are looked for
    for principal in (ALICE, BOB, CAROL):
        await call(broker, engine, principal)
    alice, bob, carol = (sandbox(broker, p) for p in (ALICE, BOB, CAROL))
    closed: list[str] = []
    for box in (alice, bob, carol):
        spy_on_close(monkeypatch, box, closed)

    forgotten = await broker.upkeep.host_lost({alice.container_id, bob.container_id, "not-a-sandbox"})

    assert forgotten == 2
    assert broker.sandbox_of(ALICE) is None and broker.sandbox_of(BOB) is None
    assert broker.sandbox_of(CAROL) is carol
    assert sorted(closed) == sorted([alice.container_id, bob.container_id])
    assert fake.removals == [], "forgotten, not removed: the host is not there to ask"
    assert {c.id for c in fake.containers()} == {alice.container_id, bob.container_id, carol.container_id}
    assert events(sink, "sandbox.remove") == []

    # Alice's host never came back: her next call runs in a new sandbox, and says so (once).
    fake.vanish(alice.container_id)
    assert await call(broker, engine, ALICE)
    assert sandbox(broker, ALICE).container_id != alice.container_id
    assert not await call(broker, engine, ALICE)

    # Bob's host is back with his sandbox: he gets it again, by its name, with his files.
    assert not await call(broker, engine, BOB)
    assert sandbox(broker, BOB).container_id == bob.container_id
    assert [e["resource"]["container_id"] for e in events(sink, "sandbox.adopt")] == [bob.container_id]

    # Carol was on another host: nothing changed for her.
    assert not await call(broker, engine, CAROL)
    assert sandbox(broker, CAROL) is carol


async def test_host_lost_of_no_known_sandbox_changes_nothing(
    make_broker: MakeBroker, fake: FakeBackend, exec_path: str
) -> None:
    engine = PolicyEngine(make_policy(exec_path))
    broker = make_broker()
    await call(broker, engine, ALICE)
    alice = sandbox(broker, ALICE)
    assert await broker.upkeep.host_lost(set()) == 0
    assert await broker.upkeep.host_lost({"elsewhere-1", "elsewhere-2"}) == 0
    assert broker.sandbox_of(ALICE) is alice and alice.executor.connected
    assert not await call(broker, engine, ALICE)
    assert sandbox(broker, ALICE) is alice


async def test_a_lost_sandbox_no_longer_counts_against_the_quotas(
    make_broker: MakeBroker, fake: FakeBackend, exec_path: str
) -> None:
    engine = PolicyEngine(make_policy(exec_path))
    broker = make_broker(max_sandboxes=1)
    await call(broker, engine, ALICE)
    lost = sandbox(broker, ALICE)
    await broker.upkeep.host_lost({lost.container_id})
    fake.vanish(lost.container_id)
    assert not await call(broker, engine, BOB), "room for bob: the lost one counts no more"
    assert [s.principal_key for s in broker.sandboxes] == ["default/bob"]
