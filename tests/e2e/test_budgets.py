"""Budgets charged to who the caller is, over real HTTP and real sandboxes: one tenant at its
concurrency cap does not slow or refuse another; a principal flooding `initialize` costs another
principal on the same address nothing; MCP sessions are capped per principal and expire when idle."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from gateway.auth.tokens import TokenStore
from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import ACCEPT, INIT, Gateway, mcp_client, start_gateway, stop_gateway
from tests.e2e.test_policy_over_mcp import write_policy
from tests.support import audit_events, eventually_async

pytestmark = pytest.mark.anyio

PING = {"jsonrpc": "2.0", "id": 2, "method": "ping"}


@asynccontextmanager
async def legacy_client(url: str, token: str) -> AsyncIterator[Client]:
    """A client of the initialize handshake (2025 protocol versions): the era that has sessions.
    (2026-07-28 clients are stateless: each request stands alone and nothing is kept between them.)"""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        yield client


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def refused_session(url: str, token: str) -> str:
    """The error a client gets when it tries to open a session that is refused."""
    try:
        async with legacy_client(url, token):
            pass
    except Exception as exc:
        errors = [leaf for leaf in _leaves(exc) if isinstance(leaf, MCPError)]
        if errors:
            return str(errors[0])
        raise
    raise AssertionError("the session was opened")


def initialize(http: httpx.Client, gateway: Gateway, who: str) -> httpx.Response:
    headers = {**ACCEPT, "Authorization": f"Bearer {gateway.tokens[who]}"}
    return http.post(gateway.url, json=INIT, headers=headers, timeout=10)


# -- tenants ------------------------------------------------------------------------------------------


@pytest.fixture
def two_tenants(tmp_path: Path, backend: DockerBackend) -> Iterator[Gateway]:
    """acme's principals may run 1 call each and 2 together; globex's likewise."""
    policy = write_policy(
        tmp_path / "policy.yaml",
        {"profiles.default.exec.max_concurrent": 1, "profiles.default.exec.max_concurrent_per_tenant": 2},
    )
    store = TokenStore(tmp_path / "tokens.jsonl")
    tokens = {
        name: store.create(name, tenant=tenant)
        for name, tenant in (("a1", "acme"), ("a2", "acme"), ("a3", "acme"), ("g1", "globex"))
    }
    gateway = start_gateway(tmp_path, "--policy", str(policy))
    gateway.tokens.update(tokens)
    yield gateway
    stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


async def test_one_tenant_at_its_cap_does_not_slow_or_refuse_another(two_tenants: Gateway) -> None:
    gateway = two_tenants
    # Each principal's sandbox exists before the test proper, so nothing below waits for a create.
    for who in ("a1", "a2", "a3", "g1"):
        async with mcp_client(gateway.url, gateway.tokens[who]) as client:
            assert not (await client.call_tool("execute_bash", {"command": "true"})).is_error
    running = {"a1": anyio.Event(), "a2": anyio.Event()}
    long_calls: dict[str, Any] = {}

    async def hold(who: str) -> None:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            running[who].set()

        async with mcp_client(gateway.url, gateway.tokens[who]) as client:
            long_calls[who] = await client.call_tool(
                "execute_bash",
                {"command": "echo started; sleep 8; echo done", "timeout_s": 20},
                progress_callback=on_progress,
            )

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            for who in running:
                tasks.start_soon(hold, who)
            for event in running.values():
                await event.wait()
            # acme now runs 2 calls, its cap: its third principal is refused at once...
            async with mcp_client(gateway.url, gateway.tokens["a3"]) as client:
                refused = await client.call_tool("execute_bash", {"command": "echo hi"})
            assert refused.is_error
            assert "tenant-concurrency-quota:" in refused.content[0].text  # type: ignore[union-attr]
            # ...while globex is served, and its answers come back before acme's calls end.
            async with mcp_client(gateway.url, gateway.tokens["g1"]) as client:
                for _ in range(5):
                    answer = await client.call_tool("execute_bash", {"command": "echo hi"})
                    assert not answer.is_error and answer.structured_content["stdout"] == "hi\n"
            assert long_calls == {}, "globex was answered while acme's calls still ran"
    assert {who: r.structured_content["stdout"] for who, r in long_calls.items()} == {
        "a1": "started\ndone\n",
        "a2": "started\ndone\n",
    }
    (refusal,) = audit_events(gateway.audit_log, "budget.refused")
    assert refusal["limits"]["limit"] == "tenant-concurrency"
    assert (refusal["actor"]["tenant"], refusal["actor"]["principal"], refusal["detail"]["cap"]) == (
        "acme",
        "a3",
        2,
    )


# -- the address ----------------------------------------------------------------------------------------


def test_a_principal_flooding_initialize_costs_another_on_the_same_address_nothing(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "--address-rate", "20/minute")
    try:
        with httpx.Client() as http:
            statuses = [initialize(http, gateway, "alice").status_code for _ in range(300)]
            assert statuses.count(200) == 8, "alice opened as many sessions as she may"
            assert set(statuses[8:]) == {429}, "then her own budgets refused her"
            answer = initialize(http, gateway, "bob")
            assert answer.status_code == 200, "bob, on the same address, is served"
            assert http.post(gateway.url, json=INIT, headers=ACCEPT).status_code == 401, (
                "the address budget is intact"
            )
    finally:
        stop_gateway(gateway)
    hits = audit_events(gateway.audit_log, "ratelimit.hit")
    assert [(h["limits"]["limit"], h["actor"].get("principal")) for h in hits] == [("requests", "alice")]
    (refusal,) = audit_events(gateway.audit_log, "budget.refused")
    assert (refusal["limits"]["limit"], refusal["actor"]["principal"]) == ("sessions", "alice")
    summaries = {e["detail"]["of"]: e["detail"] for e in audit_events(gateway.audit_log, "audit.repeated")}
    assert summaries["ratelimit.hit"]["count"] + summaries["budget.refused"]["count"] == 292


# -- sessions -----------------------------------------------------------------------------------------


async def test_sessions_are_capped_per_principal_with_a_clear_error(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "--sessions-per-principal", "2")
    try:
        with anyio.fail_after(60):
            async with legacy_client(gateway.url, gateway.tokens["alice"]) as first:
                async with legacy_client(gateway.url, gateway.tokens["alice"]) as second:
                    error = await refused_session(gateway.url, gateway.tokens["alice"])
                    assert error.startswith("session-limit: this principal already holds 2 open MCP sessions")
                    async with legacy_client(gateway.url, gateway.tokens["bob"]) as other:
                        assert not (await other.call_tool("execute_bash", {"command": "echo bob"})).is_error
                    assert not (await second.call_tool("sandbox_info", {})).is_error, "alice's own still work"
                # The client ended its session (DELETE): alice has room for another.
                async with legacy_client(gateway.url, gateway.tokens["alice"]) as third:
                    assert not (await third.call_tool("sandbox_info", {})).is_error
                assert not (await first.call_tool("sandbox_info", {})).is_error
    finally:
        stop_gateway(gateway)
    (refusal,) = audit_events(gateway.audit_log, "budget.refused")
    assert refusal["limits"]["limit"] == "sessions" and refusal["detail"]["cap"] == 2
    assert (refusal["actor"]["principal"], refusal["actor"]["source_ip"]) == ("alice", "127.0.0.1")


async def test_an_idle_session_expires_and_frees_its_place(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "--sessions-per-principal", "1", "--session-idle-timeout", "3")
    try:
        with httpx.Client() as http:
            # A client that opens a session and goes away without ending it holds alice's only place...
            opened = initialize(http, gateway, "alice")
            assert opened.status_code == 200
            abandoned = opened.headers["mcp-session-id"]
            assert (await refused_session(gateway.url, gateway.tokens["alice"])).startswith("session-limit:")

            # ...until it has been idle for 3 s (nothing here touches it: that would keep it alive).
            async def opens_a_session() -> bool:
                try:
                    async with legacy_client(gateway.url, gateway.tokens["alice"]) as client:
                        assert not (await client.call_tool("sandbox_info", {})).is_error
                except Exception as exc:
                    if not any("session-limit" in str(leaf) for leaf in _leaves(exc)):
                        raise
                    return False
                return True

            await eventually_async(
                opens_a_session,
                timeout_s=30,
                interval_s=0.5,
                retry_on=(),
                message="alice's place never came free",
            )
            headers = {
                **ACCEPT,
                "Authorization": f"Bearer {gateway.tokens['alice']}",
                "mcp-session-id": abandoned,
            }
            assert http.post(gateway.url, json=PING, headers=headers, timeout=10).status_code == 404
    finally:
        stop_gateway(gateway)


async def test_requests_in_flight_on_one_session_are_bounded(tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, "--requests-per-session", "2")
    try:
        async with legacy_client(gateway.url, gateway.tokens["alice"]) as client:
            # The client checks a result against the tool's output schema, and fetches the tool list
            # for it the first time: fetched now, so that no request of its own crowds the test's.
            await client.list_tools()
            started = anyio.Event()
            outcomes: list[Any] = []

            async def slow() -> None:
                async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                    started.set()

                outcomes.append(
                    await client.call_tool(
                        "execute_bash",
                        {"command": "echo started; sleep 4", "timeout_s": 10},
                        progress_callback=on_progress,
                    )
                )

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(slow)
                    await started.wait()
                    # The client's own GET stream and the slow call fill the session.
                    assert outcomes == [], "the slow call ended before the third request was sent"
                    with pytest.raises(MCPError, match="session-busy"):
                        await client.call_tool("sandbox_info", {})
            assert not outcomes[0].is_error
            assert not (await client.call_tool("sandbox_info", {})).is_error
    finally:
        stop_gateway(gateway)
    refusals = audit_events(gateway.audit_log, "budget.refused")
    assert len(refusals) == 1, refusals
    assert (
        refusals[0]["limits"]["limit"] == "session-requests" and refusals[0]["actor"]["principal"] == "alice"
    )
