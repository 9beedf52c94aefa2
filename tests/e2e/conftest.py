"""`sandbox-gateway serve` as a real process, and a real MCP client over streamable HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from gateway.auth.tokens import TokenStore
from tests.conftest import PROXY_URL

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


@dataclass
class Gateway:
    url: str
    base: str
    gateway_id: str
    audit_log: Path
    tokens: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(
    tmp: Path,
    *extra: str,
    principals: dict[str, str] | None = None,
    env: dict[str, str] | None = None,
    https: bool = False,
    preexec: Callable[[], None] | None = None,
    tenants: dict[str, str] | None = None,
) -> Gateway:
    """Start the gateway on a free port with a tokens file (each principal in its tenant from
    `tenants`, else `default`); wait until /health answers."""
    store = TokenStore(tmp / "tokens.jsonl")
    tokens = {
        name: store.create(name, profile=profile, tenant=(tenants or {}).get(name, "default"))
        for name, profile in (principals or {"alice": "default", "bob": "default"}).items()
    }
    port = _free_port()
    gateway_id = f"e2e-{uuid.uuid4().hex[:10]}"
    # An --audit-log among the extra arguments replaces the default one (e.g. to continue a chain).
    audit_log = Path(extra[extra.index("--audit-log") + 1]) if "--audit-log" in extra else tmp / "audit.jsonl"
    argv = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--port",
        str(port),
        "--tokens",
        str(tmp / "tokens.jsonl"),
        "--gateway-id",
        gateway_id,
        "--docker-host",
        PROXY_URL,
        *extra,
    ]
    if "--audit-log" not in extra:
        argv += ["--audit-log", str(audit_log)]
    with (tmp / "gateway.log").open("wb") as log:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={**os.environ, "LOG_LEVEL": "INFO", **(env or {})},
            preexec_fn=preexec,  # noqa: PLW1509 - only sets a resource limit before exec
        )
    base = f"{'https' if https else 'http'}://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited: {(tmp / 'gateway.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1, verify=False).status_code == 200:  # noqa: S501
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        process.kill()
        raise RuntimeError("gateway did not answer /health within 30 s")
    return Gateway(f"{base}/mcp", base, gateway_id, audit_log, tokens, process)


def stop_gateway(gateway: Gateway) -> None:
    """SIGTERM, as an orchestrator would; uvicorn shuts down gracefully and re-raises the signal."""
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(timeout=60) in (0, -signal.SIGTERM)
    events = [line for line in gateway.audit_log.read_text().splitlines() if '"gateway.stop"' in line]
    assert events, "graceful shutdown is recorded"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, backend) -> Iterator[Gateway]:  # type: ignore[no-untyped-def]
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
    sink: object
    service: object


@pytest.fixture(scope="module")
def inproc_gateway(
    backend, span_exporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessGateway]:  # type: ignore[no-untyped-def]
    import threading

    import uvicorn

    from audit import AuditLog, MemorySink
    from gateway.auth.verifier import GatewayTokenVerifier
    from gateway.config import Settings
    from gateway.http.app import build_app
    from gateway.wiring import build_core
    from policy import load_policy
    from policy.engine import PolicyEngine

    port = _free_port()
    gateway_id = f"inproc-{uuid.uuid4().hex[:10]}"
    settings = Settings(port=port, docker_host=PROXY_URL, gateway_id=gateway_id, reap_interval_s=3600)
    store = TokenStore(tmp_path_factory.mktemp("inproc") / "tokens.jsonl")
    tokens = {name: store.create(name) for name in ("alice", "bob")}
    sink = MemorySink()
    audit = AuditLog([sink])
    core = build_core(settings, PolicyEngine(load_policy()), audit)
    service = core.service
    verifier = GatewayTokenVerifier(store)
    app = build_app(settings, core, verifier=verifier, image="mcp-code-executor:latest")
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="inproc-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "in-process gateway did not start"
    base = f"http://127.0.0.1:{port}"
    yield InProcessGateway(f"{base}/mcp", base, tokens, sink, service)
    server.should_exit = True
    thread.join(timeout=60)
    assert backend.list({"sandbox-gateway.gateway": gateway_id}) == []
