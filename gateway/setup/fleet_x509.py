"""The fleet CA's certificates themselves (X.509, EC P-256, SHA-256): a CA made or loaded, and the
server and client certificates it issues. The files they go to are gateway/setup/fleet_certs.py's."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import ConfigError

__all__ = ["CA_DAYS", "FleetCa", "cert_pem", "key_pem", "load_ca", "new_ca"]

#: The CA's lifetime; what it issues lives --days, and never past the CA.
CA_DAYS = 3650
#: Allowance for clocks a little behind this one.
_BACKDATE = dt.timedelta(minutes=5)
_ORGANIZATION = "Sandbox Gateway fleet"


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the file's mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates (and CRLs); an end signs its TLS handshakes (ECDSA), nothing else."""
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class FleetCa:
    """The fleet's CA: its certificate and key, and what it issues."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    def issue(
        self, common_name: str, *, server: x509.GeneralName | None, not_before: dt.datetime, days: int
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A new key and its certificate: for a server (serverAuth, `server` as its one SAN) or,
        `server` None, for a client (clientAuth, no SAN); valid `days`, and never past the CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server is not None else ExtendedKeyUsageOID.CLIENT_AUTH
        issuer_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before - _BACKDATE)
            .not_valid_after(self.not_after(not_before, days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False
            )
        )
        if server is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName([server]), critical=False)
        return builder.sign(self.key, hashes.SHA256()), key

    def not_after(self, not_before: dt.datetime, days: int) -> dt.datetime:
        return min(not_before + dt.timedelta(days=days), self.cert.not_valid_after_utc)


def new_ca(now: dt.datetime) -> FleetCa:
    """A new CA, valid CA_DAYS, that may sign end certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"Sandbox Gateway fleet CA {secrets.token_hex(4)}")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return FleetCa(cert, key)


def load_ca(cert_path: Path, key_path: Path, now: dt.datetime) -> FleetCa:
    """The CA in these files, checked: readable, the key the certificate's, a CA, not expired."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"the CA in {cert_path.parent} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ConfigError(f"{key_path} is not an EC or RSA key")
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ConfigError(f"{key_path} is not the key of {cert_path}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound as exc:
        raise ConfigError(f"{cert_path} is not a CA certificate of this kind ({exc})") from exc
    if not constraints.ca:
        raise ConfigError(f"{cert_path} is not a CA certificate")
    if cert.not_valid_after_utc <= now:
        raise ConfigError(f"the CA {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    return FleetCa(cert, key)
