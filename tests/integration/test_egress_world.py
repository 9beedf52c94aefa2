"""The egress tests' outside world (`tests.support.egress_world`), seen from the host's namespace,
where the egress proxy runs: its servers answer over the veth pair with the test CA's certificate,
log every handshake and request, serve a package index pip accepts, answer DNS (rebind.test
alternating between a public and a private address), and leave nothing behind."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.egress_world import (
    DNS_IP,
    HOST_IP,
    NETNS,
    PRIVATE_IP,
    PUBLIC_IP,
    PUBLIC_IP_2,
    World,
    world,
)
from tests.support.egress_world_dns import AAAA, NOERROR, NXDOMAIN, exchange, query
from tests.support.waiting import eventually

#: Runs pip with the world's names resolved in-process (the host's /etc/hosts stays as it is).
PIP_WITH_NAMES = """
import json, socket, sys
names = json.loads(sys.argv[1])
real = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    return real(names.get(host, [host])[0] if isinstance(host, str) else host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def the_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with world(tmp_path_factory.mktemp("world")) as started:
        yield started


def curl(the_world: World, url: str, *args: str, resolve: str | None = None) -> str:
    argv = ["curl", "-sS", "--fail", "--max-time", "20", "--noproxy", "*", "--cacert", str(the_world.ca_path)]
    if resolve is not None:
        argv += ["--resolve", resolve]
    result = subprocess.run([*argv, *args, url], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def pip(the_world: World, *args: str) -> subprocess.CompletedProcess[str]:
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE win over pip's --cert: drop them
    unwanted = ("proxy", "pip_", "ca_bundle")
    env = {key: value for key, value in os.environ.items() if not any(u in key.lower() for u in unwanted)}
    argv = [sys.executable, "-c", PIP_WITH_NAMES, json.dumps(the_world.names), *args]
    argv += ["--isolated", "--no-cache-dir", "--disable-pip-version-check"]
    argv += ["--index-url", "https://pypi.test/simple/", "--cert", str(the_world.ca_path)]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=120)


def test_https_verifies_against_the_ca_and_echoes_host_and_sni(the_world: World) -> None:
    body = curl(the_world, "https://good.test/hello?x=1", resolve=f"good.test:443:{PUBLIC_IP}")
    assert body == f"world: host=good.test sni=good.test path=/hello?x=1 local={PUBLIC_IP}\n"
    for name in ("a.good.test", "deep.a.good.test"):
        echo = curl(the_world, f"https://{name}/", resolve=f"{name}:443:{PUBLIC_IP}")
        assert f"sni={name} " in echo
    context = ssl.create_default_context(cafile=str(the_world.ca_path))
    with (
        socket.create_connection((PUBLIC_IP_2, 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="evil.test") as tls,
    ):
        tls.sendall(b"GET /p HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n")
        answer = b"".join(iter(lambda: tls.recv(4096), b""))
    assert answer.endswith(f"world: host=evil.test sni=evil.test path=/p local={PUBLIC_IP_2}\n".encode())


def test_plain_http_and_the_private_address_answer(the_world: World) -> None:
    body = curl(the_world, f"http://{PUBLIC_IP_2}/x", "-H", "Host: evil.test")
    assert body == f"world: host=evil.test sni=- path=/x local={PUBLIC_IP_2}\n"
    plain = curl(the_world, f"http://{PRIVATE_IP}/")
    assert plain == f"world: host={PRIVATE_IP} sni=- path=/ local={PRIVATE_IP}\n"
    private = curl(the_world, "https://private.test/", resolve=f"private.test:443:{PRIVATE_IP}")
    assert private == f"world: host=private.test sni=private.test path=/ local={PRIVATE_IP}\n"
    assert curl(the_world, f"https://{PRIVATE_IP}/").endswith(f"sni=- path=/ local={PRIVATE_IP}\n")


def test_bytes_and_post(the_world: World, tmp_path: Path) -> None:
    url = "https://files.test/bytes/1000"
    assert len(curl(the_world, url, resolve=f"files.test:443:{PUBLIC_IP}")) == 1000
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    upload = ["--data-binary", f"@{big}", "-H", "Content-Type: application/octet-stream"]
    posted = curl(the_world, "https://good.test/up", *upload, resolve=f"good.test:443:{PUBLIC_IP}")
    assert posted == f"world: received {3 * 1024 * 1024} bytes\n"
    chunked = curl(the_world, f"http://{PUBLIC_IP}/up", *upload, "-H", "Transfer-Encoding: chunked")
    assert chunked == f"world: received {3 * 1024 * 1024} bytes\n"


def test_hits_are_logged_with_failed_handshakes(the_world: World) -> None:
    the_world.clear_hits()
    curl(the_world, "https://other.test/logged", resolve=f"other.test:443:{PUBLIC_IP}")
    assert the_world.hits_for(kind="request", sni="other.test", host="other.test", path="/logged")
    assert the_world.hits_for(kind="tls", addr=PUBLIC_IP, port=443, sni="other.test", error=None)
    context = ssl.create_default_context(cafile=str(the_world.ca_path))
    with (
        pytest.raises(ssl.SSLCertVerificationError),
        socket.create_connection((PUBLIC_IP_2, 443), timeout=10) as raw,
    ):
        context.wrap_socket(raw, server_hostname="wrong.example")
    failed = eventually(lambda: the_world.hits_for(kind="tls", sni="wrong.example"), timeout_s=5)
    assert failed[0]["addr"] == PUBLIC_IP_2
    assert failed[0]["error"]
    assert not the_world.hits_for(kind="request", sni="wrong.example")
    with socket.create_connection((PUBLIC_IP, 80), timeout=10) as raw:
        raw.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        assert b"400" in b"".join(iter(lambda: raw.recv(4096), b""))
    assert the_world.hits_for(kind="request", addr=PUBLIC_IP, port=80, error="unparsable request")
    assert the_world.hits_for(addr=PRIVATE_IP) == []


def test_pip_downloads_and_installs_from_the_index(the_world: World, tmp_path: Path) -> None:
    index = curl(the_world, "https://pypi.test/simple/sgw-hello/", resolve=f"pypi.test:443:{PUBLIC_IP}")
    assert f"#sha256={the_world.wheel_sha256}" in index
    downloaded = pip(the_world, "download", "--no-deps", "-d", str(tmp_path / "dl"), the_world.PACKAGE)
    assert downloaded.returncode == 0, downloaded.stdout + downloaded.stderr
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["sgw_hello-1.0-py3-none-any.whl"]
    installed = pip(the_world, "install", "--no-deps", "--target", str(tmp_path / "t"), the_world.PACKAGE)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    greeting = subprocess.run(
        [sys.executable, "-c", "import sgw_hello; print(sgw_hello.GREETING)"],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "t")}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert greeting.stdout == "hello from the test index\n"
    assert the_world.hits_for(sni="pypi.test", path="/packages/sgw_hello-1.0-py3-none-any.whl")


def test_hosts_file(the_world: World) -> None:
    lines = the_world.hosts_file().read_text().splitlines()
    assert f"{PUBLIC_IP} deep.a.good.test" in lines
    assert {f"{PUBLIC_IP} mixed.test", f"{PRIVATE_IP} mixed.test"} <= set(lines)
    assert the_world.names["meta.test"] == ["169.254.169.254"]


def test_dns_rebind_alternates_with_ttl_0_and_resets(the_world: World) -> None:
    the_world.reset_dns()
    the_world.clear_dns_queries()
    answers = [query("rebind.test", ident=n) for n in range(4)]
    assert [q["answer"] for q in the_world.dns_queries()] == [PUBLIC_IP, PRIVATE_IP] * 2
    assert [a.answers for a in answers] == [[(1, 0, PUBLIC_IP)], [(1, 0, PRIVATE_IP)]] * 2
    assert [a.ident for a in answers] == [0, 1, 2, 3]
    assert all(a.flags == 0x8000 | 0x0400 | 0x0100 | NOERROR for a in answers)  # QR AA RD
    assert query("rebind.test", AAAA).answers == []  # not an A query: the alternation stays
    assert query("REBIND.test", rd=False, edns=True).flags == 0x8000 | 0x0400
    assert query("rebind.test").addresses == [PRIVATE_IP]
    the_world.reset_dns()
    assert [query("rebind.test").addresses for _ in range(3)] == [[PUBLIC_IP], [PRIVATE_IP], [PUBLIC_IP]]


def test_dns_good_empty_types_nxdomain_and_the_query_log(the_world: World) -> None:
    the_world.clear_dns_queries()
    for _ in range(2):
        assert query("dns-good.test", edns=True).answers == [(1, 0, PUBLIC_IP)]
    empty = query("dns-good.test", AAAA)
    assert (empty.rcode, empty.answers) == (NOERROR, [])
    assert (query("dns-good.test", 16).rcode, query("rebind.test", 65).answers) == (NOERROR, [])
    for name in ("nothing.test", "good.test", "x.rebind.test"):
        missing = query(name)
        assert (missing.rcode, missing.answers, missing.flags & 0x8400) == (NXDOMAIN, [], 0x8400)
    assert exchange(b"\x12\x34 garbage", timeout_s=0.5) is None
    as_reply = query("dns-good.test").question
    assert exchange(b"\x00\x01\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00" + as_reply, timeout_s=0.5) is None
    assert query("dns-good.test").addresses == [PUBLIC_IP]
    queries = the_world.dns_queries()
    good = {"name": "dns-good.test", "qtype": "A", "answer": PUBLIC_IP, "rcode": "NOERROR", "client": HOST_IP}
    assert queries[:3] == [good, good, {**good, "qtype": "AAAA", "answer": None}]
    assert [(q["name"], q["qtype"], q["rcode"]) for q in queries[3:]] == [
        ("dns-good.test", "TXT", "NOERROR"), ("rebind.test", "HTTPS", "NOERROR"),
        ("nothing.test", "A", "NXDOMAIN"), ("good.test", "A", "NXDOMAIN"), ("x.rebind.test", "A", "NXDOMAIN"),
        ("dns-good.test", "A", "NOERROR"), ("dns-good.test", "A", "NOERROR"),
    ]  # fmt: skip


def test_https_verifies_for_the_dns_names(the_world: World) -> None:
    for name in ("rebind.test", "dns-good.test"):
        body = curl(the_world, f"https://{name}/", resolve=f"{name}:443:{PUBLIC_IP}")
        assert body == f"world: host={name} sni={name} path=/ local={PUBLIC_IP}\n"
    assert f"inet {DNS_IP}/24" in ip("-n", NETNS, "addr", "show", "sgwww0").stdout


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def network_left() -> list[str]:
    """What of the world's network remains in the host's namespace."""
    left = []
    if NETNS in ip("netns", "list").stdout.split():
        left.append(f"netns {NETNS}")
    if ip("link", "show", "sgwwh0").returncode == 0:
        left.append("link sgwwh0")
    if ip("route", "show", PRIVATE_IP).stdout.strip():
        left.append(f"route {PRIVATE_IP}")
    return left


def test_stop_leaves_nothing_and_start_survives_leftovers(the_world: World, tmp_path: Path) -> None:
    """Last in the module: it stops the module's world."""
    process = the_world._process
    assert process is not None
    the_world.stop()
    the_world.stop()
    assert network_left() == []
    assert process.poll() is not None
    stale, fresh = World(tmp_path / "stale"), World(tmp_path / "fresh")
    stale.start()  # as if a killed run had left it: its lock ends with its process
    assert stale._lock is not None
    stale._lock.close()
    stale._lock = None
    fresh.start()
    assert stale._process is not None and stale._process.wait(timeout=10) is not None
    assert curl(fresh, f"http://{PUBLIC_IP}/again").startswith("world: host=")
    fresh.stop()
    stale.stop()
    assert network_left() == []
