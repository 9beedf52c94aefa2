"""Faults against the real engine: the socket proxy goes away and comes back."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.setup.probe import unix_http_status
from tests.conftest import IMAGE
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway

pytestmark = pytest.mark.anyio
REPO = Path(__file__).parents[2]


class PrivateProxy:
    """A second socket proxy, the project's own, on a unix socket of its own (in front of
    `docker_socket`): taking it down affects this test only."""

    def __init__(
        self, tmp: Path, docker_socket: Path = Path("/var/run/docker.sock"), extra: tuple[str, ...] = ()
    ) -> None:
        self.extra = extra
        self.socket = tmp / "docker-proxy.sock"
        self.url = f"unix://{self.socket}"
        self.log = tmp / "socket-proxy.log"
        self.docker_socket = docker_socket
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "gateway.sockproxy",
            "--listen",
            f"unix:{self.socket}",
            "--engine",
            str(self.docker_socket),
            "--image",
            IMAGE,
            "--mount-source",
            str(REPO / "skills"),
            *self.extra,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO)
        deadline = time.monotonic() + 10
        while unix_http_status(self.socket, timeout=1) != 200:
            assert self.process.poll() is None, f"the private proxy exited: {self.log.read_text()[-500:]}"
            assert time.monotonic() < deadline, "the private proxy did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def proxied(tmp_path: Path, backend) -> Iterator[tuple[Gateway, PrivateProxy]]:  # type: ignore[no-untyped-def]
    proxy = PrivateProxy(tmp_path)
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
