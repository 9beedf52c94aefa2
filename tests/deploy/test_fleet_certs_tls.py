"""`sandbox-gateway certs` with the socket proxy: a sandbox host's TLS listener made of its output.

The proxy (`python -m gateway.sockproxy`) listens on tls:127.0.0.1:PORT with the files `certs`
wrote for `h1=127.0.0.1`, in front of the local engine; the gateway's backend reaches it with the
fleet's client certificate, and nothing else does: not another fleet's client, not the host's own
server certificate used as a client, not a gateway that trusts another CA.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.backend.docker_engine import DockerBackend, tls_config
from gateway.cli import main
from gateway.errors import EngineError
from tests.support.net import free_port
from tests.support.proxy import PrivateProxy


@dataclass(frozen=True)
class Fleet:
    out: Path

    @property
    def ca(self) -> str:
        return str(self.out / "ca.pem")

    def client(self, name: str = "gateway") -> tuple[str, str]:
        return str(self.out / "clients" / f"{name}.pem"), str(self.out / "clients" / f"{name}-key.pem")


def _fleet(out: Path) -> Fleet:
    assert main(["certs", "--out", str(out), "--host", "h1=127.0.0.1"]) == 0
    return Fleet(out)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return _fleet(tmp_path_factory.mktemp("fleet") / "certs")


@pytest.fixture(scope="module")
def other_fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """Another `certs` run: another CA, and a client certificate of its own."""
    return _fleet(tmp_path_factory.mktemp("other-fleet") / "certs")


@pytest.fixture(scope="module")
def host_url(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """tcp://127.0.0.1:PORT: the socket proxy as host h1 runs it, with hosts/h1/'s files."""
    h1 = fleet.out / "hosts" / "h1"
    tls = (
        *("--tls-cert", str(h1 / "server.pem")),
        *("--tls-key", str(h1 / "server-key.pem")),
        *("--tls-client-ca", str(h1 / "ca.pem")),
    )
    proxy = PrivateProxy(tmp_path_factory.mktemp("h1-proxy"), extra=tls, tcp_port=free_port())
    proxy.start()
    yield proxy.url
    assert proxy.process is not None
    proxy.process.terminate()
    proxy.process.wait(timeout=10)


def _ping(url: str, ca: str, cert: str, key: str) -> None:
    engine = DockerBackend(url, timeout_s=5, tls=tls_config(ca, cert, key))
    try:
        engine.ping()
    finally:
        engine.close()


def test_the_gateway_reaches_the_host_with_the_fleet_client_certificate(fleet: Fleet, host_url: str) -> None:
    _ping(host_url, fleet.ca, *fleet.client())
    # The files as a gateway has them: clients/ alone (its own copy of the CA).
    _ping(host_url, str(fleet.out / "clients" / "ca.pem"), *fleet.client())


def test_a_client_certificate_of_another_fleet_is_refused(
    fleet: Fleet, other_fleet: Fleet, host_url: str
) -> None:
    with pytest.raises(EngineError, match=f"through {host_url}"):
        _ping(host_url, fleet.ca, *other_fleet.client())


def test_the_host_server_certificate_is_no_client_certificate(fleet: Fleet, host_url: str) -> None:
    """serverAuth only: the host's own pair, presented as a client's, is refused."""
    h1 = fleet.out / "hosts" / "h1"
    with pytest.raises(EngineError, match=f"through {host_url}"):
        _ping(host_url, fleet.ca, str(h1 / "server.pem"), str(h1 / "server-key.pem"))


def test_a_gateway_that_trusts_another_ca_does_not_talk_to_the_host(
    fleet: Fleet, other_fleet: Fleet, host_url: str
) -> None:
    """The gateway checks the host too: the right client pair, but the other fleet's CA, fails."""
    with pytest.raises(EngineError, match=f"through {host_url}"):
        _ping(host_url, other_fleet.ca, *fleet.client())
