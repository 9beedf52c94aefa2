"""A principal's sandbox over its life, without an engine: lost and replaced (once per call), replaced
on a spec change, reaped when idle or old (never under a running call), and what a call learns
about OOM kills and timeouts."""

from __future__ import annotations

import socket

import anyio
import pytest

from audit import MemorySink
from gateway.backend.agent_channel import AgentChannel
from gateway.backend.base import ExecOutcome
from gateway.errors import AgentBroken, EngineError, GatewayError
from gateway.sandboxes.broker import Broker
from policy import Principal
from policy.engine import PolicyEngine
from tests.unit.broker_support import Clock, bash, decide, make_policy, removal_reasons, until
from tests.unit.fake_backend import Command, FakeBackend, Gate, Reply, echo_handler, held

pytestmark = pytest.mark.anyio
ALICE = Principal("alice")


def engine_for(exec_path: str = "agent", **default: object) -> PolicyEngine:
    return PolicyEngine(make_policy(exec_path, default=dict(default)))


async def run(broker: Broker, engine: PolicyEngine, code: str = "true") -> ExecOutcome:
    return await broker.execute(ALICE, decide(engine, ALICE), bash(code))


def container_of(broker: Broker) -> str:
    sandbox = broker.sandbox_of(ALICE)
    assert sandbox is not None
    return sandbox.container_id


# -- lost sandboxes -----------------------------------------------------------------------------


async def test_a_sandbox_removed_between_calls_is_replaced_and_the_call_runs_once(
    broker: Broker, fake: FakeBackend, sink: MemorySink, exec_path: str
) -> None:
    engine = engine_for(exec_path)
    await run(broker, engine)
    lost = container_of(broker)
    fake.vanish(lost)

    result = await run(broker, engine, "echo new")
    assert result.stdout == b"echo new\n" and result.exit_code == 0
    assert result.sandbox_replaced, "the call says its sandbox is a new one"
    assert container_of(broker) != lost
    assert [c.container.id for c in fake.ran("bash") if c.code == "echo new"] == [container_of(broker)]
    assert removal_reasons(sink)[lost] == "lost"
    assert not (await run(broker, engine)).sandbox_replaced, "only the first call after the loss says so"


async def test_a_sandbox_that_cannot_start_the_command_is_replaced_once(
    broker: Broker, fake: FakeBackend, sink: MemorySink, exec_path: str
) -> None:
    engine = engine_for(exec_path)
    await run(broker, engine)
    first = container_of(broker)
    fake.cannot_start = lambda command: command.container.id == first

    result = await run(broker, engine, "retried")
    assert result.stdout == b"retried\n" and result.sandbox_replaced
    assert container_of(broker) != first
    assert removal_reasons(sink)[first] == "lost"


async def test_a_second_loss_in_one_call_is_an_error(
    broker: Broker, fake: FakeBackend, exec_path: str
) -> None:
    engine = engine_for(exec_path)
    fake.cannot_start = lambda command: command.kind == "bash"
    with pytest.raises(GatewayError) as failed:
        await run(broker, engine, "never")
    assert failed.value.code == ("sandbox-exhausted" if exec_path == "agent" else "sandbox-gone")
    assert len(fake.called("create")) == 2, "one sandbox, and one replacement"
    assert [c.code for c in fake.ran("bash")] == ["never", "never"], "tried once in each"
    assert fake.active == 0


async def test_a_sandbox_that_dies_during_the_command_is_reported_lost_and_replaced_next_time(
    broker: Broker, fake: FakeBackend, sink: MemorySink, exec_path: str
) -> None:
    engine = engine_for(exec_path)
    fake.handler = lambda command: Reply(stdout=b"partial", lose_sandbox=True)
    died = await run(broker, engine, "kill the container")
    dead = fake.ran("bash")[-1].container.id
    assert died.sandbox_lost and died.exit_code is None
    assert died.stdout == b"partial", "the output so far is kept"
    assert broker.sandbox_of(ALICE) is None
    assert removal_reasons(sink)[dead] == "died-during-exec"
    assert len(fake.ran("bash")) == 1, "a command that may have run is never retried"

    fake.handler = echo_handler
    after = await run(broker, engine, "next")
    assert after.sandbox_replaced and after.stdout == b"next\n"
    assert container_of(broker) != dead


async def test_a_broken_agent_connection_with_the_container_alive_is_an_error_not_a_loss(
    broker: Broker, fake: FakeBackend
) -> None:
    engine = engine_for("agent")
    await run(broker, engine)
    container = container_of(broker)

    def cut(command: Command) -> Reply:
        fake.drop_connections(command.container.id)  # e.g. the socket proxy restarted
        return Reply()

    fake.handler = cut
    with pytest.raises(AgentBroken) as broken:
        await run(broker, engine, "cut")
    assert broken.value.code == "sandbox-agent-lost"
    assert container_of(broker) == container, "the sandbox (and its files) is kept"

    fake.handler = echo_handler
    again = await run(broker, engine, "reconnected")
    assert again.stdout == b"reconnected\n" and not again.sandbox_replaced
    assert container_of(broker) == container
    assert fake.called("attach").count(container) == 2


# -- spec changes and expiry --------------------------------------------------------------------


async def test_a_spec_change_replaces_the_sandbox(
    broker: Broker, fake: FakeBackend, sink: MemorySink
) -> None:
    await run(broker, engine_for())
    old = container_of(broker)
    changed = engine_for(sandbox={"memory": "256m", "memory_swap": "256m"})

    result = await run(broker, changed, "new spec")
    assert result.stdout == b"new spec\n"
    new = container_of(broker)
    assert new != old
    assert removal_reasons(sink)[old] == "spec-changed"
    assert fake.container(new).body["HostConfig"]["Memory"] == 256 * 1024**2
    assert [c.id for c in fake.containers()] == [new]


@pytest.mark.parametrize("why", ["idle", "max-age"])
async def test_reaping_removes_idle_and_old_sandboxes(
    broker: Broker, fake: FakeBackend, sink: MemorySink, clock: Clock, why: str
) -> None:
    engine = engine_for(lifecycle={"idle_ttl_s": 100, "max_age_s": 150})
    await run(broker, engine)
    container = container_of(broker)
    clock.advance(90)
    assert await broker.reap_expired() == 0
    if why == "max-age":
        await run(broker, engine)  # used now: not idle 70 s later, but 160 s old
        clock.advance(70)
    else:
        clock.advance(20)  # 110 s without a call, 110 s old

    assert await broker.reap_expired() == 1
    assert broker.sandbox_of(ALICE) is None
    assert removal_reasons(sink)[container] == why
    assert fake.containers() == []


async def test_an_expired_sandbox_is_replaced_on_its_principals_next_call(
    broker: Broker, sink: MemorySink, clock: Clock
) -> None:
    engine = engine_for(lifecycle={"idle_ttl_s": 100})
    await run(broker, engine)
    old = container_of(broker)
    clock.advance(101)
    await run(broker, engine)
    assert container_of(broker) != old
    assert removal_reasons(sink)[old] == "idle"


async def test_reaping_never_removes_a_sandbox_with_a_call_running(
    broker: Broker, fake: FakeBackend, sink: MemorySink, clock: Clock, exec_path: str
) -> None:
    engine = engine_for(exec_path, lifecycle={"idle_ttl_s": 100, "max_age_s": 150})
    await run(broker, engine)
    container = container_of(broker)
    gate = Gate()
    fake.handler = held(gate)
    outcomes: list[ExecOutcome] = []

    async def hold() -> None:
        outcomes.append(await run(broker, engine, "hold"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold)
        await until(lambda: fake.active == 1, what="the held call")
        clock.advance(1000)  # idle and too old, by far
        assert await broker.reap_expired() == 0
        assert fake.container(container).running
        gate.open()
    assert outcomes[0].stdout == b"hold\n" and not outcomes[0].sandbox_lost
    assert await broker.reap_expired() == 1
    assert removal_reasons(sink)[container] == "max-age"


# -- what a call learns -------------------------------------------------------------------------


async def test_an_oom_kill_is_told_apart_from_a_plain_kill(
    broker: Broker, fake: FakeBackend, exec_path: str
) -> None:
    engine = engine_for(exec_path)
    fake.handler = lambda command: Reply(exit_code=137, oom_kill=command.code == "eat")
    eaten = await run(broker, engine, "eat")
    killed = await run(broker, engine, "kill -9 $$")
    assert eaten.exit_code == 137 and eaten.oom_killed
    assert killed.exit_code == 137 and not killed.oom_killed, "the counter did not move"
    assert len(fake.ran("oom-check")) == 2

    fake.oom_counter_readable = False
    unknown = await run(broker, engine, "eat")
    assert unknown.exit_code == 137 and not unknown.oom_killed, "no verdict without the counter"


async def test_a_timed_out_call_reaps_strays_and_keeps_a_healthy_sandbox(
    broker: Broker, fake: FakeBackend, exec_path: str
) -> None:
    engine = engine_for(exec_path)
    fake.handler = lambda command: Reply(exit_code=None, stdout=b"before", deadline_hit=True)
    result = await run(broker, engine, "sleep 999")
    assert result.deadline_hit and result.exit_code is None and result.stdout == b"before"
    assert len(fake.ran("reap")) == 1
    container = container_of(broker)

    fake.handler = echo_handler
    assert not (await run(broker, engine)).sandbox_replaced
    assert container_of(broker) == container


async def test_a_sandbox_that_cannot_even_reap_after_a_timeout_is_replaced(
    broker: Broker, fake: FakeBackend, sink: MemorySink, exec_path: str
) -> None:
    engine = engine_for(exec_path)
    fake.handler = lambda command: Reply(exit_code=None, deadline_hit=True)
    fake.reap_exit_code = 126  # not even `kill` could start: no pid left
    await run(broker, engine, "fork bomb")
    stuck = fake.ran("bash")[-1].container.id
    assert broker.sandbox_of(ALICE) is None
    assert removal_reasons(sink)[stuck] == "unrecoverable-after-timeout"

    fake.handler, fake.reap_exit_code = echo_handler, 1
    after = await run(broker, engine)
    assert after.sandbox_replaced and container_of(broker) != stuck


# -- cancellation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exec_path", "step"),
    [("exec", "create"), ("exec", "start"), ("agent", "start"), ("agent", "attach")],
)
async def test_a_call_cancelled_while_its_sandbox_is_made_does_not_block_the_next_call(
    broker: Broker, fake: FakeBackend, exec_path: str, step: str
) -> None:
    """The client goes away during its first call, while the gateway waits for the engine: the
    principal's next call must still get a sandbox (the gateway swept at start-up, as `serve` does)."""
    engine = engine_for(exec_path)
    await broker.sweep({name: p.sandbox.digest() for name, p in engine.policy.profiles.items()})
    held_step = Gate()
    fake.on_call = lambda method, _: held_step.wait() if method == step else None
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run, broker, engine, "first")
            await until(lambda: bool(fake.called(step)), what=f"the {step}")
            scope.cancel()
            held_step.open()
    fake.on_call = None

    result = await run(broker, engine, "next")
    assert result.stdout == b"next\n"
    assert len(fake.containers()) == 1


async def test_a_channel_cancelled_just_after_its_attach_closes_the_stream(fake: FakeBackend) -> None:
    """The attach stream is a connection to the engine: a caller that goes away between the attach
    and the handshake must not leave it open."""
    container = fake.add_container("sgw-channel", {})
    with anyio.CancelScope() as scope:

        async def connect() -> tuple[socket.socket, bytes, object]:
            attached = fake.attach(container.id)
            scope.cancel()  # the caller goes away as the stream arrives
            return attached

        await AgentChannel(connect, container_id=container.id).open()
    assert scope.cancelled_caught
    fake.vanish(container.id)
    await until(lambda: fake.gateway_ends_open() == 0, timeout_s=1, what="the stream to be closed")


async def test_a_sandbox_whose_removal_failed_during_reaping_is_reaped_later(
    broker: Broker, fake: FakeBackend, sink: MemorySink, clock: Clock
) -> None:
    """An engine hiccup while reaping must not make an idle sandbox live on (uncounted) until the
    gateway stops: once the engine answers again, a later round removes it."""
    engine = engine_for(lifecycle={"idle_ttl_s": 100})
    await run(broker, engine)
    container = container_of(broker)
    clock.advance(101)
    fake.fail("remove", EngineError("the Docker engine failed to remove a sandbox"))
    with pytest.raises(EngineError):
        await broker.reap_expired()

    clock.advance(60)
    await broker.reap_expired()
    assert container not in {c.id for c in fake.containers()}, "the idle sandbox outlived every later round"
    assert removal_reasons(sink)[container] == "idle"
