"""A remote engine over TLS with client certificates: the socket proxy listening on TLS.

A second socket proxy listens on tcp://127.0.0.1:PORT with TLS, requires a client certificate
signed by a throwaway CA and forwards to the local engine: the shape of a remote sandbox host.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from audit import AuditLog, MemorySink
from gateway.backend.docker_engine import DockerBackend, tls_config
from gateway.calls.service import ExecutionService
from gateway.errors import EngineError
from gateway.sandboxes.broker import Broker
from policy import Principal
from policy.engine import PolicyEngine
from tests.conftest import IMAGE, policy_with_exec_path
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway
from tests.support import audit_events
from tests.support.net import free_port
from tests.support.pki import Pki, make_pki
from tests.support.proxy import PrivateProxy


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, the engine's server certificate for 127.0.0.1, a client pair, and a pair from another CA."""
    return make_pki(tmp_path_factory.mktemp("pki"), ["127.0.0.1"])


def tls_proxy(pki: Pki, workdir: Path, image: str | None = None) -> PrivateProxy:
    """A socket proxy on TLS at 127.0.0.1, with the server certificate, requiring a client
    certificate signed by the CA."""
    return PrivateProxy(workdir, extra=pki.server_options("127.0.0.1"), image=image, tcp_port=free_port())


@pytest.fixture(scope="module")
def tls_engine(pki: Pki, backend: DockerBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """tcp://127.0.0.1:PORT: the socket proxy on TLS, with a required client certificate."""
    proxy = tls_proxy(pki, tmp_path_factory.mktemp("tls-proxy"), image=IMAGE)
    proxy.start()
    yield proxy.url
    assert proxy.process is not None
    proxy.process.terminate()
    proxy.process.wait(timeout=10)


def test_the_backend_reaches_the_engine_with_its_client_certificate(tls_engine: str, pki: Pki) -> None:
    engine = DockerBackend(tls_engine, tls=tls_config(str(pki.ca), str(pki.cert), str(pki.key)))
    try:
        engine.ping()
        assert engine.image_present(IMAGE)
    finally:
        engine.close()


@pytest.mark.parametrize("who", ["no-tls", "foreign-certificate"])
def test_without_the_right_client_certificate_the_engine_is_unreachable(
    tls_engine: str, pki: Pki, who: str
) -> None:
    tls = None if who == "no-tls" else tls_config(str(pki.ca), str(pki.foreign_cert), str(pki.foreign_key))
    engine = DockerBackend(tls_engine, timeout_s=5, tls=tls)
    try:
        with pytest.raises(EngineError, match=f"through {tls_engine}"):
            engine.ping()
    finally:
        engine.close()


def test_the_gateway_configured_the_docker_way_is_ready_over_tls(
    tls_engine: str, pki: Pki, backend: DockerBackend, tmp_path: Path
) -> None:
    """DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, read as the Docker CLI reads them: ready, image found."""
    certs = tmp_path / "certs"
    certs.mkdir()
    for source, name in ((pki.ca, "ca.pem"), (pki.cert, "cert.pem"), (pki.key, "key.pem")):
        shutil.copy(source, certs / name)
    env = {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
    gateway = start_gateway(tmp_path, "--docker-host", tls_engine, env=env)
    try:
        ready = httpx.get(f"{gateway.base}/ready", timeout=10)
        assert ready.status_code == 200, ready.text
        checks = ready.json()
        assert {k: checks[k] for k in ("audit", "engine", "image", "ready")} == dict.fromkeys(
            ("audit", "engine", "image", "ready"), True
        )
        assert checks["docker_ops"]["saturated"] is False and checks["docker_ops"]["workers"] == 16
        assert checks["executions"] == {"running": 0}
        assert audit_events(gateway.audit_log, "sandbox.sweep"), "the start-up sweep went through"
        result = anyio.run(_echo_over_mcp, gateway)
        assert result == "through tls\n"
    finally:
        stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


def test_the_gateway_without_client_certificates_is_not_ready_and_names_the_engine(
    tls_engine: str, tmp_path: Path
) -> None:
    """Plain TCP to the TLS engine: /ready is 503 and its error names the engine address."""
    gateway = start_gateway(tmp_path, "--docker-host", tls_engine)
    try:
        ready = httpx.get(f"{gateway.base}/ready", timeout=15)
        assert ready.status_code == 503
        assert ready.json()["engine"] is False
        assert f"cannot reach the Docker engine through {tls_engine}" in ready.json()["error"]
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(timeout=60)


async def _echo_over_mcp(gateway: Gateway) -> str:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        result = await client.call_tool("execute_bash", {"command": "echo through tls"})
    assert not result.is_error, result.content
    return str(result.structured_content["stdout"])


@pytest.mark.anyio
async def test_commands_run_over_tls_on_both_exec_paths(
    tls_engine: str, pki: Pki, backend: DockerBackend, exec_path: str
) -> None:
    """The attach stream (agent) and exec's hijacked stream both work over a TLS connection."""
    engine = DockerBackend(tls_engine, tls=tls_config(str(pki.ca), str(pki.cert), str(pki.key)))
    broker = Broker(engine, AuditLog([MemorySink()]), gateway_id=f"tls-{uuid.uuid4().hex[:10]}")
    service = ExecutionService(PolicyEngine(policy_with_exec_path(exec_path)), broker, broker.audit)
    try:
        small = await service.execute(Principal("tls"), "execute_bash", "echo over tls")
        big = await service.execute(Principal("tls"), "execute_bash", "head -c 600000 /dev/zero | tr '\\0' a")
        assert (small.exit_code, small.stdout) == (0, "over tls\n")
        assert (big.exit_code, len(big.stdout), big.truncated) == (0, 600000, False)
    finally:
        broker.cleanup_all_sync()
        engine.close()
    assert backend.list({"sandbox-gateway.gateway": broker.gateway_id}) == []


def test_the_tls_proxy_stops_promptly_with_clients_connected(pki: Pki, tmp_path: Path) -> None:
    """SIGTERM with idle TLS clients still connected: the proxy exits at once, not after the TLS
    close handshake's 30 s timeout (a stop must never hang on a peer)."""
    proxy = tls_proxy(pki, tmp_path)
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.cert), str(pki.key))
    clients: list[ssl.SSLSocket] = []
    proxy.start()
    try:
        assert proxy.process is not None and proxy.tcp_port is not None
        clients += [
            context.wrap_socket(
                socket.create_connection(("127.0.0.1", proxy.tcp_port)), server_hostname="127.0.0.1"
            )
            for _ in range(3)
        ]
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(timeout=15) == 0
    finally:
        for client in clients:
            client.close()
        proxy.stop()
