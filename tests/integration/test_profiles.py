"""Profiles on the real engine: their limits applied, gVisor, pinned images, replacement, expiry, rates."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import yaml

from audit import MemorySink
from gateway.backend.docker_engine import DockerBackend
from gateway.calls.service import ExecutionService
from gateway.errors import QuotaExceeded, SandboxError
from gateway.sandboxes.broker import Broker
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy import Principal, load_policy, load_policy_text
from policy.engine import PolicyEngine
from tests.conftest import IMAGE
from tests.support import audit_events
from tests.support.sandboxes import sandbox_of

pytestmark = pytest.mark.anyio


def policy_doc() -> dict[str, Any]:
    return load_policy().model_dump(mode="json")


def service_for(broker: Broker, doc: dict[str, Any]) -> ExecutionService:
    return ExecutionService(PolicyEngine(load_policy_text(yaml.safe_dump(doc))), broker, broker.audit)


async def inspect(broker: Broker, principal: Principal) -> dict[str, Any]:
    backend = broker.backend
    assert isinstance(backend, DockerBackend)
    return await anyio.to_thread.run_sync(backend.inspect_raw, sandbox_of(broker, principal).container_id)


async def test_two_profiles_get_their_own_limits(broker: Broker) -> None:
    service = ExecutionService(PolicyEngine(load_policy()), broker, broker.audit)
    small, big = Principal("small", profile="default"), Principal("big", profile="data-science")
    await service.execute(small, "execute_bash", "true")
    await service.execute(big, "execute_bash", "true")
    small_host, big_host = (
        (await inspect(broker, small))["HostConfig"],
        (await inspect(broker, big))["HostConfig"],
    )
    assert (small_host["Memory"], small_host["NanoCpus"], small_host["PidsLimit"]) == (
        512 * 2**20,
        10**9,
        128,
    )
    assert (big_host["Memory"], big_host["NanoCpus"], big_host["PidsLimit"]) == (4 * 2**30, 2 * 10**9, 256)
    assert "size=268435456" in small_host["Tmpfs"]["/workspace"]
    assert "size=2147483648" in big_host["Tmpfs"]["/workspace"]
    long_call = await service.execute(big, "execute_bash", "echo ok", timeout_s=300)
    assert long_call.stdout == "ok\n"


async def test_strict_runs_under_gvisor(broker: Broker) -> None:
    service = ExecutionService(PolicyEngine(load_policy()), broker, broker.audit)
    principal = Principal("careful", profile="strict")
    result = await service.execute(
        principal, "execute_python", "import os; print(os.uname().release, os.getuid())"
    )
    assert result.exit_code == 0, result.stderr
    host = (await inspect(broker, principal))["HostConfig"]
    assert host["Runtime"] == "runsc"
    assert host["Memory"] == 256 * 2**20
    release, uid = result.stdout.split()
    assert release == "4.4.0", "gVisor reports its own kernel release"
    assert int(uid) in UidRange.parse(DEFAULT_UID_RANGE), "the sandbox's own uid, also under gVisor"


async def test_a_pinned_image_must_be_the_one_pinned(broker: Broker) -> None:
    right, _ = await anyio.to_thread.run_sync(broker.backend.image_identity, IMAGE)
    doc = policy_doc()
    doc["profiles"]["default"]["sandbox"]["images"] = [f"{IMAGE}@sha256:{'0' * 64}"]
    with pytest.raises(SandboxError) as info:
        await service_for(broker, doc).execute(Principal("pinned"), "execute_bash", "true")
    assert info.value.code == "image-digest-mismatch"
    assert broker.sandbox_of(Principal("pinned")) is None
    doc["profiles"]["default"]["sandbox"]["images"] = [f"{IMAGE}@{right}"]
    assert (
        await service_for(broker, doc).execute(Principal("pinned"), "execute_bash", "echo ok")
    ).stdout == "ok\n"
    inspected = await inspect(broker, Principal("pinned"))
    assert inspected["Image"] == right, "created from the verified id, not the movable tag"
    assert inspected["Config"]["Labels"]["sandbox-gateway.image"] == IMAGE


async def test_a_sandbox_is_replaced_when_its_spec_changes_and_kept_otherwise(broker: Broker) -> None:
    alice = Principal("alice")
    doc = policy_doc()
    await service_for(broker, doc).execute(alice, "execute_bash", "echo v1 > /workspace/state")
    first = sandbox_of(broker, alice).container_id
    doc["profiles"]["default"]["exec"]["max_timeout_s"] = 20
    doc["profiles"]["default"]["exec"]["default_timeout_s"] = 20
    kept = await service_for(broker, doc).execute(alice, "execute_bash", "cat /workspace/state")
    assert kept.stdout == "v1\n" and sandbox_of(broker, alice).container_id == first
    doc["profiles"]["default"]["sandbox"]["pids_limit"] = 64
    replaced = await service_for(broker, doc).execute(alice, "execute_bash", "cat /workspace/state")
    assert replaced.exit_code == 1, "a stricter spec means a new sandbox"
    assert sandbox_of(broker, alice).container_id != first
    assert (await inspect(broker, alice))["HostConfig"]["PidsLimit"] == 64


async def test_idle_sandboxes_are_reaped(broker: Broker, audit_sink: MemorySink) -> None:
    doc = policy_doc()
    doc["profiles"]["default"]["lifecycle"]["idle_ttl_s"] = 0.5
    service = service_for(broker, doc)
    await service.execute(Principal("idle"), "execute_bash", "true")
    await anyio.sleep(0.6)  # the idle time-to-live running out is what is tested
    assert await broker.reap_expired() == 1
    assert broker.sandbox_of(Principal("idle")) is None
    removed = audit_events(audit_sink, "sandbox.remove")
    assert removed[-1]["detail"]["reason"] == "idle"
    assert (
        await anyio.to_thread.run_sync(broker.backend.list, {"sandbox-gateway.gateway": broker.gateway_id})
        == []
    )


async def test_sandbox_creations_are_rate_limited(broker: Broker) -> None:
    doc = policy_doc()
    doc["profiles"]["default"]["rate_limits"]["sandbox_creations"] = "2/minute"
    service = service_for(broker, doc)
    churn = Principal("churn")
    for _ in range(2):
        await service.execute(churn, "execute_bash", "true")
        await service.reset(churn)
    with pytest.raises(QuotaExceeded) as info:
        await service.execute(churn, "execute_bash", "true")
    assert info.value.code == "sandbox-creation-rate"
    assert (
        await anyio.to_thread.run_sync(broker.backend.list, {"sandbox-gateway.gateway": broker.gateway_id})
        == []
    )


async def test_requests_are_rate_limited_per_principal(broker: Broker) -> None:
    doc = policy_doc()
    doc["profiles"]["default"]["rate_limits"]["requests"] = "3/minute"
    service = service_for(broker, doc)
    for _ in range(3):
        await service.execute(Principal("busy"), "execute_bash", "true")
    with pytest.raises(QuotaExceeded) as info:
        await service.execute(Principal("busy"), "execute_bash", "true")
    assert info.value.code == "rate-limited"
    assert (await service.execute(Principal("calm"), "execute_bash", "echo ok")).stdout == "ok\n"


async def test_sandbox_info_reports_limits_and_time_left(broker: Broker) -> None:
    service = ExecutionService(PolicyEngine(load_policy()), broker, broker.audit)
    before = await service.info(Principal("curious"))
    assert before.sandbox is None and before.profile == "default" and before.max_timeout_s == 30
    await service.execute(Principal("curious"), "execute_bash", "true")
    after = await service.info(Principal("curious"))
    assert after.sandbox is not None and after.sandbox.up_to_date
    assert 0 < after.sandbox.idle_expires_in_s <= 1800
    assert after.writable_paths == {"/tmp": 64 * 2**20, "/workspace": 256 * 2**20}


async def test_tenant_and_host_sandbox_quotas_hold_and_create_nothing(broker: Broker) -> None:
    doc = policy_doc()
    doc["profiles"]["default"]["lifecycle"]["max_sandboxes_per_tenant"] = 2
    service = service_for(broker, doc)
    for name in ("a1", "a2"):
        await service.execute(Principal(name, tenant="acme"), "execute_bash", "true")
    with pytest.raises(QuotaExceeded) as tenant:
        await service.execute(Principal("a3", tenant="acme"), "execute_bash", "true")
    assert tenant.value.code == "tenant-sandbox-quota"
    await service.execute(Principal("b1", tenant="beta"), "execute_bash", "true")
    broker.max_sandboxes = 3
    with pytest.raises(QuotaExceeded) as host:
        await service.execute(Principal("b2", tenant="beta"), "execute_bash", "true")
    assert host.value.code == "host-sandbox-quota"
    live = await anyio.to_thread.run_sync(broker.backend.list, {"sandbox-gateway.gateway": broker.gateway_id})
    assert len(live) == 3


async def test_quotas_hold_under_a_parallel_burst(broker: Broker) -> None:
    doc = policy_doc()
    doc["profiles"]["default"]["lifecycle"]["max_sandboxes_per_tenant"] = 3
    service = service_for(broker, doc)
    outcomes: list[object] = []

    async def one(i: int) -> None:
        try:
            outcomes.append(await service.execute(Principal(f"p{i}", tenant="burst"), "execute_bash", "true"))
        except QuotaExceeded as exc:
            outcomes.append(exc)

    async with anyio.create_task_group() as tasks:
        for i in range(8):
            tasks.start_soon(one, i)
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(refused) == 5
    live = await anyio.to_thread.run_sync(broker.backend.list, {"sandbox-gateway.gateway": broker.gateway_id})
    assert len(live) == 3
