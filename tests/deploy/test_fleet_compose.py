"""The fleet's compose files (compose/fleet): the gateway tier and a sandbox host, as Debian's
docker-compose reads them, and the balancer's configuration, as HAProxy reads it.

The gateway tier is HAProxy (the one published port), two gateway replicas of one fleet (one
--gateway-id, a --replica-id each, the hosts file and the fleet's client certificate read-only,
rate counters in the tier's Redis) and Redis on an internal network. A sandbox host is the socket
proxy on TLS, with the three TLS options pointing at the files `sandbox-gateway certs` writes for
a host. Nothing here starts a container.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import _parser, main
from gateway.setup.compose_images import BASE_PACKAGES
from gateway.setup.state import REPO_ROOT
from gateway.sockproxy.main import add_arguments
from tests.support.compose_stack import clean_env, need_compose

FLEET = REPO_ROOT / "compose" / "fleet"
HAPROXY_CFG = FLEET / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
CERTS_IN_CONTAINER = "/etc/sandbox-gateway/fleet"
REPLICAS = ("gateway-1", "gateway-2")


def _compose_config(file: str, **env: str) -> dict[str, Any]:
    need_compose()
    argv = ["docker-compose", "-p", "fleetcheck", "-f", str(FLEET / file), "config"]
    clean = clean_env(None, **env)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=clean, check=False)
    assert proc.returncode == 0, proc.stderr
    return dict(yaml.safe_load(proc.stdout))


def _flags(command: list[str]) -> dict[str, str]:
    """`--name=value` options of a command, by name."""
    options = [arg.removeprefix("--") for arg in command if arg.startswith("--") and "=" in arg]
    return dict(option.split("=", 1) for option in options)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet") / "certs"
    assert main(["certs", "--out", str(out), "--host", "host-a=10.0.0.11"]) == 0
    return out


@pytest.fixture(scope="module")
def gateways(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("tier")
    (tmp / "hosts.yaml").write_text((FLEET / "hosts.example.yaml").read_text())
    (tmp / "secrets").mkdir()
    return _compose_config(
        "docker-compose.gateways.yml",
        SGW_FLEET_HOSTS=str(tmp / "hosts.yaml"),
        SGW_FLEET_CERTS=str(certs),
        SGW_SECRETS_DIR=str(tmp / "secrets"),
        SGW_AUDIT_HMAC_KEY=str(tmp / "key"),
    )


def test_two_replicas_of_one_fleet_each_with_its_replica_id(gateways: dict[str, Any]) -> None:
    services = gateways["services"]
    assert set(services) == {"balancer", *REPLICAS, "redis"}
    flags = {name: _flags(services[name]["command"]) for name in REPLICAS}
    assert [services[name]["command"][0] for name in REPLICAS] == ["serve", "serve"]
    assert flags["gateway-1"]["gateway-id"] == flags["gateway-2"]["gateway-id"] == "fleet"
    assert [flags[name]["replica-id"] for name in REPLICAS] == ["gw-1", "gw-2"]
    for name in REPLICAS:
        assert flags[name]["hosts-file"] == "/etc/sandbox-gateway/hosts.yaml"
        assert flags[name]["tokens"] == "/run/secrets/sandbox-gateway/tokens.jsonl"
        assert services[name]["user"] == "10001:10001" and services[name]["read_only"] is True
        assert services[name]["cap_drop"] == ["ALL"] and "ports" not in services[name]
    assert flags["gateway-1"]["audit-log"] != flags["gateway-2"]["audit-log"], "one audit file each"


def test_every_other_serve_flag_of_the_replicas_exists(gateways: dict[str, Any]) -> None:
    """The replicas use the serve flags there are, and the fleet's two (--hosts-file, --replica-id)."""
    for name in REPLICAS:
        args, unknown = _parser().parse_known_args(gateways["services"][name]["command"])
        assert args.command == "serve"
        assert unknown == []


def test_each_replica_mounts_the_client_certificates_and_the_hosts_file_read_only(
    gateways: dict[str, Any], certs: Path
) -> None:
    for name in REPLICAS:
        volumes = gateways["services"][name]["volumes"]
        assert f"{certs}/clients:{CERTS_IN_CONTAINER}:ro" in volumes
        assert any(v.endswith(":/etc/sandbox-gateway/hosts.yaml:ro") for v in volumes)
        assert any(v.endswith(":/run/secrets/sandbox-gateway:ro") for v in volumes), "the tokens, as before"
        assert not any(v.startswith(f"{certs}:") for v in volumes), "never the folder of the CA key"
        assert not any("docker.sock" in v for v in volumes)
    # The hosts file's TLS paths are the files `certs` wrote into clients/, as mounted.
    tls = yaml.safe_load((FLEET / "hosts.example.yaml").read_text())["tls"]
    for path in tls.values():
        assert path.startswith(f"{CERTS_IN_CONTAINER}/")
        assert (certs / "clients" / path.removeprefix(f"{CERTS_IN_CONTAINER}/")).is_file(), path
    assert not (certs / "clients" / "ca-key.pem").exists()


def test_the_replicas_share_the_tier_redis_on_an_internal_network(gateways: dict[str, Any]) -> None:
    services = gateways["services"]
    for name in REPLICAS:
        assert _flags(services[name]["command"])["rate-limit-storage"] == "redis://redis:6379/0"
        assert "redis" in services[name]["depends_on"]
    assert set(services["redis"]["networks"]) == {"state"} and "ports" not in services["redis"]
    assert gateways["networks"]["state"]["internal"] is True
    assert all("state" in services[name]["networks"] for name in REPLICAS)
    assert services["redis"]["build"]["context"] == str(FLEET / "redis")


def test_the_balancer_alone_publishes_one_port_and_reads_haproxy_cfg(gateways: dict[str, Any]) -> None:
    services = gateways["services"]
    published = {name: s.get("ports", []) for name, s in services.items() if s.get("ports")}
    assert published == {"balancer": ["127.0.0.1:8000:8080/tcp"]}
    balancer = services["balancer"]
    assert balancer["environment"] == {
        "BALANCER_BIND": ":8080", "GW1_ADDR": "gateway-1:8000", "GW2_ADDR": "gateway-2:8000",
    }  # fmt: skip
    assert all(_flags(services[name]["command"])["port"] == "8000" for name in REPLICAS)
    assert f"{HAPROXY_CFG}:/etc/haproxy/haproxy.cfg:ro" in balancer["volumes"]
    assert set(balancer["networks"]) <= set(services["gateway-1"]["networks"])
    assert balancer["build"]["context"] == str(FLEET / "haproxy")
    assert balancer["read_only"] is True and balancer["cap_drop"] == ["ALL"]


def test_the_sandbox_host_serves_its_proxy_on_tls_only_with_the_host_certificates(certs: Path) -> None:
    host = certs / "hosts" / "host-a"
    config = _compose_config("docker-compose.sandbox-host.yml", DOCKER_GID="999", SGW_HOST_CERTS=str(host))
    proxy = config["services"]["socket-proxy"]
    argv = [*proxy["entrypoint"], *proxy["command"]]
    assert argv[:2] == ["sandbox-gateway", "socket-proxy"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv[2:])
    assert args.listen == ["tls:0.0.0.0:2376"], "TLS alone: no plain listener"
    assert args.engine == "/var/run/docker.sock"
    assert f"{host}:{CERTS_IN_CONTAINER}:ro" in proxy["volumes"]
    files = {"tls_cert": "server.pem", "tls_key": "server-key.pem", "tls_client_ca": "ca.pem"}
    for option, name in files.items():
        assert str(getattr(args, option)) == f"{CERTS_IN_CONTAINER}/{name}"
        assert (host / name).is_file(), f"`certs` writes {name} for a host"
    assert args.image == ["mcp-code-executor:latest", "mcp-code-executor:data-science"]
    assert proxy["ports"] == [{"published": 2376, "target": 2376}]
    assert "/var/run/docker.sock:/var/run/docker.sock:ro" in proxy["volumes"]
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]


def _haproxy_check(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("BALANCER_BIND", "GW1_ADDR", "GW2_ADDR")}
    argv = [HAPROXY, "-c", "-f", str(HAPROXY_CFG)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env={**clean, **env}, check=False)


def test_haproxy_accepts_the_balancer_config_with_its_environment() -> None:
    checked = _haproxy_check(
        BALANCER_BIND="127.0.0.1:18080", GW1_ADDR="127.0.0.1:18001", GW2_ADDR="[::1]:18002"
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Configuration file is valid" in checked.stdout
    compose = _haproxy_check(BALANCER_BIND=":8080", GW1_ADDR="gateway-1:8000", GW2_ADDR="gateway-2:8000")
    assert compose.returncode == 0, "names resolved later, by Docker's DNS: " + compose.stderr
    unset = _haproxy_check()
    assert unset.returncode != 0, "the addresses come from the environment"


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for raw in text.splitlines():
        line = " ".join(raw.split("#", 1)[0].split())
        if not line:
            continue
        if raw[0].isspace():
            sections[current].append(line)
        else:
            current = line
            sections[current] = []
    return sections


def test_the_balancer_config_keeps_principals_on_a_replica_and_moves_them_off_a_dead_one() -> None:
    sections = _sections(HAPROXY_CFG.read_text())
    defaults, backend = sections["defaults"], sections["backend gateways"]
    for line in ("mode http", "timeout server 10m", "retries 1", "option redispatch", "http-reuse safe"):
        assert line in defaults, line
    assert any(line.startswith("timeout tunnel ") for line in defaults)
    assert "timeout client 10m" in defaults, "a streamed call's client side is as patient as the server's"
    for line in ("balance hdr(Authorization)", "hash-type consistent", "option httpchk GET /ready"):
        assert line in backend, line
    assert "http-check expect status 200" in backend
    assert [line for line in backend if line.startswith("server ")] == [
        'server gw-1 "${GW1_ADDR}"', 'server gw-2 "${GW2_ADDR}"',
    ]  # fmt: skip
    assert 'bind "${BALANCER_BIND}"' in sections["frontend mcp"]
    assert not any("http-buffer-request" in line for lines in sections.values() for line in lines)


def test_the_fleet_images_are_built_like_the_others_from_debian_packages() -> None:
    """`build-images --fleet`: a local base image per role with Debian's package, and a Dockerfile
    on top that fetches nothing when the package is there (and installs it on a registry's image)."""
    assert BASE_PACKAGES["haproxy"] == ("haproxy",) and BASE_PACKAGES["redis"] == ("redis-server",)
    for role, command in (("haproxy", "haproxy"), ("redis", "redis-server")):
        dockerfile = (FLEET / role / "Dockerfile").read_text()
        assert "ARG BASE_IMAGE=" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
        assert f"if ! command -v {command} >/dev/null; then" in dockerfile
        assert "\nUSER " in dockerfile and "USER root" not in dockerfile
