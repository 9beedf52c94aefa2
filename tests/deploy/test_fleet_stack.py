"""The fleet's compose stacks, live: two sandbox hosts and the gateway tier, as an operator brings
them up from compose/fleet with the certificates `sandbox-gateway certs` makes.

Each sandbox host is a private engine in a network namespace of its own (`SandboxHost`, at
10.231.N.2) running docker-compose.sandbox-host.yml: the project's socket proxy on TLS in front of
that engine. The gateway tier, docker-compose.gateways.yml (HAProxy, two replicas, Redis), runs on
the shared engine and reaches the hosts over the routed veth pairs, as it would reach other machines.
A real MCP client calls through the balancer's published port. Images come from `build-images
--fleet` (offline), the same ones an operator builds.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from gateway.auth.tokens import TokenStore
from gateway.cli import main
from gateway.sandboxes.naming import sandbox_name
from gateway.setup.state import REPO_ROOT, SetupPaths
from gateway.uids import UidRange
from tests.e2e.conftest import mcp_client
from tests.support.compose_stack import (
    GATEWAY_IMAGE,
    GATEWAY_UID,
    HAPROXY_IMAGE,
    PROXY_IMAGE,
    REDIS_IMAGE,
    Stack,
    build_images,
    clean_env,
    docker,
    give_to_gateway,
    need_compose,
    wait_healthy,
)
from tests.support.fleet_hosts import PORT, SandboxHost, clean_stale_hosts
from tests.support.net import free_port
from tests.support.waiting import eventually

FLEET = REPO_ROOT / "compose" / "fleet"
SANDBOX_IMAGE = "mcp-code-executor:latest"
#: Not the default range: a sandbox made at all shows that both tiers were given the same one.
SANDBOX_UIDS = UidRange.parse("2002000000-2002009999")
PRINCIPALS = tuple(f"agent-{i}" for i in range(8))
NOBODY = 65534
REPLICAS = {"gateway-1": "gw-1", "gateway-2": "gw-2"}


@dataclass
class Fleet:
    tier: Stack
    hosts: list[SandboxHost]
    host_stacks: list[Stack]
    certs: Path
    tokens: dict[str, str]

    def call(self, principal: str, command: str) -> dict[str, Any]:
        async def go() -> dict[str, Any]:
            async with mcp_client(f"{self.tier.base}/mcp", self.tokens[principal]) as client:
                result = await client.call_tool("execute_bash", {"command": command})
                assert result.structured_content is not None, result
                return dict(result.structured_content)

        return anyio.run(go)

    def placed(self) -> dict[str, dict[str, str]]:
        """Host -> {container name: id} of this fleet's sandboxes on its engine."""
        label = f"label=sandbox-gateway.gateway={self.tier.project}"
        found = {}
        for host in self.hosts:
            lines = host.docker("ps", "-a", "--filter", label, "--format", "{{.Names}} {{.ID}}")
            found[host.name] = dict(line.split() for line in lines.stdout.decode().splitlines())
        return found

    def own_sandboxes(self) -> dict[str, str]:
        """Principal -> the container id of its sandbox, wherever it is (missing: it has none)."""
        ids = {name: cid for names in self.placed().values() for name, cid in names.items()}
        named = {sandbox_name(self.tier.project, f"default/{p}"): p for p in PRINCIPALS}
        return {named[name]: cid for name, cid in ids.items() if name in named}

    def served(self, service: str) -> set[str]:
        """Principals whose commands the replica `service` ran, from its audit log."""
        log = f"/var/log/sandbox-gateway/audit-{REPLICAS[service]}.jsonl"
        lines = self.tier.exec(service, "cat", log).stdout.splitlines()
        events = [json.loads(line) for line in lines if line.strip()]
        return {e["actor"]["principal"] for e in events if e.get("event") == "exec.finish"}


def _host_stack(host: SandboxHost, certs: Path) -> Stack:
    """docker-compose.sandbox-host.yml on `host`'s own engine, published at the host's address."""
    env = clean_env(
        host.engine.socket,
        SGW_DOCKER_SOCKET=str(host.engine.socket),
        DOCKER_GID=str(host.engine.socket.stat().st_gid),
        SGW_HOST_CERTS=str(certs / "hosts" / host.name),
        SGW_PROXY_IMAGE=PROXY_IMAGE,
        SGW_GATEWAY_IMAGE=GATEWAY_IMAGE,
        SGW_SKILLS_DIR=str(REPO_ROOT / "skills"),
        SGW_SANDBOX_UIDS=str(SANDBOX_UIDS),
        SGW_PROXY_PUBLISH=f"{host.ip}:{PORT}",
    )
    project = f"sgwhost{uuid.uuid4().hex[:10]}"
    return Stack(project, env, "", "", FLEET / "docker-compose.sandbox-host.yml", socket=host.engine.socket)


def _certificates(out: Path, hosts: list[SandboxHost]) -> None:
    """`sandbox-gateway certs` for the hosts, then the owners the compose files' users need: each
    host's server key is the proxy's (nobody), the client pair the replicas' (uid 10001)."""
    argv = ["certs", "--out", str(out)]
    for host in hosts:
        argv += ["--host", f"{host.name}={host.ip}"]
    assert main(argv) == 0
    for host in hosts:
        folder = out / "hosts" / host.name
        folder.chmod(0o755)
        os.chown(folder / "server-key.pem", NOBODY, NOBODY)
    clients = out / "clients"
    for path in (clients, *clients.iterdir()):
        os.chown(path, GATEWAY_UID, GATEWAY_UID)


def _hosts_file(path: Path, hosts: list[SandboxHost]) -> Path:
    """The replicas' hosts file, naming the certificate files where the tier mounts them."""
    mounted = "/etc/sandbox-gateway/fleet"
    doc = {
        "tls": {
            "ca": f"{mounted}/ca.pem",
            "cert": f"{mounted}/gateway.pem",
            "key": f"{mounted}/gateway-key.pem",
        },
        "health": {"probe_interval_s": 1.0, "probe_timeout_s": 3.0, "down_after_s": 10.0},
        "hosts": [{"name": h.name, "address": h.address, "capacity": 20} for h in hosts],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o644)
    return path


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.fail("the fleet's sandbox hosts are network namespaces: the suite runs as root")
    need_compose()
    build_images(fleet=True)
    clean_stale_hosts()
    work = tmp_path_factory.mktemp("fleet-stack")
    hosts = [SandboxHost("host-a"), SandboxHost("host-b")]
    host_stacks: list[Stack] = []
    tier: Stack | None = None
    try:
        certs = work / "certs"
        _certificates(certs, hosts)
        for host in hosts:
            host.wire()
            host.engine.start()
            host.engine.load_image(SANDBOX_IMAGE)
            host.engine.load_image(PROXY_IMAGE)
            stack = _host_stack(host, certs)
            host_stacks.append(stack)
            stack.compose("up", "-d", "--no-build")
        for stack in host_stacks:
            wait_healthy(stack, "socket-proxy")

        secrets = work / "secrets"
        secrets.mkdir()
        store = TokenStore(secrets / "tokens.jsonl")
        tokens = {name: store.create(name) for name in PRINCIPALS}
        key = work / "audit-hmac.key"
        key.write_bytes(os.urandom(32))
        give_to_gateway(secrets, secrets / "tokens.jsonl", key)

        project = f"sgwfleet{uuid.uuid4().hex[:10]}"
        port = free_port()
        env = clean_env(
            SetupPaths.from_env().docker_socket,
            SGW_FLEET_HOSTS=str(_hosts_file(work / "hosts.yaml", hosts)),
            SGW_FLEET_CERTS=str(certs),
            SGW_SECRETS_DIR=str(secrets),
            SGW_AUDIT_HMAC_KEY=str(key),
            SGW_SKILLS_DIR=str(REPO_ROOT / "skills"),
            SGW_PUBLISH=f"127.0.0.1:{port}",
            SGW_GATEWAY_ID=project,
            SGW_GATEWAY_IMAGE=GATEWAY_IMAGE,
            SGW_HAPROXY_IMAGE=HAPROXY_IMAGE,
            SGW_REDIS_IMAGE=REDIS_IMAGE,
            SGW_SANDBOX_UIDS=str(SANDBOX_UIDS),
        )
        tier = Stack(project, env, f"http://127.0.0.1:{port}", "", FLEET / "docker-compose.gateways.yml")
        tier.compose("up", "-d", "--no-build")
        for service in ("gateway-1", "gateway-2", "balancer"):
            wait_healthy(tier, service)
        _wait_ready(tier)
        yield Fleet(tier, hosts, host_stacks, certs, tokens)
    finally:
        if tier is not None:
            tier.down()
        for stack in host_stacks:
            stack.down()
        errors = []
        for host in hosts:
            try:
                host.close()
            except Exception as exc:  # every host is closed; the first error is raised
                errors.append(exc)
        if errors:
            raise errors[0]


def _wait_ready(tier: Stack) -> None:
    """Until the balancer answers /ready with 200, both hosts up (a replica probes them first)."""

    def ready() -> bool:
        answer = httpx.get(f"{tier.base}/ready", timeout=5)
        assert answer.status_code == 200, answer.text
        return True

    eventually(ready, timeout_s=60, retry_on=(httpx.HTTPError,), message="the fleet did not become ready")


def test_calls_through_the_balancer_run_on_the_sandbox_hosts(fleet: Fleet) -> None:
    """Every principal's call is answered through the one published port, in a sandbox made on a
    sandbox host through that host's proxy (none on the tier's engine), one per principal, spread
    over both hosts; the files a call writes are there at its next call."""
    for principal in PRINCIPALS:
        first = fleet.call(principal, f"echo {principal} > /workspace/who; id -u")
        assert first["exit_code"] == 0, first
        assert int(first["stdout"]) in SANDBOX_UIDS, first
        again = fleet.call(principal, "cat /workspace/who")
        assert again["stdout"].strip() == principal, again

    placed = fleet.placed()
    assert set(fleet.own_sandboxes()) == set(PRINCIPALS), f"a principal has no sandbox on a host: {placed}"
    per_host = {host: [n for n in names if not n.startswith("sgw-pool-")] for host, names in placed.items()}
    assert sum(map(len, per_host.values())) == len(PRINCIPALS), per_host
    assert all(per_host.values()), f"placement used one host only: {per_host}"
    label = f"label=sandbox-gateway.gateway={fleet.tier.project}"
    assert docker("ps", "-aq", "--filter", label).stdout.split() == [], "no sandbox on the tier's engine"
    assert fleet.served("gateway-1") | fleet.served("gateway-2") == set(PRINCIPALS)


def test_the_tier_keeps_redis_internal_and_publishes_only_the_balancer(fleet: Fleet) -> None:
    tier, project = fleet.tier, fleet.tier.project
    assert set(tier.inspect("redis")["NetworkSettings"]["Networks"]) == {f"{project}_state"}
    assert (
        docker("network", "inspect", f"{project}_state", "--format", "{{.Internal}}").stdout.strip() == "true"
    )
    for service in ("gateway-1", "gateway-2"):
        info = tier.inspect(service)
        assert set(info["NetworkSettings"]["Networks"]) == {f"{project}_edge", f"{project}_state"}
        assert info["HostConfig"]["PortBindings"] in ({}, None)
        assert info["HostConfig"]["ReadonlyRootfs"] is True and info["Config"]["User"] == "10001:10001"
        assert not any("docker.sock" in m.get("Source", "") for m in info["Mounts"])
    bindings = tier.inspect("balancer")["HostConfig"]["PortBindings"]
    assert {b["HostIp"] for b in bindings["8080/tcp"]} == {"127.0.0.1"}


def _tls_context(fleet: Fleet, *, client: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(fleet.certs / "ca.pem"))
    if client:
        context.load_cert_chain(
            fleet.certs / "clients" / "gateway.pem", fleet.certs / "clients" / "gateway-key.pem"
        )
    return context


def _request(fleet: Fleet, host: SandboxHost, request: bytes, *, client: bool) -> bytes:
    context = _tls_context(fleet, client=client)
    with (
        socket.create_connection((host.ip, PORT), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host.ip) as tls,
    ):
        tls.sendall(request)
        return tls.recv(4096)


def test_a_sandbox_host_answers_only_fleet_clients_over_tls(fleet: Fleet) -> None:
    """With the fleet's client pair: /_ping is 200 and a build is refused (403). Without a client
    certificate the handshake fails; in plain HTTP nothing answers."""
    host = fleet.hosts[0]
    ping = b"GET /_ping HTTP/1.1\r\nHost: engine\r\nConnection: close\r\n\r\n"
    assert _request(fleet, host, ping, client=True).startswith(b"HTTP/1.1 200")
    build = b"POST /v1.41/build HTTP/1.1\r\nHost: engine\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    assert _request(fleet, host, build, client=True).startswith(b"HTTP/1.1 403")
    # In TLS 1.3 the server refuses the missing certificate after the client's side of the
    # handshake, so the refusal is an alert (or a reset) at the first read: never an answer.
    try:
        anonymous = _request(fleet, host, ping, client=False)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
        anonymous = repr(exc).encode()
    assert not anonymous.startswith(b"HTTP/"), anonymous
    refused = anonymous == b"" or b"CERTIFICATE_REQUIRED" in anonymous.upper() or b"Reset" in anonymous
    assert refused, anonymous
    with socket.create_connection((host.ip, PORT), timeout=10) as raw:
        raw.sendall(ping)
        raw.settimeout(10)
        try:
            answer = raw.recv(4096)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"HTTP/1.1 200"), answer
    proxy = fleet.host_stacks[0].inspect("socket-proxy")
    assert proxy["Config"]["User"] == "65534:65534" and proxy["HostConfig"]["ReadonlyRootfs"] is True
    assert set(proxy["HostConfig"]["PortBindings"]) == {"2376/tcp"}


def _call_retrying(fleet: Fleet, principal: str, command: str) -> dict[str, Any]:
    """A client that opens a new session when its connection went with a replica (as SDK clients do)."""
    outcome: dict[str, Any] = {}

    def answered() -> bool:
        outcome.update(fleet.call(principal, command))
        return True

    eventually(answered, timeout_s=60, retry_on=(httpx.HTTPError, ExceptionGroup), message=f"{principal}")
    return outcome


def test_a_stopped_replica_leaves_its_principals_to_the_other_with_their_sandboxes(fleet: Fleet) -> None:
    """The replica that served the most principals stops; every principal's next call is answered by
    the other, in the same sandbox (same container, its files there), and nothing is replaced."""
    served = {service: fleet.served(service) for service in REPLICAS}
    stopped = max(served, key=lambda service: len(served[service]))
    other = next(service for service in REPLICAS if service != stopped)
    assert served[stopped], served
    before = fleet.own_sandboxes()
    fleet.tier.compose("stop", "--timeout", "60", stopped)
    try:
        for principal in PRINCIPALS:
            outcome = _call_retrying(fleet, principal, "cat /workspace/who")
            assert outcome["stdout"].strip() == principal, outcome
            assert not outcome.get("sandbox_replaced"), outcome
        assert fleet.served(other) >= set(PRINCIPALS), "the other replica ran every principal's call"
        assert fleet.own_sandboxes() == before, "each principal kept its own container"
    finally:
        fleet.tier.compose("start", stopped)
        wait_healthy(fleet.tier, stopped)


def test_the_tier_taken_down_and_up_again_adopts_every_sandbox(fleet: Fleet) -> None:
    """`down -v` removes the tier (containers, networks, volumes) and leaves the sandboxes on their
    hosts, as a fleet replica stops without removing them; a new tier finds each principal's own."""
    before = fleet.placed()
    fleet.tier.down()
    leftovers = fleet.tier.leftovers()
    assert leftovers == {"containers": [], "networks": [], "volumes": [], "sandboxes": []}, leftovers
    assert fleet.placed() == before, "the sandboxes stay on their hosts"
    fleet.tier.compose("up", "-d", "--no-build")
    for service in ("gateway-1", "gateway-2", "balancer"):
        wait_healthy(fleet.tier, service)
    _wait_ready(fleet.tier)
    for principal in PRINCIPALS:
        outcome = fleet.call(principal, "cat /workspace/who")
        assert outcome["stdout"].strip() == principal, outcome
        assert not outcome.get("sandbox_replaced"), outcome
