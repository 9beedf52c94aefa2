"""The quick-start compose stack, built offline and run on the local engine with Debian's docker-compose.

One stack per module under a unique project name: the images are built by `build-images`, the stack
comes up, answers MCP on its published port, and is checked from outside (`docker inspect`) and from
inside (`docker exec`). Its socket proxy is the project's own (`sandbox-gateway socket-proxy`, in an
image built from the gateway's). Taking it down must leave no container, network, volume or sandbox
behind. The production stack (docker-compose.full.yml) comes up too, with its web console.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import yaml

from gateway.auth.tokens import TokenStore
from gateway.setup.state import REPO_ROOT, SetupPaths
from gateway.uids import UidRange
from tests.e2e.conftest import mcp_client
from tests.support.compose_stack import (
    FRONTEND_IMAGE,
    GATEWAY_IMAGE,
    PROXY_IMAGE,
    Stack,
    build_images,
    clean_env,
    docker,
    env_of,
    give_to_gateway,
    inspect,
    need_compose,
    wait_healthy,
)
from tests.support.net import free_port

COMPOSE_FILE = REPO_ROOT / "compose" / "docker-compose.yml"
FULL_COMPOSE_FILE = REPO_ROOT / "compose" / "docker-compose.full.yml"
#: Not the default range, so a sandbox made at all shows that the proxy and the gateway got the same one.
SANDBOX_UIDS = UidRange.parse("2001000000-2001009999")


def _compose_env(paths: SetupPaths, project: str, port: int, secrets: Path, **extra: str) -> dict[str, str]:
    """docker-compose's environment for a stack of this test's: the host's engine, the images just
    built, the gateway published on loopback `port`."""
    return clean_env(
        paths.docker_socket,
        SGW_DOCKER_SOCKET=str(paths.docker_socket),
        DOCKER_GID=str(paths.docker_socket.stat().st_gid),
        SGW_GATEWAY_IMAGE=GATEWAY_IMAGE,
        SGW_PROXY_IMAGE=PROXY_IMAGE,
        SGW_SECRETS_DIR=str(secrets),
        SGW_SKILLS_DIR=str(REPO_ROOT / "skills"),
        SGW_PUBLISH=f"127.0.0.1:{port}",
        SGW_GATEWAY_ID=project,
        SGW_SANDBOX_UIDS=str(SANDBOX_UIDS),
        **extra,
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need_compose()
    paths = SetupPaths.from_env()
    build_images()

    secrets = tmp_path_factory.mktemp("secrets")
    token = TokenStore(secrets / "tokens.jsonl").create("alice", profile="default")
    give_to_gateway(secrets, secrets / "tokens.jsonl")  # the gateway (uid 10001) reads the tokens

    project = f"sgwdeploy{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = _compose_env(paths, project, port, secrets)
    running = Stack(project, env, f"http://127.0.0.1:{port}", token)
    try:
        running.compose("up", "-d", "--no-build")
        # The proxy's health check is a /_ping through it to the engine.
        for service in ("docker-proxy", "gateway"):
            wait_healthy(running, service)
        yield running
    finally:
        running.down()


def test_execute_bash_through_the_published_port(stack: Stack) -> None:
    """A real MCP client, a real token, the sandbox made by the containerised gateway through the proxy."""

    async def call() -> dict[str, Any]:
        async with mcp_client(f"{stack.base}/mcp", stack.token) as client:
            result = await client.call_tool(
                "execute_bash", {"command": "id -u; python3 -c 'import textstats; print(textstats.__name__)'"}
            )
            assert result.structured_content is not None, result
            return dict(result.structured_content)

    outcome = anyio.run(call)
    assert outcome["exit_code"] == 0, outcome
    uid, module = outcome["stdout"].split()
    assert int(uid) in SANDBOX_UIDS and module == "textstats", outcome
    assert httpx.get(f"{stack.base}/ready", timeout=10).json()["ready"] is True
    label = f"label=sandbox-gateway.gateway={stack.project}"
    names = docker("ps", "--format", "{{.Names}}", "--filter", label).stdout.split()
    owned = [name for name in names if not name.startswith("sgw-pool-")]  # the warm pool's are nobody's
    assert len(owned) == 1, "the sandbox is a sibling container on the host's engine"


def test_the_gateway_has_no_docker_socket_and_runs_read_only_as_non_root(stack: Stack) -> None:
    info = inspect("container", stack.container("gateway"))
    mounts = {mount["Destination"]: mount for mount in info["Mounts"]}
    assert not any("docker.sock" in (m.get("Source", "") + dest) for dest, m in mounts.items())
    assert mounts["/run/secrets/sandbox-gateway"]["RW"] is False
    assert mounts[str(REPO_ROOT / "skills")]["RW"] is False
    assert mounts["/var/log/sandbox-gateway"]["Type"] == "volume"
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert host["NanoCpus"] == 2_000_000_000
    assert host["Memory"] == 2 * 1024**3
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert info["Config"]["User"] == "10001:10001"
    assert {e.split("=", 1)[0]: e.split("=", 1)[1] for e in info["Config"]["Env"]}["DOCKER_HOST"] == (
        "tcp://docker-proxy:2375"
    )

    script = (
        "id -u; test -e /var/run/docker.sock && echo SOCKET; "
        "command -v docker || echo no-cli; touch /opt/x 2>/dev/null || echo read-only"
    )
    inside = stack.exec("gateway", "sh", "-c", script)
    assert inside.stdout.split() == ["10001", "no-cli", "read-only"], inside.stdout + inside.stderr
    audit = stack.exec("gateway", "cat", "/var/log/sandbox-gateway/audit.jsonl").stdout
    assert '"event":"exec.finish"' in audit, "the audit log is written to its volume"


def test_the_proxy_is_alone_on_an_internal_network_and_refuses_build(stack: Stack) -> None:
    proxy = inspect("container", stack.container("docker-proxy"))
    networks = set(proxy["NetworkSettings"]["Networks"])
    assert networks == {f"{stack.project}_docker-api"}
    assert inspect("network", f"{stack.project}_docker-api")["Internal"] is True
    assert proxy["HostConfig"]["PortBindings"] in ({}, None), "the proxy publishes nothing"
    assert proxy["Config"]["User"] == "65534:65534"
    assert proxy["HostConfig"]["ReadonlyRootfs"] is True and proxy["HostConfig"]["CapDrop"] == ["ALL"]
    assert proxy["Config"]["Entrypoint"][:2] == ["sandbox-gateway", "socket-proxy"]
    assert proxy["HostConfig"]["Init"] is True, "an init forwards SIGTERM to the proxy"
    assert [*proxy["Config"]["Entrypoint"], *proxy["Config"]["Cmd"]][2:] == [
        "--listen", "tcp:0.0.0.0:2375", "--engine", "/var/run/docker.sock",
        f"--mount-source={REPO_ROOT / 'skills'}", "--image=mcp-code-executor:latest",
        "--image=mcp-code-executor:data-science",
    ]  # fmt: skip
    gateway = inspect("container", stack.container("gateway"))
    assert env_of(proxy)["SGW_SANDBOX_UIDS"] == env_of(gateway)["SGW_SANDBOX_UIDS"] == str(SANDBOX_UIDS)
    gateway_networks = set(gateway["NetworkSettings"]["Networks"])
    assert gateway_networks == {f"{stack.project}_docker-api", f"{stack.project}_frontend"}
    assert inspect("network", f"{stack.project}_frontend")["Internal"] is False

    probe = (
        "import urllib.request, urllib.error\n"
        "for method, path in (('GET', '/_ping'), ('POST', '/build'), ('GET', '/volumes')):\n"
        "    request = urllib.request.Request('http://docker-proxy:2375' + path, method=method)\n"
        "    try:\n"
        "        print(urllib.request.urlopen(request, timeout=10).status)\n"
        "    except urllib.error.HTTPError as exc:\n"
        "        print(exc.code)\n"
    )
    statuses = stack.exec("gateway", "python3", "-c", probe)
    assert statuses.stdout.split() == ["200", "403", "403"], statuses.stdout + statuses.stderr


#: Run in the gateway's container: the body its broker sends for a sandbox, but privileged.
_PRIVILEGED_CREATE = """
import json, os, sys, urllib.error, urllib.request
from pathlib import Path
from typing import Any
from gateway.backend.create_body import create_body
from gateway.uids import UidRange
from policy import load_policy

name, skills = sys.argv[1:]
body = create_body(
    load_policy().profiles["default"].sandbox,
    uid=UidRange.parse(os.environ["SGW_SANDBOX_UIDS"]).pick(),
    image=os.environ["MCP_EXECUTOR_IMAGE"],
    labels={"sandbox-gateway.managed": "true", "sandbox-gateway.gateway": name},
    skills_path=Path(skills),
)
body["HostConfig"]["Privileged"] = True
request = urllib.request.Request(
    "http://docker-proxy:2375/v1.41/containers/create?name=" + name,
    data=json.dumps(body).encode(),
    headers={"Content-Type": "application/json"},
    method="POST",
)
try:
    print(urllib.request.urlopen(request, timeout=10).status)
except urllib.error.HTTPError as exc:
    print(exc.code, json.loads(exc.read())["message"])
"""


def test_the_proxy_refuses_a_privileged_create_from_the_gateway(stack: Stack) -> None:
    """A compromised gateway that asks the compose proxy for a privileged container gets 403, and nothing."""
    name = f"sgw-{uuid.uuid4().hex[:16]}"
    refused = stack.exec("gateway", "python3", "-c", _PRIVILEGED_CREATE, name, str(REPO_ROOT / "skills"))
    status, _, message = refused.stdout.strip().partition(" ")
    assert status == "403", refused.stdout + refused.stderr
    assert message.startswith("socket proxy refused (body-shape)") and "Privileged" in message, message
    assert docker("ps", "-aq", "--filter", f"name=^/{name}$").stdout.split() == []


def test_taking_the_stack_down_leaves_nothing_behind(stack: Stack) -> None:
    """The gateway removes its sandboxes on stop (promptly); `down -v` removes the rest, volume included."""
    started = time.monotonic()
    stack.compose("stop", "--timeout", "60", "gateway")
    assert time.monotonic() - started < 30, "SIGTERM stops the gateway; it does not wait for the kill"
    assert inspect("container", stack.container("gateway"))["State"]["ExitCode"] in (0, 143)
    assert stack.leftovers()["sandboxes"] == []
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "60")
    assert stack.leftovers() == {"containers": [], "networks": [], "volumes": [], "sandboxes": []}


@pytest.fixture(scope="module")
def full_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """docker-compose.full.yml with its web console, on loopback ports of its own."""
    paths = SetupPaths.from_env()
    build_images(frontend=True)
    work = tmp_path_factory.mktemp("full")
    secrets, tools = work / "secrets", work / "tools"
    secrets.mkdir()
    tools.mkdir()
    token = TokenStore(secrets / "tokens.jsonl").create("alice", profile="default")
    (work / "audit-hmac.key").write_bytes(os.urandom(32))
    give_to_gateway(secrets, secrets / "tokens.jsonl", work / "audit-hmac.key")
    tools.chmod(0o755)
    work.chmod(0o755)

    project = f"sgwfull{uuid.uuid4().hex[:10]}"
    port, console_port = free_port(), free_port()
    env = _compose_env(
        paths,
        project,
        port,
        secrets,
        SGW_FRONTEND_IMAGE=FRONTEND_IMAGE,
        SGW_TOOLS_DIR=str(tools),
        SGW_AUDIT_HMAC_KEY=str(work / "audit-hmac.key"),
        SGW_FRONTEND_PUBLISH=f"127.0.0.1:{console_port}",
    )
    running = Stack(
        project, env, f"http://127.0.0.1:{port}", token, FULL_COMPOSE_FILE, f"http://127.0.0.1:{console_port}"
    )
    try:
        running.compose("up", "-d", "--no-build")
        for service in ("docker-proxy", "gateway", "frontend"):
            wait_healthy(running, service)
        yield running
    finally:
        running.down()
    assert running.leftovers() == {"containers": [], "networks": [], "volumes": [], "sandboxes": []}


def test_the_full_stack_serves_the_web_console_on_loopback(full_stack: Stack) -> None:
    """The console's page loads over HTTP; it runs read-only, as its own non-root user, without
    capabilities, on the frontend network only, where it reaches the gateway and not the proxy."""
    page = httpx.get(f"{full_stack.console}/", timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "gradio" in page.text.lower(), page.text[:500]
    assert httpx.get(f"{full_stack.base}/ready", timeout=10).json()["ready"] is True

    info = inspect("container", full_stack.container("frontend"))
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert info["Config"]["User"] == "10002:10002"
    assert {b["HostIp"] for b in host["PortBindings"]["7860/tcp"]} == {"127.0.0.1"}
    assert set(info["NetworkSettings"]["Networks"]) == {f"{full_stack.project}_frontend"}
    assert env_of(info)["MCP_SERVER_URL"] == "http://gateway:8000/mcp"
    assert not any("docker.sock" in m.get("Source", "") for m in info["Mounts"])

    probe = (
        "import socket, urllib.request\n"
        "print(urllib.request.urlopen('http://gateway:8000/health', timeout=10).status)\n"
        "try:\n"
        "    socket.create_connection(('docker-proxy', 2375), timeout=5)\n"
        "    print('proxy-reached')\n"
        "except OSError:\n"
        "    print('no-proxy')\n"
        "import os; print(os.getuid()); open('/opt/x', 'w')\n"
    )
    inside = full_stack.exec("frontend", "python3", "-c", probe)
    assert inside.stdout.split() == ["200", "no-proxy", "10002"], inside.stdout + inside.stderr
    assert "Read-only file system" in inside.stderr

    # With the console in front, the gateway's DNS-rebinding guard still holds: it accepts the
    # console's own Host (gateway:8000) and refuses any other, with a valid token either way.
    rebind = (
        "import sys, urllib.error, urllib.request\n"
        "def post(host):\n"
        "    headers = {'Host': host, 'Authorization': 'Bearer ' + sys.argv[1],\n"
        "               'Content-Type': 'application/json',\n"
        "               'Accept': 'application/json, text/event-stream'}\n"
        "    request = urllib.request.Request('http://gateway:8000/mcp', b'{}', headers, method='POST')\n"
        "    try:\n"
        "        return urllib.request.urlopen(request, timeout=10).status\n"
        "    except urllib.error.HTTPError as exc:\n"
        "        return exc.code\n"
        "print(post('evil.example:8000'), post('gateway:8000'))\n"
    )
    statuses = full_stack.exec("frontend", "python3", "-c", rebind, full_stack.token)
    foreign, own = statuses.stdout.split()
    assert foreign in ("403", "421"), statuses.stdout + statuses.stderr
    assert own not in ("401", "403", "421"), "the console's own Host reaches the MCP endpoint"


@pytest.mark.parametrize(
    "files",
    [
        pytest.param(("docker-compose.full.yml",), id="production"),
        pytest.param(("docker-compose.yml", "docker-compose.dind.yml"), id="docker-in-docker"),
    ],
)
def test_the_other_variants_are_valid_compose_files_that_keep_the_proxy_in_front(
    files: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`docker-compose config` accepts them; the gateway mounts no socket and talks to the proxy only."""
    tmp = tmp_path_factory.mktemp("variant")
    (tmp / "key").write_bytes(os.urandom(32))
    for name in ("skills", "tools"):
        (tmp / name).mkdir()
    env = clean_env(
        None,
        DOCKER_GID="999",
        SGW_SKILLS_DIR=str(tmp / "skills"),
        SGW_TOOLS_DIR=str(tmp / "tools"),
        SGW_AUDIT_HMAC_KEY=str(tmp / "key"),
    )
    argv = ["docker-compose", "-p", "variant"]
    for name in files:
        argv += ["-f", str(REPO_ROOT / "compose" / name)]
    proc = subprocess.run([*argv, "config"], capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    gateway = config["services"]["gateway"]
    assert gateway["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"
    assert not any("docker.sock" in volume for volume in gateway["volumes"])
    assert gateway["read_only"] is True and gateway["user"] == "10001:10001"
    assert set(gateway["networks"]) == {"docker-api", "frontend"}
    assert config["networks"]["docker-api"]["internal"] is True
    proxy = config["services"]["docker-proxy"]
    assert set(proxy["networks"]) == {"docker-api"}
    assert "ports" not in proxy and proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]
    mounts = [f"--mount-source={tmp / 'skills'}"]
    if "--tools-dir" in " ".join(gateway["command"]):
        mounts.append(f"--mount-source={tmp / 'tools'}")
    images = ["--image=mcp-code-executor:latest", "--image=mcp-code-executor:data-science"]
    assert proxy["command"] == [*mounts, *images], "every image the shipped policy names"
    assert proxy["environment"]["SGW_SANDBOX_UIDS"] == gateway["environment"]["SGW_SANDBOX_UIDS"]
    if "frontend" in config["services"]:
        frontend = config["services"]["frontend"]
        assert frontend["ports"] == ["127.0.0.1:7860:7860/tcp"], "published on loopback by default"
        assert set(frontend["networks"]) == {"frontend"} and frontend["read_only"] is True
        assert frontend["cap_drop"] == ["ALL"] and frontend["user"] == "10002:10002"
        assert frontend["environment"]["MCP_SERVER_URL"] == "http://gateway:8000/mcp"
    if "dind" in config["services"]:
        proxy_volumes = config["services"]["docker-proxy"]["volumes"]
        assert "/dev/null:/var/run/docker.sock:ro" in proxy_volumes, "the host engine is out of reach"
        assert "--engine=/var/run/dind/docker.sock" in proxy["entrypoint"]
        assert config["services"]["dind"]["privileged"] is True
