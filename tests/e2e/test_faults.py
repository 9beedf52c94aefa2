"""Faults against the real engine: the socket proxy goes away and comes back."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway

pytestmark = pytest.mark.anyio
HAPROXY_CFG = Path(__file__).parents[2] / "compose" / "socket-proxy" / "haproxy.cfg"


class PrivateProxy:
    """A second HAProxy with the project's config on its own port (in front of `docker_socket`):
    taking it down affects this test only."""

    def __init__(self, tmp: Path, docker_socket: Path = Path("/var/run/docker.sock")) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.pid_file = tmp / "haproxy.pid"
        self.env = {
            **os.environ,
            "SGW_PROXY_BIND": f"127.0.0.1:{self.port}",
            "SGW_DOCKER_SOCKET": str(docker_socket),
        }

    def start(self) -> None:
        subprocess.run(
            ["haproxy", "-D", "-f", str(HAPROXY_CFG), "-p", str(self.pid_file)],
            env=self.env,
            check=True,
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/_ping", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the private proxy did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.pid_file.exists():
            for pid in self.pid_file.read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            self.pid_file.unlink()


@pytest.fixture
def proxied(tmp_path: Path, backend) -> Iterator[tuple[Gateway, PrivateProxy]]:  # type: ignore[no-untyped-def]
    proxy = PrivateProxy(tmp_path)
    proxy.start()
    gateway = start_gateway(tmp_path, "--docker-host", f"tcp://127.0.0.1:{proxy.port}")
    try:
        yield gateway, proxy
    finally:
        proxy.stop()
        proxy.start()
        stop_gateway(gateway)
        proxy.stop()
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


async def call(gateway: Gateway, command: str) -> object:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        return await client.call_tool("execute_bash", {"command": command})


async def test_the_socket_proxy_down_then_back(proxied: tuple[Gateway, PrivateProxy]) -> None:
    gateway, proxy = proxied
    first = await call(gateway, "echo before > /workspace/f; cat /workspace/f")
    assert first.structured_content["stdout"] == "before\n"  # type: ignore[attr-defined]
    assert httpx.get(f"{gateway.base}/ready").status_code == 200

    proxy.stop()
    down = await call(gateway, "cat /workspace/f")
    ready = httpx.get(f"{gateway.base}/ready")
    assert down.is_error and "engine-unavailable" in down.content[0].text  # type: ignore[attr-defined]
    assert "socket proxy" in down.content[0].text  # type: ignore[attr-defined]
    assert ready.status_code == 503 and ready.json()["engine"] is False
    assert httpx.get(f"{gateway.base}/health").status_code == 200, "the gateway itself keeps serving"

    proxy.start()
    back = await call(gateway, "cat /workspace/f")
    assert back.structured_content["stdout"] == "before\n", "the sandbox and its files outlived the outage"  # type: ignore[attr-defined]
    assert httpx.get(f"{gateway.base}/ready").status_code == 200
