"""`sandbox-gateway certs`: the fleet CA, the hosts' server certificates and the gateways' client
certificates; their chains, names and usages, the files' modes, reuse of the CA, refusals."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from gateway.cli import main
from gateway.setup.fleet_certs import DEFAULT_CLIENT, DEFAULT_DAYS


def _certs(out: Path, *args: str) -> int:
    return main(["certs", "--out", str(out), *args])


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _policy(out: Path) -> PolicyBuilder:
    return PolicyBuilder().store(Store([_cert(out / "ca.pem")])).time(dt.datetime.now(dt.UTC))


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _openssl_verify(ca: Path, cert: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    argv = ["openssl", "verify", "-CAfile", str(ca), "-purpose", purpose, str(cert)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    out = tmp_path / "fleet"
    assert _certs(out, "--host", "host-a=10.0.0.11", "--host", "host-b=sbx-b.example.org") == 0
    return out


def test_the_host_certificates_verify_for_their_address_as_servers(fleet: Path) -> None:
    policy = _policy(fleet)
    host_a, host_b = (_cert(fleet / "hosts" / name / "server.pem") for name in ("host-a", "host-b"))
    ip = ipaddress.ip_address("10.0.0.11")
    policy.build_server_verifier(IPAddress(ip)).verify(host_a, [])
    policy.build_server_verifier(DNSName("sbx-b.example.org")).verify(host_b, [])
    with pytest.raises(VerificationError):
        policy.build_server_verifier(IPAddress(ipaddress.ip_address("10.0.0.12"))).verify(host_a, [])
    with pytest.raises(VerificationError):
        policy.build_server_verifier(DNSName("other.example.org")).verify(host_b, [])
    for name in ("host-a", "host-b"):
        server = fleet / "hosts" / name / "server.pem"
        assert _openssl_verify(fleet / "ca.pem", server, "sslserver").returncode == 0
        assert _openssl_verify(fleet / "ca.pem", server, "sslclient").returncode != 0, "serverAuth only"


def test_the_sans_and_usages_are_exactly_what_each_end_needs(fleet: Path) -> None:
    host_a, host_b = (_cert(fleet / "hosts" / name / "server.pem") for name in ("host-a", "host-b"))
    client = _cert(fleet / "clients" / "gateway.pem")
    ca = _cert(fleet / "ca.pem")
    san_a = host_a.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    san_b = host_b.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san_a) == [x509.IPAddress(ipaddress.ip_address("10.0.0.11"))]
    assert list(san_b) == [x509.DNSName("sbx-b.example.org")]
    assert _eku(host_a) == _eku(host_b) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert _eku(client) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        client.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    for leaf in (host_a, host_b, client):
        assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
        assert leaf.issuer == ca.subject
        assert leaf.not_valid_after_utc - leaf.not_valid_before_utc < dt.timedelta(days=366)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    key = serialization.load_pem_private_key((fleet / "clients" / "gateway-key.pem").read_bytes(), None)
    assert key.key_size == 256, "EC P-256"  # type: ignore[union-attr]


def _client_policy(out: Path) -> PolicyBuilder:
    """The web PKI's client profile, but with the subject alternative name optional: a gateway's
    certificate names no address (the socket proxy checks the chain and the usage, not a name)."""
    ee = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
    )
    return _policy(out).extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ee)


def test_the_client_certificate_verifies_as_a_client_and_not_as_a_server(fleet: Path) -> None:
    client = fleet / "clients" / "gateway.pem"
    verified = _client_policy(fleet).build_client_verifier().verify(_cert(client), [])
    assert verified.chain[-1] == _cert(fleet / "ca.pem") and verified.subjects is None
    assert _openssl_verify(fleet / "ca.pem", client, "sslclient").returncode == 0
    assert _openssl_verify(fleet / "ca.pem", client, "sslserver").returncode != 0
    host = _cert(fleet / "hosts" / "host-a" / "server.pem")
    with pytest.raises(VerificationError, match="required EKU not found"):
        _client_policy(fleet).build_client_verifier().verify(host, [])


def test_keys_are_owner_only_and_the_ca_key_stays_at_the_top(fleet: Path) -> None:
    keys = sorted(fleet.rglob("*key.pem"))
    assert [str(k.relative_to(fleet)) for k in keys] == [
        "ca-key.pem", "clients/gateway-key.pem", "hosts/host-a/server-key.pem", "hosts/host-b/server-key.pem",
    ]  # fmt: skip
    for key in keys:
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    ca_key = (fleet / "ca-key.pem").read_bytes()
    for sub in ("hosts", "clients"):
        for path in (fleet / sub).rglob("*"):
            assert path.is_dir() or path.read_bytes() != ca_key, path
    host_files = {p.name for p in (fleet / "hosts" / "host-a").iterdir()}
    assert host_files == {"server.pem", "server-key.pem", "ca.pem"}
    assert {p.name for p in (fleet / "clients").iterdir()} == {"gateway.pem", "gateway-key.pem", "ca.pem"}
    for copy in (fleet / "hosts" / "host-a" / "ca.pem", fleet / "clients" / "ca.pem"):
        assert copy.read_bytes() == (fleet / "ca.pem").read_bytes()
    assert stat.S_IMODE(fleet.stat().st_mode) == 0o700, "the directory of the CA key is the owner's"


def test_keys_are_created_owner_only_even_with_an_open_umask_and_never_chmod_ed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a key's mode is set when it is created, not after")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(os, "fchmod", refuse)
    old = os.umask(0)
    try:
        assert _certs(tmp_path / "fleet", "--host", "h1=127.0.0.1") == 0
    finally:
        os.umask(old)
    for key in (tmp_path / "fleet").rglob("*key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_an_existing_ca_is_reused_to_add_a_host(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kept = (fleet / "ca.pem", fleet / "ca-key.pem", fleet / "clients" / "gateway.pem")
    before = {path: path.read_bytes() for path in kept}
    capsys.readouterr()
    assert _certs(fleet, "--host", "host-c=10.0.0.13") == 0
    assert {path: path.read_bytes() for path in kept} == before, "same CA; the gateway's pair is kept"
    host_c = _cert(fleet / "hosts" / "host-c" / "server.pem")
    _policy(fleet).build_server_verifier(IPAddress(ipaddress.ip_address("10.0.0.13"))).verify(host_c, [])
    printed = capsys.readouterr().out
    assert printed.startswith(f"in {fleet} (its CA, reused):")
    assert "address: tcp://10.0.0.13:2376" in printed


def test_an_existing_key_is_not_replaced_without_force(
    fleet: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = fleet / "hosts" / "host-a" / "server-key.pem"
    cert = fleet / "hosts" / "host-a" / "server.pem"
    old_key, old_cert = key.read_bytes(), cert.read_bytes()
    assert _certs(fleet, "--host", "host-a=10.0.0.11") == 2
    assert f"{key} exists: not replacing a key" in capsys.readouterr().err
    assert (key.read_bytes(), cert.read_bytes()) == (old_key, old_cert)

    assert _certs(fleet, "--client", "gateway") == 2, "a client named on purpose is made, so refused"
    assert "clients/gateway-key.pem exists" in capsys.readouterr().err

    assert _certs(fleet, "--host", "host-a=10.0.0.21", "--force") == 0
    assert key.read_bytes() != old_key and stat.S_IMODE(key.stat().st_mode) == 0o600
    ip = ipaddress.ip_address("10.0.0.21")
    _policy(fleet).build_server_verifier(IPAddress(ip)).verify(_cert(cert), [])
    assert "hosts/host-a/server-key.pem  replaced" in capsys.readouterr().out


def test_a_refused_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fleet"
    assert _certs(out, "--host", "h1=10.0.0.1", "--client", "ci") == 0
    before = sorted(out.rglob("*"))
    assert _certs(out, "--host", "h2=10.0.0.2", "--host", "h1=10.0.0.1") == 2
    assert "h1/server-key.pem exists" in capsys.readouterr().err
    assert sorted(out.rglob("*")) == before, "h2 was not made either"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "Host-A=10.0.0.1"], "host name 'Host-A' is not valid"),
        (["--host=-a=10.0.0.1"], "host name '-a' is not valid"),
        (["--host", f"{'a' * 64}=10.0.0.1"], f"host name '{'a' * 64}' is not valid"),
        (["--host", "a_b=10.0.0.1"], "host name 'a_b' is not valid"),
        (["--host", "h1=10.0.0.300"], "address '10.0.0.300' is not an IP address or a DNS name"),
        (["--host", "h1=tcp://10.0.0.1:2376"], "address 'tcp://10.0.0.1:2376' is not an IP address"),
        (["--host", "h1=sbx.example.org:2376"], "address 'sbx.example.org:2376' is not an IP address"),
        (["--host", "h1=bad_name.example"], "address 'bad_name.example' is not an IP address"),
        (["--host", "h1=0.0.0.0"], "address '0.0.0.0' is not a host's address"),
        (["--host", "h1=fe80::1%eth0"], "address 'fe80::1%eth0' is not a host's address"),
        (["--host", "h1="], "--host 'h1=': expected NAME=ADDR"),
        (["--host", "10.0.0.1"], "--host '10.0.0.1': expected NAME=ADDR"),
        (["--host", "h1=10.0.0.1", "--host", "h1=10.0.0.2"], "host name 'h1' is given twice"),
        (["--client", "Gateway"], "client name 'Gateway' is not valid"),
        (["--client", "gw/1"], "client name 'gw/1' is not valid"),
        (["--host", "h1=10.0.0.1", "--days", "0"], "--days 0: expected 1 to 3650"),
    ],
)
def test_bad_names_and_addresses_exit_2_naming_the_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert _certs(tmp_path / "fleet", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("sandbox-gateway: ") and message in err, err
    assert not (tmp_path / "fleet").exists(), "nothing written"


def test_half_a_ca_is_refused_rather_than_replaced(fleet: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (fleet / "ca-key.pem").unlink()
    assert _certs(fleet, "--host", "host-c=10.0.0.13") == 2
    assert "holds ca.pem but not ca-key.pem" in capsys.readouterr().err
    assert not (fleet / "hosts" / "host-c").exists()


def test_the_printed_lines_are_the_socket_proxy_and_hosts_file_to_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _certs(tmp_path / "f", "--host", "host-a=10.0.0.11", "--host", "v6=fd00::1", "--days", "30") == 0
    printed = capsys.readouterr().out
    assert (
        "host-a: sandbox-gateway socket-proxy --listen tls:0.0.0.0:2376 "
        "--tls-cert /etc/sandbox-gateway/fleet/server.pem "
        "--tls-key /etc/sandbox-gateway/fleet/server-key.pem "
        "--tls-client-ca /etc/sandbox-gateway/fleet/ca.pem"
    ) in printed
    hosts_file = printed[printed.index("\ntls:\n") + 1 :]
    assert hosts_file.splitlines() == [
        "tls:",
        "  ca: /etc/sandbox-gateway/fleet/ca.pem",
        "  cert: /etc/sandbox-gateway/fleet/gateway.pem",
        "  key: /etc/sandbox-gateway/fleet/gateway-key.pem",
        "hosts:",
        "  - name: host-a",
        "    address: tcp://10.0.0.11:2376",
        "  - name: v6",
        "    address: tcp://[fd00::1]:2376",
    ]
    host = _cert(tmp_path / "f" / "hosts" / "host-a" / "server.pem")
    assert host.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=30, minutes=1)


def test_the_help_names_the_defaults_and_the_x509_code_loads_only_when_certs_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["certs", "--help"])
    helped = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_DAYS};" in helped and f"(default: {DEFAULT_CLIENT!r}," in helped
    code = "import sys, gateway.cli as c; c._parser(); print('gateway.setup.fleet_certs' in sys.modules)"
    argv = [sys.executable, "-c", code]
    loaded = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "False"
