"""A throwaway PKI for engines reached over TLS, made with the openssl CLI: a CA, a server certificate
per IP address (subjectAltName IP:...), the gateway's client pair, and a "foreign" client pair signed
by another CA (which a proxy requiring client certificates of the first CA must refuse).

Everything is written into one directory; certificates are valid for a day.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True)
class Pki:
    """The files of a throwaway PKI: `ca` signs the servers' certificates and the gateway's client
    pair (`cert`, `key`); `foreign_cert` and `foreign_key` are a client pair of another CA."""

    ca: Path
    cert: Path
    key: Path
    foreign_cert: Path
    foreign_key: Path

    @property
    def directory(self) -> Path:
        return self.ca.parent

    def server_cert(self, ip: str) -> Path:
        """The server certificate for `ip` (made by `make_pki` when `ip` was among its addresses)."""
        return self.directory / f"server-{ip}.pem"

    def server_key(self, ip: str) -> Path:
        return self.directory / f"server-{ip}.key"

    def server_options(self, ip: str) -> tuple[str, ...]:
        """The socket proxy's options for a TLS listener on `ip` requiring a client certificate of `ca`."""
        return (
            "--tls-cert",
            str(self.server_cert(ip)),
            "--tls-key",
            str(self.server_key(ip)),
            "--tls-client-ca",
            str(self.ca),
        )


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _key_and_csr(tmp: Path, name: str, subject: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", tmp / f"{name}.key", "-out", tmp / f"{name}.csr", "-subj", subject)  # fmt: skip


def _sign(tmp: Path, name: str, ca: str, extensions: str) -> None:
    (tmp / f"{name}.ext").write_text(extensions + "\n")
    _openssl("x509", "-req", "-in", tmp / f"{name}.csr", "-CA", tmp / f"{ca}.pem",
             "-CAkey", tmp / f"{ca}.key", "-CAcreateserial", "-days", "1",
             "-out", tmp / f"{name}.pem", "-extfile", tmp / f"{name}.ext")  # fmt: skip


def _ca(tmp: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", tmp / f"{name}.key", "-out", tmp / f"{name}.pem",
             "-days", "1", "-subj", f"/CN={name}")  # fmt: skip


def make_pki(tmp: Path, ips: Iterable[str]) -> Pki:
    """In `tmp` (which must exist): a CA, a server certificate for each of `ips`, the gateway's client
    pair, and a client pair from another CA."""
    _ca(tmp, "ca")
    _ca(tmp, "other-ca")
    for ip in ips:
        _key_and_csr(tmp, f"server-{ip}", f"/CN={ip}")
        _sign(tmp, f"server-{ip}", "ca", f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth")
    _key_and_csr(tmp, "client", "/CN=gateway")
    _sign(tmp, "client", "ca", "extendedKeyUsage=clientAuth")
    _key_and_csr(tmp, "foreign", "/CN=intruder")
    _sign(tmp, "foreign", "other-ca", "extendedKeyUsage=clientAuth")
    return Pki(
        tmp / "ca.pem", tmp / "client.pem", tmp / "client.key", tmp / "foreign.pem", tmp / "foreign.key"
    )
