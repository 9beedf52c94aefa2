"""Shared budgets are charged to who the caller is: the address only for unauthenticated requests,
the principal and its tenant once authenticated; a tenant's concurrency cap and a principal's
session cap refuse at once, say why, and touch nobody else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from audit import AuditLog, MemorySink
from gateway.auth.tokens import TokenStore
from gateway.auth.verifier import GatewayTokenVerifier
from gateway.backend.base import ExecOutcome
from gateway.backend.docker_engine import DockerBackend
from gateway.calls.budgets import TenantSlots
from gateway.calls.service import ExecutionService
from gateway.errors import QuotaExceeded
from gateway.http.middleware.address_budget import AddressBudget
from gateway.http.middleware.address_rate import AddressRateLimitMiddleware
from gateway.http.middleware.authentication import BearerAuthMiddleware
from gateway.http.middleware.principal_rate import PrincipalRateLimitMiddleware
from gateway.http.sessions import SessionTable
from gateway.ratelimit import RateLimiter
from gateway.sandboxes.broker import Broker
from policy import Principal, load_policy_text
from policy.engine import PolicyEngine
from tests.support import audit_events

pytestmark = pytest.mark.anyio


# -- pure bookkeeping -------------------------------------------------------------------------------


def test_tenant_slots_refuse_at_the_cap_and_free_on_release() -> None:
    slots = TenantSlots()
    assert slots.acquire("acme", 2) and slots.acquire("acme", 2)
    assert not slots.acquire("acme", 2), "the third call of a tenant capped at 2 is refused"
    assert slots.acquire("globex", 2), "another tenant has its own count"
    slots.release("acme")
    assert slots.acquire("acme", 2)
    for _ in range(2):
        slots.release("acme")
    slots.release("globex")
    assert slots.running("acme") == 0 and len(slots) == 0, "an idle tenant takes no room"


def test_the_session_table_caps_each_owner_alone() -> None:
    table = SessionTable(per_owner=2, requests_per_session=3)
    assert table.open("t/alice", "s1") and table.open("t/alice", "s2")
    assert not table.can_open("t/alice") and not table.open("t/alice", "s3")
    assert table.open("t/bob", "s4"), "bob is not charged for alice's sessions"
    assert table.close("s1") == "t/alice" and table.close("s1") is None, "closing twice counts once"
    assert table.open("t/alice", "s5") and table.held_by("t/alice") == 2 and len(table) == 3


def test_the_session_table_bounds_requests_in_flight_per_session() -> None:
    table = SessionTable(per_owner=1, requests_per_session=2)
    table.open("t/alice", "s1")
    assert table.enter("s1") is True and table.enter("s1") is True
    assert table.enter("s1") is False, "a third request in flight is refused"
    table.leave("s1")
    assert table.enter("s1") is True
    assert table.enter("unknown") is None, "an unknown session is the manager's to answer (404)"
    table.close("s1")
    table.leave("s1")  # a request that ends after its session closed
    assert table.enter("s1") is None


@pytest.mark.parametrize(("owner", "requests"), [(0, 1), (1, 0)])
def test_a_session_table_needs_positive_caps(owner: int, requests: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        SessionTable(owner, requests)


# -- the front door -----------------------------------------------------------------------------------


def front(
    tmp_path: Path, *, address: str, principal: str, tenant: str
) -> tuple[TestClient, MemorySink, dict[str, str]]:
    """Address budget, credential, principal and tenant budgets, as the gateway stacks them."""
    store = TokenStore(tmp_path / "tokens")
    tokens = {
        "alice": store.create("alice", tenant="acme"),
        "bob": store.create("bob", tenant="acme"),
        "carol": store.create("carol", tenant="globex"),
    }
    sink = MemorySink()
    audit = AuditLog([sink])
    limiter = RateLimiter()
    budget = AddressBudget(limiter, address)

    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({})

    app = Starlette(
        routes=[Route("/mcp", ok, methods=["POST"])],
        middleware=[
            Middleware(AddressRateLimitMiddleware, budget=budget, audit=audit),
            Middleware(
                BearerAuthMiddleware,
                verifier=GatewayTokenVerifier(store),
                audit=audit,
                charge_address=budget.charge,
            ),
            Middleware(
                PrincipalRateLimitMiddleware,
                limiter=limiter,
                audit=audit,
                rates_for=lambda p: (principal, tenant),
            ),
        ],
    )
    return TestClient(app), sink, tokens


def post(client: TestClient, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/mcp", headers=headers).status_code


def test_a_principal_flooding_costs_its_address_nothing(tmp_path: Path) -> None:
    client, sink, tokens = front(tmp_path, address="3/minute", principal="5/minute", tenant="1000/minute")
    statuses = [post(client, tokens["alice"]) for _ in range(50)]
    assert statuses == [200] * 5 + [429] * 45, "refused by alice's own budget only"
    assert post(client, tokens["bob"]) == 200, "another principal on the same address is served"
    assert [post(client, None) for _ in range(4)] == [401] * 3 + [429], "the address budget was untouched"
    hits = audit_events(sink, "ratelimit.hit")
    assert [h["limits"]["limit"] for h in hits] == ["requests", "address"]
    assert hits[0]["actor"]["principal"] == "alice"


def test_an_address_out_of_budget_is_refused_before_any_credential_is_checked(tmp_path: Path) -> None:
    client, _, tokens = front(tmp_path, address="3/minute", principal="100/minute", tenant="1000/minute")
    assert [post(client, "sgw_wrong") for _ in range(3)] == [401] * 3
    assert post(client, tokens["alice"]) == 429


def test_a_tenant_request_budget_is_shared_by_its_principals_only(tmp_path: Path) -> None:
    client, sink, tokens = front(tmp_path, address="3/minute", principal="100/minute", tenant="4/minute")
    assert [post(client, tokens[who]) for who in ("alice", "alice", "bob", "bob")] == [200] * 4
    assert post(client, tokens["bob"]) == 429, "acme spent its budget"
    assert post(client, tokens["carol"]) == 200, "globex did not"
    (hit,) = audit_events(sink, "ratelimit.hit")
    assert hit["limits"]["limit"] == "tenant-requests" and hit["actor"]["tenant"] == "acme"
    assert hit["actor"]["principal"] == "bob"


def test_a_principal_refused_by_its_own_budget_does_not_spend_its_tenants(tmp_path: Path) -> None:
    client, _, tokens = front(tmp_path, address="3/minute", principal="2/minute", tenant="3/minute")
    assert [post(client, tokens["alice"]) for _ in range(20)] == [200] * 2 + [429] * 18
    assert post(client, tokens["bob"]) == 200


# -- the tenant concurrency cap -------------------------------------------------------------------------


POLICY = """
version: 1
profiles:
  default:
    tools: [execute_bash]
    sandbox: {images: [mcp-code-executor:latest]}
    exec: {max_concurrent: 1, max_concurrent_per_tenant: 2}
"""


class Held:
    """Stands in for the broker's execute: acme's calls wait until released, others return at once."""

    def __init__(self) -> None:
        self.release = anyio.Event()
        self.started = 0
        self.running = anyio.Event()

    async def __call__(
        self,
        principal: Principal,
        decision: Any,
        argv: list[str],
        on_output: Any = None,
        *,
        tool_calls: Any = None,
    ) -> ExecOutcome:
        if principal.tenant == "acme":
            self.started += 1
            if self.started == 2:
                self.running.set()
            await self.release.wait()
        return ExecOutcome(0, b"ok\n", b"", 3, 0, truncated=False, deadline_hit=False, duration_ms=1.0)


async def test_one_tenant_at_its_cap_neither_slows_nor_refuses_another() -> None:
    sink = MemorySink()
    audit = AuditLog([sink])
    broker = Broker(DockerBackend("tcp://127.0.0.1:1"), audit)  # never contacted: execute is replaced
    held = Held()
    broker.execute = held  # type: ignore[method-assign]
    service = ExecutionService(PolicyEngine(load_policy_text(POLICY)), broker, audit)
    acme = [Principal(f"a{n}", "acme") for n in range(3)]
    results: list[int | None] = []

    async def run(principal: Principal) -> None:
        results.append((await service.execute(principal, "execute_bash", "sleep 60")).exit_code)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run, acme[0])
            tasks.start_soon(run, acme[1])
            await held.running.wait()
            with pytest.raises(QuotaExceeded) as refused:
                await service.execute(acme[2], "execute_bash", "echo hi")
            assert refused.value.code == "tenant-concurrency-quota"
            other = await service.execute(Principal("g1", "globex"), "execute_bash", "echo hi")
            assert other.stdout == "ok\n" and results == [], "globex answered while acme's calls still ran"
            held.release.set()
    assert results == [0, 0]
    assert service.tenant_slots.running("acme") == 0
    (refusal,) = audit_events(sink, "budget.refused")
    assert refusal["limits"]["limit"] == "tenant-concurrency" and refusal["actor"]["tenant"] == "acme"
    assert refusal["actor"]["principal"] == "a2" and refusal["detail"]["cap"] == 2
    finish = audit_events(sink, "exec.finish", principal="a2")
    assert finish[0]["outcome"]["error"] == "tenant-concurrency-quota"


async def test_refusals_of_a_tenant_at_its_cap_are_folded() -> None:
    sink = MemorySink()
    audit = AuditLog([sink])
    broker = Broker(DockerBackend("tcp://127.0.0.1:1"), audit)
    held = Held()
    broker.execute = held  # type: ignore[method-assign]
    service = ExecutionService(PolicyEngine(load_policy_text(POLICY)), broker, audit)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tasks:
            for n in range(2):
                tasks.start_soon(service.execute, Principal(f"a{n}", "acme"), "execute_bash", "sleep 60")
            await held.running.wait()
            for _ in range(100):
                with pytest.raises(QuotaExceeded):
                    await service.execute(Principal("a2", "acme"), "execute_bash", "echo hi")
            held.release.set()
    audit.close()
    found = audit_events(sink)
    assert len([e for e in found if e["event"] == "budget.refused"]) == 1
    (summary,) = [e for e in found if e["event"] == "audit.repeated"]
    assert summary["detail"]["of"] == "budget.refused" and summary["detail"]["count"] == 100
