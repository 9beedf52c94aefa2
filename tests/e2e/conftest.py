"""`sandbox-gateway serve` as a real process (with the e2e defaults and checks), and a real MCP client
over streamable HTTP."""

from __future__ import annotations

import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from audit import MemorySink
from gateway.auth.tokens import TokenStore
from tests.conftest import PROXY_URL
from tests.support import audit_events, eventually, gateway_process
from tests.support.gateway_process import Gateway
from tests.support.net import free_port

if TYPE_CHECKING:
    from gateway.backend.docker_engine import DockerBackend
    from gateway.calls.service import ExecutionService

__all__ = ["ACCEPT", "INIT", "Gateway", "InProcessGateway", "mcp_client", "start_gateway", "stop_gateway"]

#: Headers of a raw JSON-RPC POST to /mcp, and an `initialize` request (for tests below the SDK client).
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


def start_gateway(
    tmp: Path,
    *extra: str,
    principals: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    https: bool = False,
    preexec: Callable[[], None] | None = None,
    tenants: dict[str, str] | None = None,
) -> Gateway:
    """A gateway of the test's own on the shared engine (through the socket proxy), logging at INFO,
    for alice and bob (profile `default`) unless `principals` names others (see
    `tests.support.gateway_process` for the rest)."""
    return gateway_process.start_gateway(
        tmp,
        *extra,
        principals=principals or {"alice": "default", "bob": "default"},
        tenants=tenants,
        gateway_id=f"e2e-{uuid.uuid4().hex[:10]}",
        docker_host=PROXY_URL,
        env={"LOG_LEVEL": "INFO", **(env or {})},
        https=https,
        preexec=preexec,
    )


def stop_gateway(gateway: Gateway) -> None:
    """SIGTERM, as an orchestrator would; uvicorn shuts down gracefully and re-raises the signal."""
    assert gateway_process.stop_gateway(gateway), "the gateway stops on SIGTERM"
    assert gateway.process.returncode in (0, -signal.SIGTERM)
    assert audit_events(gateway.audit_log, "gateway.stop"), "graceful shutdown is recorded"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> Iterator[Gateway]:
    """One gateway per test module; on shutdown it must leave no container behind."""
    running = start_gateway(tmp_path_factory.mktemp("gateway"))
    yield running
    stop_gateway(running)
    assert backend.list({"sandbox-gateway.gateway": running.gateway_id}) == []


@asynccontextmanager
async def mcp_client(url: str, token: str | None) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = create_mcp_http_client(headers=headers)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        yield client


@dataclass
class InProcessGateway:
    """The real app in this process (so in-memory span and metric readers see it), over real HTTP."""

    url: str
    base: str
    tokens: dict[str, str]
    sink: MemorySink
    service: ExecutionService


@pytest.fixture(scope="module")
def inproc_gateway(
    backend: DockerBackend, span_exporter: InMemorySpanExporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessGateway]:
    import threading

    import uvicorn

    from gateway.auth.verifier import GatewayTokenVerifier
    from gateway.config import Settings
    from gateway.http.app import build_app
    from gateway.stages import StagedAuditLog
    from gateway.wiring import build_core
    from policy import load_policy
    from policy.engine import PolicyEngine

    port = free_port()
    gateway_id = f"inproc-{uuid.uuid4().hex[:10]}"
    settings = Settings(port=port, docker_host=PROXY_URL, gateway_id=gateway_id, reap_interval_s=3600)
    store = TokenStore(tmp_path_factory.mktemp("inproc") / "tokens.jsonl")
    tokens = {name: store.create(name) for name in ("alice", "bob")}
    sink = MemorySink()
    audit = StagedAuditLog([sink])  # as the gateway builds it (build_audit)
    core = build_core(settings, PolicyEngine(load_policy()), audit)
    service = core.service
    verifier = GatewayTokenVerifier(store)
    app = build_app(settings, core, verifier=verifier, image="mcp-code-executor:latest")
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="inproc-gateway", daemon=True)
    thread.start()
    eventually(
        lambda: server.started, timeout_s=20, interval_s=0.05, message="in-process gateway did not start"
    )
    base = f"http://127.0.0.1:{port}"
    yield InProcessGateway(f"{base}/mcp", base, tokens, sink, service)
    server.should_exit = True
    thread.join(timeout=60)
    assert backend.list({"sandbox-gateway.gateway": gateway_id}) == []
