"""The outside world of the egress tests: servers in their own network namespace, which the egress
proxy (in the host's namespace) reaches and sandboxes never reach directly.

Namespace `sgw-world`, joined to the host's by a veth pair: `sgwwh0` (198.51.100.1/24) on the host,
`sgwww0` in the world with 198.51.100.10 and .11 (public servers) and 10.1.2.3/32 (a private one,
routed from the host so that only policy keeps a proxy from it). In the world, HTTP on :80 and HTTPS
on :443 of each address (`egress_world_server`), with one certificate from a test CA for every name
of `NAMES`. `World.hosts_file()` writes those names in the format of Squid's `hosts_file`. DNS on
198.51.100.53:53 (`egress_world_dns`) knows only rebind.test (alternately .10 and 10.1.2.3, for DNS
rebinding) and dns-good.test (.10); it logs every query (`World.dns_queries()`).

Needs root (`ip netns`). Creating the world removes what a killed earlier run left behind.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.egress_world_dns import DNS_GOOD_NAME, DNS_IP, REBIND_NAME, reset_dns
from tests.support.egress_world_server import PROJECT, WHEEL_NAME, build_wheel
from tests.support.processes import end
from tests.support.waiting import EventuallyFailed, eventually

__all__ = ["DNS_IP", "HOST_IP", "NAMES", "NETNS", "PRIVATE_IP", "PUBLIC_IP", "PUBLIC_IP_2", "World", "world"]

NETNS = "sgw-world"
HOST_LINK, WORLD_LINK = "sgwwh0", "sgwww0"
HOST_IP, PUBLIC_IP, PUBLIC_IP_2, PRIVATE_IP = "198.51.100.1", "198.51.100.10", "198.51.100.11", "10.1.2.3"
#: What each test name resolves to (through `World.hosts_file()`); mixed.test has two addresses.
NAMES: dict[str, list[str]] = {
    **{name: [PUBLIC_IP] for name in ("pypi.test", "files.test", "good.test", "a.good.test")},
    **{name: [PUBLIC_IP] for name in ("deep.a.good.test", "other.test")},
    "evil.test": [PUBLIC_IP_2],
    "private.test": [PRIVATE_IP],
    "localhost.test": ["127.0.0.1"],
    "meta.test": ["169.254.169.254"],
    "mixed.test": [PUBLIC_IP, PRIVATE_IP],
}
#: deep.a.good.test as well: a wildcard covers one label only.
_CERT_NAMES = (
    *("pypi.test", "files.test", "good.test", "*.good.test", "deep.a.good.test", "other.test"),
    *("evil.test", "private.test", "localhost.test", "meta.test", "mixed.test", REBIND_NAME, DNS_GOOD_NAME),
)
_START_TIMEOUT_S = 30.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def _remove_network() -> None:
    """Remove the namespace (ending what still runs in it), the veth pair and the host route."""
    pids = _ip("netns", "pids", NETNS, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)
    _ip("netns", "del", NETNS, check=False)
    _ip("link", "del", HOST_LINK, check=False)
    _ip("route", "del", f"{PRIVATE_IP}/32", check=False)


def _make_network() -> None:
    _remove_network()
    _ip("netns", "add", NETNS)
    _ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", WORLD_LINK, "netns", NETNS)
    _ip("addr", "add", f"{HOST_IP}/24", "dev", HOST_LINK)
    _ip("link", "set", HOST_LINK, "up")
    for address in (f"{PUBLIC_IP}/24", f"{PUBLIC_IP_2}/24", f"{DNS_IP}/24", f"{PRIVATE_IP}/32"):
        _ip("-n", NETNS, "addr", "add", address, "dev", WORLD_LINK)
    _ip("-n", NETNS, "link", "set", WORLD_LINK, "up")
    _ip("-n", NETNS, "link", "set", "lo", "up")
    _ip("-n", NETNS, "route", "add", "default", "via", HOST_IP)
    _ip("route", "add", f"{PRIVATE_IP}/32", "via", PUBLIC_IP, "dev", HOST_LINK)


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None, signer: Any
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), False)
    )


def _make_pki(directory: Path) -> str:
    """Write ca.pem, server.pem and server-key.pem; the CA's PEM text."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _certificate("sandbox-gateway egress test CA", ca_key, None, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in _CERT_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in (PUBLIC_IP, PUBLIC_IP_2, PRIVATE_IP)]
    server = (
        _certificate("egress test world", key, ca, ca_key)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem = ca.public_bytes(serialization.Encoding.PEM).decode()
    (directory / "ca.pem").write_text(ca_pem)
    (directory / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file = directory / "server-key.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_pem


_LOCK = "/run/lock/sandbox-gateway-egress-world.lock"


class World:
    """The world's network, PKI and servers; its files live in `workdir` (made if missing)."""

    PACKAGE = PROJECT

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ca_path = workdir / "ca.pem"
        self.hosts_path = workdir / "hosts"
        self.log_path = workdir / "hits.jsonl"
        self.dns_log_path, self._dns_reset = workdir / "dns.jsonl", workdir / "dns-reset"
        self.wheel_path = workdir / WHEEL_NAME
        self.names = {name: list(addresses) for name, addresses in NAMES.items()}
        self.ca_pem = ""
        self.wheel_sha256 = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Make the network, the PKI and the wheel, start the servers and wait until HTTPS answers on
        every address (RuntimeError naming the servers' output if not within 30 s). There is one
        world per host: a world started by another test process is waited for (a lock held until stop)."""
        lock = open(_LOCK, "w")  # noqa: SIM115 - held until stop()
        fcntl.flock(lock, fcntl.LOCK_EX)
        self._lock: TextIO | None = lock
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca_pem = _make_pki(self.workdir)
        wheel = build_wheel()
        self.wheel_path.write_bytes(wheel)
        self.wheel_sha256 = hashlib.sha256(wheel).hexdigest()
        self.hosts_file()
        config = self.workdir / "world.json"
        config.write_text(
            json.dumps({
                "cert": str(self.workdir / "server.pem"), "key": str(self.workdir / "server-key.pem"),
                "log": str(self.log_path), "wheel": str(self.wheel_path),
                "ports": {"http": 80, "https": 443},
                "dns": {"address": DNS_IP, "port": 53, "log": str(self.dns_log_path),
                        "reset": str(self._dns_reset)},
            })
        )  # fmt: skip
        self.log_path.write_text("")
        self.dns_log_path.write_text("")
        self._dns_reset.unlink(missing_ok=True)
        _make_network()
        output = self.workdir / "server.log"
        with output.open("wb") as out:
            self._process = subprocess.Popen(
                ["ip", "netns", "exec", NETNS, sys.executable, "-m", "tests.support.egress_world_server",
                 str(config)],
                cwd=Path(__file__).resolve().parents[2], stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        try:
            self._wait_serving(output)
        except BaseException:
            self.stop()
            raise
        self.clear_hits()

    def _wait_serving(self, output: Path) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_path))
        process = self._process
        assert process is not None

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"the world's servers exited ({process.returncode}): {output.read_text()}")
            for address in (PUBLIC_IP, PUBLIC_IP_2, PRIVATE_IP):
                with (
                    socket.create_connection((address, 443), timeout=2) as raw,
                    context.wrap_socket(raw, server_hostname="good.test") as tls,
                ):
                    tls.sendall(b"GET /ready HTTP/1.1\r\nHost: good.test\r\nConnection: close\r\n\r\n")
                    if not tls.recv(64).startswith(b"HTTP/1.1 200"):
                        return False
            return True

        try:
            eventually(up, timeout_s=_START_TIMEOUT_S, interval_s=0.05, retry_on=(OSError,))
        except EventuallyFailed as exc:
            raise RuntimeError(
                f"the world's HTTPS did not answer within {_START_TIMEOUT_S:g} s ({exc}); "
                f"server output: {output.read_text()[-2000:]}"
            ) from exc

    def stop(self) -> None:
        """End the servers and remove the namespace, the veth pair and the route; idempotent."""
        if self._process is not None:
            end(self._process, grace_s=5)
            self._process = None
        _remove_network()
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.close()  # releases the lock

    def hosts_file(self) -> Path:
        """Write the names (one line an address) in hosts format; the file's path."""
        lines = [f"{address} {name}" for name, addresses in self.names.items() for address in addresses]
        self.hosts_path.write_text("\n".join(lines) + "\n")
        return self.hosts_path

    def hits(self) -> list[dict[str, Any]]:
        """Every request and TLS handshake the servers saw since start (or `clear_hits`), in order:
        `kind` ("tls" or "request"), `addr`, `port`, `sni`, `host`, `method`, `path`, `error`."""
        return _json_lines(self.log_path)

    def hits_for(self, **match: Any) -> list[dict[str, Any]]:
        """The hits whose fields equal every one given, e.g. `hits_for(addr=PRIVATE_IP)`."""
        return [hit for hit in self.hits() if all(hit.get(key) == value for key, value in match.items())]

    def clear_hits(self) -> None:
        self.log_path.write_text("")

    def dns_queries(self) -> list[dict[str, Any]]:
        """Every query the DNS server answered since start (or `clear_dns_queries`), in order: `name`
        (lower case), `qtype` ("A", "AAAA", ...), `answer` (an address or None), `rcode` ("NOERROR" or
        "NXDOMAIN"), `client` (the asker's address)."""
        return _json_lines(self.dns_log_path)

    def clear_dns_queries(self) -> None:
        self.dns_log_path.write_text("")

    def reset_dns(self) -> None:
        """Start rebind.test over: its next A answer is PUBLIC_IP (then PRIVATE_IP, and so on)."""
        reset_dns(self._dns_reset)


def _json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@contextlib.contextmanager
def world(workdir: Path) -> Iterator[World]:
    """A started world, stopped on the way out."""
    the_world = World(workdir)
    try:
        the_world.start()
        yield the_world
    finally:
        the_world.stop()
