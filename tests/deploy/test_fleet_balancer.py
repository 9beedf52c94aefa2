"""The fleet's balancer at work: HAProxy with compose/fleet/haproxy.cfg in front of two stand-in
replicas (small HTTP servers that say who they are and answer /ready as told).

One principal's requests (one Authorization header) go to one replica; a replica whose /ready is not
200 gets none, and gets its own back when it is ready again (consistent hashing); a replica that
dies loses no request: the connection refused is retried on the other one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from gateway.setup.state import REPO_ROOT
from tests.support import eventually
from tests.support.net import accepts, free_port

HAPROXY_CFG = REPO_ROOT / "compose" / "fleet" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
TOKENS = [f"Bearer sgw_token_{n}" for n in range(24)]


@dataclass
class Replica:
    """A stand-in gateway replica on 127.0.0.1:port: /ready answers `ready_status`, anything else
    answers its name. HTTP/1.0, one request per connection, so stopping it ends it at once."""

    name: str
    port: int = field(default_factory=free_port)
    ready_status: int = 200
    server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status = replica.ready_status if self.path == "/ready" else 200
                body = replica.name.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@dataclass
class Balancer:
    url: str
    replicas: dict[str, Replica]
    client: httpx.Client

    def who(self, token: str) -> str:
        response = self.client.get(f"{self.url}/mcp", headers={"Authorization": token})
        assert response.status_code == 200, response.text
        return response.text

    def placement(self) -> dict[str, str]:
        return {token: self.who(token) for token in TOKENS}


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[Balancer]:
    replicas = {name: Replica(name) for name in ("gw-1", "gw-2")}
    for replica in replicas.values():
        replica.start()
    port = free_port()
    env = {
        **os.environ,
        "BALANCER_BIND": f"127.0.0.1:{port}",
        "GW1_ADDR": f"127.0.0.1:{replicas['gw-1'].port}",
        "GW2_ADDR": f"127.0.0.1:{replicas['gw-2'].port}",
    }
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen([HAPROXY, "-db", "-f", str(HAPROXY_CFG)], env=env, stdout=out, stderr=out)
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            return accepts(port)

        eventually(up, timeout_s=10, message="haproxy did not start")
        with httpx.Client(timeout=10) as client:
            yield Balancer(f"http://127.0.0.1:{port}", replicas, client)
    finally:
        process.terminate()
        process.wait(timeout=10)
        for replica in replicas.values():
            replica.stop()


def test_one_principal_stays_on_one_replica_and_principals_spread(balancer: Balancer) -> None:
    first = balancer.placement()
    for _ in range(3):
        assert balancer.placement() == first
    assert set(first.values()) == {"gw-1", "gw-2"}, "both replicas take principals"
    anonymous = {balancer.client.get(f"{balancer.url}/mcp").text for _ in range(8)}
    assert anonymous <= {"gw-1", "gw-2"}


def test_a_replica_that_is_not_ready_gets_nothing_and_its_principals_come_back(balancer: Balancer) -> None:
    before = balancer.placement()
    balancer.replicas["gw-1"].ready_status = 503

    def all_on_gw2() -> bool:
        assert set(balancer.placement().values()) == {"gw-2"}
        return True

    eventually(all_on_gw2, timeout_s=20, interval_s=0.5, message="gw-1 still got requests")
    balancer.replicas["gw-1"].ready_status = 200

    def back() -> bool:
        assert balancer.placement() == before
        return True

    eventually(back, timeout_s=20, interval_s=0.5, message="gw-1's principals did not come back to it")


def test_a_dead_replica_loses_no_request(balancer: Balancer) -> None:
    """Right after gw-1 stops (before a health check can notice), its principals' requests are
    retried on gw-2: none fails."""
    before = balancer.placement()
    moved = [token for token, replica in before.items() if replica == "gw-1"]
    assert moved
    balancer.replicas["gw-1"].stop()
    for token in moved:
        assert balancer.who(token) == "gw-2"
    assert all(balancer.who(token) == "gw-2" for token in before if before[token] == "gw-2")
