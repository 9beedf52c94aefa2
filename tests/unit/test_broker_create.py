"""Making a sandbox without an engine: what is created (image, labels, uid), a uid another sandbox
holds, an image that does not match its pin, and failures on the way that must leave nothing behind."""

from __future__ import annotations

import pytest

from audit import AuditLog, AuditWriteError, MemorySink
from gateway.backend.create_body import USER_LABEL
from gateway.errors import EngineError, GatewayError, SandboxError
from gateway.sandboxes.broker import Broker
from gateway.sandboxes.naming import GATEWAY as GATEWAY_LABEL
from gateway.sandboxes.naming import MANAGED, PRINCIPAL, PROFILE, SPEC, TENANT, sandbox_name
from policy import Principal
from policy.engine import PolicyEngine
from tests.unit.broker_support import GATEWAY, bash, decide, events, make_policy, removal_reasons
from tests.unit.fake_backend import FakeBackend

pytestmark = pytest.mark.anyio
ALICE = Principal("alice", tenant="acme")
IMAGE = "mcp-code-executor:latest"


async def run(broker: Broker, engine: PolicyEngine, code: str = "true") -> bytes:
    return (await broker.execute(ALICE, decide(engine, ALICE), bash(code))).stdout


async def test_a_sandbox_is_made_from_the_inspected_image_with_its_owners_labels_and_a_uid_of_its_own(
    broker: Broker, fake: FakeBackend, sink: MemorySink, exec_path: str
) -> None:
    engine = PolicyEngine(make_policy(exec_path))
    image_id = "sha256:" + "ab" * 32
    fake.images[IMAGE] = (image_id, frozenset())
    await run(broker, engine)
    await broker.execute(Principal("bob"), decide(engine, Principal("bob")), bash("true"))

    (container,) = [c for c in fake.containers() if c.labels.get(PRINCIPAL) == "alice"]
    assert container.name == sandbox_name(GATEWAY, "acme/alice")
    assert container.body["Image"] == image_id, "created from the id inspected, not the movable tag"
    assert container.labels[MANAGED] == "true" and container.labels[GATEWAY_LABEL] == GATEWAY
    assert container.labels[TENANT] == "acme" and container.labels[PROFILE] == "default"
    assert container.labels[SPEC] == engine.policy.profiles["default"].sandbox.digest()
    uids = {c.uid for c in fake.containers()}
    assert len(uids) == 2 and all(uid in broker.containers.uids for uid in uids), "a uid of its own each"
    sandbox = broker.sandbox_of(ALICE)
    assert (
        sandbox is not None
        and sandbox.user == container.labels[USER_LABEL] == f"{container.uid}:{container.uid}"
    )
    assert fake.ran("bash")[0].container is container
    created = [e for e in events(sink, "sandbox.create") if e["resource"]["container_id"] == container.id]
    assert created[0]["resource"]["image_digest"] == image_id


async def test_a_uid_another_sandbox_holds_is_picked_again(broker: Broker, fake: FakeBackend) -> None:
    engine = PolicyEngine(make_policy())
    fake.refuse_uids = 2  # the socket proxy refuses the first two picks (uid-in-use)
    assert await run(broker, engine, "served") == b"served\n"
    assert len(fake.called("create")) == 3 and len(fake.containers()) == 1


async def test_a_uid_refused_every_time_is_an_error_and_leaves_nothing(
    broker: Broker, fake: FakeBackend
) -> None:
    engine = PolicyEngine(make_policy())
    fake.refuse_uids = 100
    with pytest.raises(SandboxError) as refused:
        await run(broker, engine)
    assert refused.value.code == "uid-in-use"
    assert len(fake.called("create")) == 5, "a bounded number of tries"
    assert fake.containers() == [] and broker.sandbox_of(ALICE) is None


async def test_an_image_that_is_not_the_pinned_one_is_refused_before_any_create(
    broker: Broker, fake: FakeBackend
) -> None:
    pin = "sha256:" + "0" * 64
    engine = PolicyEngine(make_policy(default={"sandbox": {"images": [f"{IMAGE}@{pin}"]}}))
    fake.images[IMAGE] = ("sha256:" + "1" * 64, frozenset({"sha256:" + "2" * 64}))
    with pytest.raises(SandboxError) as refused:
        await run(broker, engine)
    assert refused.value.code == "image-digest-mismatch"
    assert fake.called("create") == []

    fake.images[IMAGE] = ("sha256:" + "1" * 64, frozenset({pin}))  # the pin is one of its repo digests
    assert await run(broker, engine, "pinned") == b"pinned\n"


@pytest.mark.parametrize(
    ("exec_path", "step"),
    [("exec", "start"), ("agent", "start"), ("agent", "attach"), ("agent", "handshake")],
)
async def test_a_sandbox_that_fails_to_start_is_removed_and_the_next_call_gets_one(
    broker: Broker, fake: FakeBackend, sink: MemorySink, exec_path: str, step: str
) -> None:
    engine = PolicyEngine(make_policy(exec_path))
    if step == "handshake":
        fake.agents_answer = False  # the image has no agent, or it died at once
    else:
        fake.fail(step, EngineError(f"the Docker engine failed to {step} a sandbox"))
    with pytest.raises(GatewayError):
        await run(broker, engine)
    (failed,) = fake.called("create")
    assert fake.containers() == [] and broker.sandbox_of(ALICE) is None
    reasons = [e["detail"]["reason"] for e in events(sink, "docker.remove") if e["resource"]["container_id"]]
    assert reasons == ["start-failed"]
    assert events(sink, "sandbox.create") == [], "it never became a sandbox"

    fake.agents_answer = True
    assert await run(broker, engine, "second try") == b"second try\n"
    assert failed == sandbox_name(GATEWAY, "acme/alice")


async def test_a_sandbox_whose_removal_failed_is_found_again_by_name(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    """A reset that the engine refused: the sandbox still exists, and the gateway (which swept at
    start-up) must find it under its name on the next call rather than trip over it."""
    engine = PolicyEngine(make_policy())
    await broker.sweep({name: p.sandbox.digest() for name, p in engine.policy.profiles.items()})
    await run(broker, engine)
    sandbox = broker.sandbox_of(ALICE)
    assert sandbox is not None
    fake.fail("remove", EngineError("the Docker engine failed to remove a sandbox"))
    with pytest.raises(EngineError):
        await broker.reset(ALICE)

    assert await run(broker, engine, "still mine") == b"still mine\n"
    again = broker.sandbox_of(ALICE)
    assert again is not None and again.container_id == sandbox.container_id
    assert [e["resource"]["container_id"] for e in events(sink, "sandbox.adopt")] == [sandbox.container_id]
    assert await broker.reset(ALICE)
    assert removal_reasons(sink)[sandbox.container_id] == "reset"


@pytest.mark.parametrize("exec_path", ["agent", "exec"])
async def test_a_sandbox_whose_creation_cannot_be_recorded_is_removed(
    fake: FakeBackend, exec_path: str
) -> None:
    """The audit log fails closed: a sandbox whose `sandbox.create` could not be written does not
    stay behind, running and unknown to the broker."""

    class RefusesCreations(MemorySink):
        def write(self, line: str) -> None:
            if '"sandbox.create"' in line:
                raise OSError("no space left on the audit volume")
            super().write(line)

    broker = Broker(fake, AuditLog([RefusesCreations()]), gateway_id=GATEWAY)
    engine = PolicyEngine(make_policy(exec_path))
    with pytest.raises(AuditWriteError):
        await broker.execute(ALICE, decide(engine, ALICE), bash("true"))
    assert broker.sandbox_of(ALICE) is None
    assert fake.containers() == []
    assert fake.open_connections() == 0
