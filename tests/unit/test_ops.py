"""The shared pool for short Docker calls: a fair share per principal and per tenant, turns by tenant,
and every wait counted (metric, audit event, /ready's saturation)."""

from __future__ import annotations

import threading

import anyio
import pytest

from audit import AuditLog, MemorySink
from gateway.backend.ops import DockerOps, FairPool, Party, acting_for
from tests.support import audit_events, eventually_async

A1, A2, B1, C1 = Party("a", "a1"), Party("a", "a2"), Party("b", "b1"), Party("c", "c1")


async def _hold(pool: FairPool, party: Party, release: anyio.Event, order: list[Party]) -> None:
    async with pool.slot(party):
        order.append(party)
        await release.wait()


async def _settle() -> None:
    """Let every task that can run go as far as it can: a scheduling yield, no time passes."""
    for _ in range(20):
        await anyio.sleep(0)


def test_one_principal_holds_at_most_its_share_and_others_get_workers_at_once() -> None:
    async def main() -> None:
        pool = FairPool(8, principal_share=2, tenant_share=4)
        release, order = anyio.Event(), list[Party]()
        async with anyio.create_task_group() as tasks:
            for _ in range(10):
                tasks.start_soon(_hold, pool, A1, release, order)
            await _settle()
            assert order.count(A1) == 2, "the burst runs at its share"
            assert pool.waiting == 8
            tasks.start_soon(_hold, pool, B1, release, order)
            tasks.start_soon(_hold, pool, A2, release, order)
            await _settle()
            assert B1 in order and A2 in order, "others are not queued behind the burst"
            release.set()
        assert pool.in_use == 0 and pool.waiting == 0

    anyio.run(main)


def test_a_tenant_holds_at_most_its_share_across_its_principals() -> None:
    async def main() -> None:
        pool = FairPool(8, principal_share=8, tenant_share=3)
        release, order = anyio.Event(), list[Party]()
        async with anyio.create_task_group() as tasks:
            for party in (A1, A2, A1, A2, A1):
                tasks.start_soon(_hold, pool, party, release, order)
            await _settle()
            assert len(order) == 3
            tasks.start_soon(_hold, pool, C1, release, order)
            await _settle()
            assert order[-1] == C1
            release.set()

    anyio.run(main)


def test_freed_workers_go_round_robin_by_tenant_then_by_principal() -> None:
    async def main() -> None:
        pool = FairPool(1)
        first, go = anyio.Event(), anyio.Event()
        go.set()
        order: list[Party] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_hold, pool, A1, first, order)
            await _settle()
            for party in (A1, A1, A2, A2, B1, B1, C1):  # queued in this order behind the first
                tasks.start_soon(_hold, pool, party, go, order)
                await _settle()
            first.set()
        assert order == [A1, A1, B1, C1, A2, B1, A1, A2]

    anyio.run(main)


def test_a_cancelled_waiter_gives_nothing_away() -> None:
    async def main() -> None:
        pool = FairPool(1)
        release, order = anyio.Event(), list[Party]()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_hold, pool, A1, release, order)
            await _settle()
            with anyio.move_on_after(0.01):
                async with pool.slot(B1):
                    pytest.fail("the worker is taken")
            assert pool.waiting == 0
            release.set()
        assert pool.in_use == 0
        async with pool.slot(B1):
            assert pool.in_use == 1

    anyio.run(main)


def test_a_delayed_call_is_audited_once_per_window_and_shows_in_saturation() -> None:
    sink = MemorySink()
    ops = DockerOps(AuditLog([sink]), workers=1)
    entered, release = threading.Event(), threading.Event()

    def blocking() -> str:
        entered.set()
        release.wait(5)
        return "done"

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(ops.run, blocking)
            await anyio.to_thread.run_sync(entered.wait, 5)
            with acting_for("t2", "bystander"):
                tasks.start_soon(ops.acall, "inspect", lambda: "x")
                tasks.start_soon(ops.acall, "inspect", lambda: "y")
            await eventually_async(lambda: ops.pool.waiting >= 2, timeout_s=5, interval_s=0.01)
            await anyio.sleep(0.1)  # time passing is what is measured: the oldest wait grows past 50 ms
            state = ops.saturation()
            assert state["waiting"] == 2 and state["in_use"] == 1 and state["oldest_wait_ms"] >= 50
            release.set()
        assert ops.saturation() == {
            "workers": 1,
            "in_use": 0,
            "waiting": 0,
            "oldest_wait_ms": 0.0,
            "saturated": False,
        }

    anyio.run(main)
    delayed = audit_events(sink, "capacity.delayed")
    assert len(delayed) == 1, "the second delay of the same principal is counted, not written"
    assert delayed[0]["actor"]["principal"] == "bystander"
    assert delayed[0]["actor"]["tenant"] == "t2"
    assert delayed[0]["detail"]["waited_ms"] >= 50


def test_a_pool_waited_on_for_a_second_is_saturated() -> None:
    async def main() -> None:
        pool = FairPool(1)
        ops = DockerOps(AuditLog([MemorySink()]), workers=1)
        ops.pool = pool
        release = anyio.Event()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_hold, pool, A1, release, [])
            await _settle()
            tasks.start_soon(_hold, pool, B1, release, [])
            await _settle()
            pool._queue["b"][B1][0].since -= 5
            assert ops.saturation()["saturated"] is True
            release.set()

    anyio.run(main)
