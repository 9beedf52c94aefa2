"""What fleet replicas share through a real Redis: tenant budgets and the lease on a principal's
sandbox. Two `SharedBudgets`/`Leases` objects stand for two replicas."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from gateway.errors import QuotaExceeded
from gateway.fleet.lease import Leases
from gateway.fleet.shared import SharedBudgets, SharedSandboxes, SharedSlots
from tests.support.fleet_rig import start_redis

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    process.terminate()
    process.wait(timeout=10)


def budgets(url: str, gateway_id: str, ttl_s: float = 30.0) -> SharedBudgets:
    return SharedBudgets(url, gateway_id, ttl_s=ttl_s)


def test_tenant_slots_hold_across_replicas_and_free_on_release(redis_url: str) -> None:
    one, two = SharedSlots(budgets(redis_url, "slots")), SharedSlots(budgets(redis_url, "slots"))
    assert one.acquire("t", 3) and two.acquire("t", 3) and one.acquire("t", 3)
    assert not two.acquire("t", 3), "the fourth, on either replica, is refused"
    assert two.running("t") == 3 and one.acquire("other", 3), "another tenant has its own"
    one.release("t")
    assert two.acquire("t", 3)


def test_a_dead_replicas_slots_lapse(redis_url: str) -> None:
    dead = SharedSlots(budgets(redis_url, "lapse", ttl_s=0.5))
    live = SharedSlots(budgets(redis_url, "lapse", ttl_s=0.5))
    assert dead.acquire("t", 1) and not live.acquire("t", 1)
    anyio.run(anyio.sleep, 0.7)  # the dead one renews nothing
    assert live.acquire("t", 1)


def test_sandboxes_per_tenant_count_principals_across_replicas(redis_url: str) -> None:
    one, two = SharedSandboxes(budgets(redis_url, "boxes")), SharedSandboxes(budgets(redis_url, "boxes"))
    assert one.reserve("t/a", 2) and two.reserve("t/b", 2)
    assert not one.reserve("t/c", 2) and not two.reserve("t/c", 2)
    assert two.reserve("t/a", 2), "a principal that has one already is always let in"
    two.release("t/b")
    assert one.reserve("t/c", 2)


def test_a_lost_sandbox_is_told_by_whichever_replica_answers_next(redis_url: str) -> None:
    one, two = SharedSandboxes(budgets(redis_url, "lost")), SharedSandboxes(budgets(redis_url, "lost"))
    one.mark_lost("t/p")
    assert two.take_lost("t/p") and not one.take_lost("t/p"), "told once"


def test_every_replica_knows_which_container_a_sandbox_name_was_last_given(redis_url: str) -> None:
    one, two = SharedSandboxes(budgets(redis_url, "current")), SharedSandboxes(budgets(redis_url, "current"))
    assert two.current("sgw-0123456789abcdef") is None
    one.set_current("sgw-0123456789abcdef", "c1")
    two.set_current("sgw-0123456789abcdef", "c2")
    assert one.current("sgw-0123456789abcdef") == "c2"


def test_redis_unreachable_refuses_instead_of_letting_through(tmp_path: Path) -> None:
    process, url = start_redis(tmp_path)
    slots = SharedSlots(budgets(url, "down"))
    process.terminate()
    process.wait(timeout=10)
    with pytest.raises(QuotaExceeded) as caught:
        slots.acquire("t", 10)
    assert caught.value.code == "shared-budget-unavailable"


async def test_one_replica_drives_a_sandbox_at_a_time_and_hands_over(redis_url: str) -> None:
    forgot: dict[str, list[str]] = {"a": [], "b": []}
    a = Leases(budgets(redis_url, "lease"), "a", forgot["a"].append, wait_s=10)
    b = Leases(budgets(redis_url, "lease"), "b", forgot["b"].append, wait_s=10)
    order: list[str] = []

    async def call(leases: Leases, who: str, hold_s: float) -> None:
        async with leases.held("t/p"):
            order.append(f"{who} in")
            await anyio.sleep(hold_s)
            order.append(f"{who} out")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call, a, "a", 0.5)
        await anyio.sleep(0.1)
        tasks.start_soon(call, b, "b", 0.0)
        tasks.start_soon(call, a, "a2", 0.0)  # a's own second call shares a's lease
    assert order.index("b in") > order.index("a out"), order
    assert forgot == {"a": [], "b": ["t/p"]}, "b drove after a: b forgets its stale view"
    async with a.held("t/p"):
        pass
    assert forgot["a"] == ["t/p"]


async def test_a_dead_replicas_lease_lapses_even_while_another_waits_and_renews(redis_url: str) -> None:
    dead = Leases(budgets(redis_url, "dead", ttl_s=1.0), "dead", lambda key: None, wait_s=10)
    live = Leases(budgets(redis_url, "dead", ttl_s=1.0), "live", lambda key: None, wait_s=10)
    entered = anyio.Event()

    async def hold_forever() -> None:
        async with dead.held("t/p"):
            entered.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hold_forever)
        await entered.wait()
        tasks.cancel_scope.cancel()  # ...as if the replica died: its lease is not given back
    await anyio.to_thread.run_sync(
        dead._budgets.client.set,
        "sgw:dead:lease:t/p",
        "dead",
        None,
        1000,  # still held, for 1 s
    )

    async def renew_while_waiting() -> None:
        for _ in range(20):
            live.renew()
            await anyio.sleep(0.1)

    with anyio.fail_after(8):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(renew_while_waiting)
            async with live.held("t/p"):
                assert live.held_keys() == ["t/p"]
