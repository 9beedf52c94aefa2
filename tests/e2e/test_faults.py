"""Faults against the real engine: the socket proxy goes away and comes back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.backend.docker_engine import DockerBackend
from tests.conftest import IMAGE
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway
from tests.support.proxy import PrivateProxy

pytestmark = pytest.mark.anyio


@pytest.fixture
def proxied(tmp_path: Path, backend: DockerBackend) -> Iterator[tuple[Gateway, PrivateProxy]]:
    """A gateway behind a socket proxy of its own (on the local engine): taking that proxy down
    affects this test only."""
    proxy = PrivateProxy(tmp_path, image=IMAGE)
    proxy.start()
    gateway = start_gateway(tmp_path, "--docker-host", proxy.url)
    try:
        yield gateway, proxy
    finally:
        proxy.stop()
        proxy.start()
        stop_gateway(gateway)
        proxy.stop()
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


async def call(gateway: Gateway, command: str) -> Any:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        return await client.call_tool("execute_bash", {"command": command})


async def test_the_socket_proxy_down_then_back(proxied: tuple[Gateway, PrivateProxy]) -> None:
    gateway, proxy = proxied
    first = await call(gateway, "echo before > /workspace/f; cat /workspace/f")
    assert first.structured_content["stdout"] == "before\n"
    assert httpx.get(f"{gateway.base}/ready").status_code == 200

    proxy.stop()
    down = await call(gateway, "cat /workspace/f")
    ready = httpx.get(f"{gateway.base}/ready")
    assert down.is_error and "engine-unavailable" in down.content[0].text
    assert "socket proxy" in down.content[0].text
    assert ready.status_code == 503 and ready.json()["engine"] is False
    assert httpx.get(f"{gateway.base}/health").status_code == 200, "the gateway itself keeps serving"

    proxy.start()
    back = await call(gateway, "cat /workspace/f")
    assert back.structured_content["stdout"] == "before\n", "the sandbox and its files outlived the outage"
    assert httpx.get(f"{gateway.base}/ready").status_code == 200
