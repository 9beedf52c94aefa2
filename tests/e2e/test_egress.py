"""Egress, end to end: a real MCP client, the real gateway, the real engine through the socket proxy,
the gateway's real egress proxy (two Squids), and an outside world of the suite's own (a network
namespace with HTTP and HTTPS servers, names the proxy resolves from its hosts file).

Profile `web` allows a few names of that world; `default` has no egress. Each refusal is checked
three ways: the command sees it, the world saw nothing, and the audit log has its event.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import mcp_client
from tests.e2e.egress_gateways import bash, egress_gateway, outside_world, with_ca
from tests.support import audit_events
from tests.support.egress_world import PRIVATE_IP, PUBLIC_IP, PUBLIC_IP_2, World
from tests.support.gateway_process import Gateway
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

ALLOW = [
    "good.test:443", "*.good.test:443", "good.test:80", "pypi.test:443", "localhost.test:443",
    "private.test:443", "meta.test:80", "mixed.test:443", "rebind.test:443", "dns-good.test:443",
]  # fmt: skip
#: Per sandbox, shaped by the proxy (SECURITY.md guarantee 65).
RATE = 256 * 1024


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with outside_world(tmp_path_factory.mktemp("world")) as outside:
        yield outside


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, world: World, backend: Any) -> Iterator[Gateway]:
    egress = {"allow": ALLOW, "max_connections": 3, "download_bytes_per_s": RATE}
    principals = {"alice": "web", "bob": "web", "carol": "default"}
    with egress_gateway(tmp_path_factory.mktemp("egress"), world, egress, principals, backend) as gw:
        yield gw


def connections(gateway: Gateway, **match: Any) -> list[dict[str, Any]]:
    return audit_events(gateway.audit_log, "egress.connection", **match)


def one_connection(gateway: Gateway, **match: Any) -> dict[str, Any]:
    found = eventually(lambda: connections(gateway, **match), timeout_s=15)
    return found[-1]


async def test_an_allowed_name_works_with_curl_python_and_pip(gateway: Gateway, world: World) -> None:
    world.clear_hits()
    out = await with_ca(
        gateway, "alice", world,
        "curl -sS --cacert ca.pem https://good.test/hello; echo; curl -sS http://good.test/plain; echo; "
        "python3 -c \"import ssl, urllib.request; print(urllib.request.urlopen('https://a.good.test/py', "
        "context=ssl.create_default_context(cafile='ca.pem')).read().decode())\"; "
        "pip install -q --no-cache-dir --disable-pip-version-check --target pkgs --cert ca.pem "
        "--index-url https://pypi.test/simple/ sgw-hello && PYTHONPATH=pkgs python3 -c "
        "'import sgw_hello; print(sgw_hello.GREETING)'",
    )  # fmt: skip
    assert out["exit_code"] == 0, out
    stdout = out["stdout"]
    assert f"host=good.test sni=good.test path=/hello local={PUBLIC_IP}" in stdout
    assert "host=good.test sni=- path=/plain" in stdout
    assert "host=a.good.test sni=a.good.test path=/py" in stdout
    assert "hello from the test index" in stdout
    assert out["egress_refused"] == []
    event = one_connection(gateway, principal="alice", dest_host="good.test", dest_port=443)
    assert event["decision"]["result"] == "allow" and event["egress"]["rule"] == "good.test:443"
    assert event["egress"]["sni"] == "good.test" and event["egress"]["server_address"] == PUBLIC_IP
    assert event["egress"]["bytes_up"] > 0 and event["egress"]["bytes_down"] > 0
    assert event["actor"]["tenant"] and event["decision"]["profile"] == "web"
    assert event["outcome"]["duration_ms"] >= 0
    wild = one_connection(gateway, principal="alice", dest_host="a.good.test")
    assert wild["egress"]["rule"] == "*.good.test:443"
    one_connection(gateway, principal="alice", dest_host="pypi.test", egress_rule="pypi.test:443")


REFUSALS = [
    # (command, the rule in the audit event, what the command prints)
    ("curl -sS --cacert ca.pem https://evil.test/", "not-allowed", "CONNECT tunnel failed, response 403"),
    ("curl -sS http://evil.test/x", "not-allowed", "evil.test:80 is not in the allow-list"),
    (f"curl -sS --cacert ca.pem https://{PUBLIC_IP}/", "ip-literal", "response 403"),
    ("curl -sS --cacert ca.pem https://localhost.test/", "blocked-address", "response 403"),
    ("curl -sS --cacert ca.pem https://private.test/", "blocked-address", "response 403"),
    ("curl -sS http://meta.test/latest/meta-data/", "blocked-address", "rule: blocked-address"),
    ("curl -sS --cacert ca.pem https://mixed.test/", "blocked-address", "response 403"),
    (
        "curl -sS --cacert ca.pem --connect-to evil.test:443:good.test:443 https://evil.test/",
        "sni-mismatch",
        "curl: (35)",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "rule", "printed"), REFUSALS, ids=[r[1] + "-" + r[0].split()[-1] for r in REFUSALS]
)
async def test_a_refused_connection_fails_reaches_nothing_and_is_audited(
    gateway: Gateway, world: World, command: str, rule: str, printed: str
) -> None:
    world.clear_hits()
    before = len(connections(gateway, principal="alice", egress_rule=rule))
    out = await with_ca(gateway, "alice", world, command)
    assert out["exit_code"] != 0 or "403" in out["stdout"], out
    assert printed in out["stdout"] + out["stderr"], out
    assert any(f"(rule: {rule})" in line for line in out["egress_refused"]), out
    eventually(lambda: len(connections(gateway, principal="alice", egress_rule=rule)) > before, timeout_s=15)
    event = connections(gateway, principal="alice", egress_rule=rule)[-1]
    assert event["decision"]["result"] == "deny" and event["outcome"]["status"] == "rejected"
    assert event["decision"]["reasons"] and "egress refused" in event["decision"]["reasons"][0]
    assert [hit for hit in world.hits() if hit.get("addr") in (PRIVATE_IP, PUBLIC_IP_2)] == []
    if rule == "sni-mismatch":
        assert world.hits_for(sni="evil.test") == [], "the mismatched hello never left the proxy"


DIRECT = r"""
import socket
targets = [("198.51.100.10", 443), ("198.51.100.10", 80), ("10.213.0.1", 22), ("10.213.0.1", 3129),
           ("192.0.2.2", 22), ("169.254.169.254", 80), ("10.213.0.254", 53), ("8.8.8.8", 53)]
for host, port in targets:
    try:
        socket.create_connection((host, port), timeout=2).close()
        print("OPEN", host, port)
    except OSError as exc:
        print("closed", host, port, type(exc).__name__)
try:
    print("RESOLVED", socket.gethostbyname("good.test"))
except OSError:
    print("no dns")
print("ifaces", sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]))
"""


async def test_direct_connections_bypassing_the_proxy_fail(gateway: Gateway, world: World) -> None:
    world.clear_hits()
    out = await bash(gateway, "alice", f"python3 - <<'EOF'\n{DIRECT}\nEOF")
    assert out["exit_code"] == 0, out
    assert "OPEN" not in out["stdout"], out["stdout"]
    assert "no dns" in out["stdout"] and "RESOLVED" not in out["stdout"]
    assert "ifaces ['eth0', 'lo']" in out["stdout"]
    assert world.hits() == [], "nothing reached the world directly"


OWN_ADDRESS = (
    'python3 -c "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); '
    "s.connect(('10.213.0.1', 9)); print(s.getsockname()[0])\""
)


async def test_sandboxes_on_the_egress_network_cannot_reach_each_other(gateway: Gateway) -> None:
    bob = (await bash(gateway, "bob", OWN_ADDRESS))["stdout"].strip()
    alice = (await bash(gateway, "alice", OWN_ADDRESS))["stdout"].strip()
    assert bob.startswith("10.213.0.") and alice.startswith("10.213.0.") and bob != alice
    # A closed port answers with a reset when packets pass; between sandboxes they are dropped.
    probe = f"python3 -c \"import socket; socket.create_connection(('{bob}', 8000), timeout=3)\""
    out = await bash(gateway, "alice", probe)
    assert out["exit_code"] != 0 and "timed out" in out["stderr"], out


async def test_a_profile_without_egress_still_has_only_loopback(gateway: Gateway) -> None:
    out = await bash(
        gateway,
        "carol",
        "cat /proc/net/dev; env | grep -i proxy; curl -sS -m 3 http://10.213.0.1:3128/ ; true",
    )
    lines = [line.split(":")[0].strip() for line in out["stdout"].splitlines()[2:] if ":" in line]
    assert lines == ["lo"], out
    assert "proxy=" not in out["stdout"].lower()


async def test_max_connections_per_sandbox_refuses_the_one_too_many(gateway: Gateway) -> None:
    code = r"""
import socket
held, answers = [], []
for i in range(4):
    s = socket.create_connection(("10.213.0.1", 3128), timeout=5)
    s.sendall(b"CONNECT good.test:443 HTTP/1.1\r\nHost: good.test:443\r\n\r\n")
    answers.append(s.recv(4096).decode(errors="replace").splitlines()[0])
    held.append(s)
print(answers)
"""
    out = await bash(gateway, "alice", f"python3 - <<'EOF'\n{code}\nEOF")
    answers = json.loads(out["stdout"].replace("'", '"'))
    assert answers[:3] == ["HTTP/1.1 200 Connection established"] * 3, out
    assert answers[3] == "HTTP/1.1 403 Forbidden", out
    one_connection(gateway, principal="alice", egress_rule="max-connections")


async def test_sandbox_info_shows_the_allow_list_in_force(gateway: Gateway) -> None:
    async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
        info = (await client.call_tool("sandbox_info", {})).structured_content
    assert info is not None and info["network"] == "egress"
    assert info["egress"]["allow"] == ALLOW and info["egress"]["max_connections"] == 3
    async with mcp_client(gateway.url, gateway.tokens["carol"]) as client:
        other = (await client.call_tool("sandbox_info", {})).structured_content
    assert other is not None and other["network"] == "none" and other["egress"] is None


def test_the_proxy_runs_unprivileged(gateway: Gateway) -> None:
    pids = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    squids = []
    for pid in pids:
        try:
            cmd = (pid / "cmdline").read_bytes().split(b"\0")
            status = (pid / "status").read_text()
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"squid") and gateway.gateway_id.encode() in b" ".join(cmd):
            squids.append(status)
    assert len(squids) >= 2, "front and tls run"
    for status in squids:
        uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1:]
        capeff = next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1]
        assert "0" not in uid and int(capeff, 16) == 0, status
    assert shutil.which("squid") or Path("/usr/sbin/squid").exists()


async def test_a_name_the_proxy_resolves_by_dns_works_and_a_rebinding_one_is_cut(
    gateway: Gateway, world: World
) -> None:
    """rebind.test answers a public address to the first query and a private one to the next (TTL 0):
    front checks the first and lets the CONNECT through; the tls stage, which connects, resolves
    again, gets the private one and closes. The private server never sees a byte."""
    world.reset_dns()
    world.clear_hits()
    good = await with_ca(gateway, "alice", world, "curl -sS --cacert ca.pem https://dns-good.test/dns")
    assert "host=dns-good.test sni=dns-good.test" in good["stdout"], good
    out = await with_ca(gateway, "alice", world, "curl -sS --cacert ca.pem https://rebind.test/")
    assert out["exit_code"] != 0 and "curl: (35)" in out["stderr"], out
    assert [q["answer"] for q in world.dns_queries() if q["name"] == "rebind.test" and q["qtype"] == "A"][
        :2
    ] == [
        PUBLIC_IP,
        PRIVATE_IP,
    ], "front and the tls stage each asked once, and got different answers"
    assert world.hits_for(sni="rebind.test") == [] and world.hits_for(addr=PRIVATE_IP) == []
    event = one_connection(gateway, principal="alice", dest_host="rebind.test")
    assert event["decision"]["result"] == "deny" and event["egress"]["rule"] == "blocked-address"


async def test_downloads_are_shaped_to_the_profiles_rate(gateway: Gateway, world: World) -> None:
    """2 MiB at 256 KiB/s: the transfer completes, no faster than the rate allows (plus its one
    bucket of burst)."""
    size = 2 * 1024 * 1024
    out = await with_ca(
        gateway, "alice", world,
        f"curl -sS --cacert ca.pem -o /dev/null -w '%{{size_download}} %{{speed_download}}' https://good.test/bytes/{size}",
    )  # fmt: skip
    assert out["exit_code"] == 0, out
    downloaded, speed = out["stdout"].split()
    assert int(downloaded) == size
    assert float(speed) <= RATE * 1.5, f"{float(speed):.0f} B/s is above the profile's {RATE} B/s"
