"""After a gateway restart, without an engine: the start-up sweep keeps what can be adopted and removes
the rest, and a new broker adopts a principal's sandbox by its name, unless it is not one to trust."""

from __future__ import annotations

import pytest

from audit import MemorySink
from gateway.backend.create_body import USER_LABEL
from gateway.sandboxes.broker import Broker
from gateway.sandboxes.naming import GATEWAY as GATEWAY_LABEL
from gateway.sandboxes.naming import MANAGED, POOL, POOL_PREFIX, PROFILE, SPEC, sandbox_name
from gateway.uids import UidRange
from policy import Principal
from policy.engine import PolicyEngine
from tests.unit.broker_support import GATEWAY, Clock, bash, decide, events, make_policy, removal_reasons
from tests.unit.conftest import MakeBroker
from tests.unit.fake_backend import FakeBackend, Reply

pytestmark = pytest.mark.anyio
ALICE = Principal("alice")


def current_specs(engine: PolicyEngine) -> dict[str, str]:
    return {name: profile.sandbox.digest() for name, profile in engine.policy.profiles.items()}


async def run(broker: Broker, engine: PolicyEngine, principal: Principal = ALICE, code: str = "true") -> None:
    await broker.execute(principal, decide(engine, principal), bash(code))


async def test_the_sweep_keeps_current_running_sandboxes_and_removes_the_rest(
    make_broker: MakeBroker, fake: FakeBackend, sink: MemorySink
) -> None:
    engine = PolicyEngine(make_policy())
    older = PolicyEngine(make_policy(default={"sandbox": {"memory": "256m", "memory_swap": "256m"}}))
    first = make_broker()
    await run(first, engine, Principal("kept"))
    await run(first, engine, Principal("stopped"))
    await run(first, older, Principal("older"))
    ids = {p: first.sandbox_of(Principal(p)).container_id for p in ("kept", "stopped", "older")}  # type: ignore[union-attr]
    fake.stop(ids["stopped"])
    labels = {
        MANAGED: "true",
        GATEWAY_LABEL: GATEWAY,
        PROFILE: "default",
        SPEC: current_specs(engine)["default"],
    }
    pooled = fake.add_container(f"{POOL_PREFIX}0123456789abcdef", {**labels, POOL: "true"})
    foreign = fake.add_container("sgw-other", {**labels, GATEWAY_LABEL: "another-gateway"})

    second = make_broker()
    assert await second.sweep(current_specs(engine)) == (1, 3)

    assert {c.id for c in fake.containers()} == {ids["kept"], foreign.id}
    reasons = removal_reasons(sink)
    assert reasons[ids["stopped"]] == "orphan-stopped"
    assert reasons[ids["older"]] == "older-policy"
    assert reasons[pooled.id] == "pool-unassigned"
    assert ids["kept"] not in reasons
    assert [(e["detail"]["kept"], e["detail"]["removed"]) for e in events(sink, "sandbox.sweep")] == [(1, 3)]
    fake.vanish(foreign.id)  # not this gateway's: only its own clean-up would remove it


@pytest.mark.parametrize("swept", [True, False], ids=["after-sweep", "without-sweep"])
async def test_a_new_broker_adopts_the_principals_sandbox_by_name(
    make_broker: MakeBroker, fake: FakeBackend, sink: MemorySink, exec_path: str, swept: bool
) -> None:
    engine = PolicyEngine(make_policy(exec_path))
    first = make_broker()
    fake.handler = lambda command: Reply(exit_code=137, oom_kill=True)
    before = await first.execute(ALICE, decide(engine, ALICE), bash("eat memory"))
    assert before.oom_killed
    container = fake.by_name(sandbox_name(GATEWAY, "default/alice"))
    assert container is not None
    creates = len(fake.called("create"))

    second = make_broker()
    if swept:
        assert await second.sweep(current_specs(engine)) == (1, 0)
    fake.handler = lambda command: Reply(exit_code=137)  # killed, but not by the OOM killer
    after = await second.execute(ALICE, decide(engine, ALICE), bash("kill -9 $$"))

    adopted = second.sandbox_of(ALICE)
    assert adopted is not None and adopted.container_id == container.id
    assert adopted.user == container.labels[USER_LABEL]
    assert len(fake.called("create")) == creates, "adopted, not created"
    assert [e["resource"]["container_id"] for e in events(sink, "sandbox.adopt")] == [container.id]
    assert after.exit_code == 137 and not after.oom_killed, "an OOM kill from before is not this call's"
    assert not after.sandbox_replaced
    if exec_path == "agent":
        assert fake.called("attach").count(container.id) == 2, "the new gateway attached to its agent"


@pytest.mark.parametrize("why", ["foreign-uid", "too-old", "other-spec", "stopped"])
async def test_a_sandbox_not_to_adopt_is_removed_and_replaced(
    make_broker: MakeBroker, fake: FakeBackend, sink: MemorySink, clock: Clock, why: str
) -> None:
    engine = PolicyEngine(make_policy())
    first = make_broker()
    await run(first, engine)
    old = first.sandbox_of(ALICE)
    assert old is not None
    uids = None
    if why == "foreign-uid":  # another gateway's uid range: the uid label is not one of ours
        uids = UidRange.parse("1500000-1500063")
    elif why == "too-old":
        clock.advance(engine.policy.profiles["default"].lifecycle.max_age_s + 1)
    elif why == "other-spec":
        engine = PolicyEngine(make_policy(default={"sandbox": {"pids_limit": 64}}))
    else:
        fake.stop(old.container_id)

    second = make_broker(uids=uids)
    await run(second, engine)

    new = second.sandbox_of(ALICE)
    assert new is not None and new.container_id != old.container_id
    assert removal_reasons(sink)[old.container_id] == "stale"
    assert [c.id for c in fake.containers()] == [new.container_id]
    assert new.name == old.name == sandbox_name(GATEWAY, "default/alice")
    if uids is not None:
        assert int(new.user.partition(":")[0]) in uids
    assert events(sink, "sandbox.adopt") == []


async def test_a_sandbox_whose_agent_does_not_answer_is_not_adopted(
    make_broker: MakeBroker, fake: FakeBackend, sink: MemorySink
) -> None:
    engine = PolicyEngine(make_policy("agent"))
    first = make_broker()
    await run(first, engine)
    old = first.sandbox_of(ALICE)
    assert old is not None
    fake.container(old.container_id).agent = False  # its agent died; the container still runs

    second = make_broker()
    await run(second, engine, code="fresh")

    new = second.sandbox_of(ALICE)
    assert new is not None and new.container_id != old.container_id
    assert removal_reasons(sink)[old.container_id] == "agent-unreachable"
    assert [c.code for c in fake.ran("bash")][-1] == "fresh"
    assert fake.ran("bash")[-1].container.id == new.container_id
