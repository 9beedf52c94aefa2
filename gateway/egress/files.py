"""The egress proxy's state directory: configurations, the ACL helper (with the two policy modules
it runs on), refusal pages, the tls stage's certificate, and the policy file the helper reads.

When the gateway runs as root, Squid runs as the `proxy` user: the directory and what Squid must
read are `root:proxy`, mode 0750/0640 (the stage token in the configurations is no other local
user's to read); only `run/` (logs, pid files) is Squid's own.
"""

from __future__ import annotations

import datetime
import grp
import json
import os
import pwd
import shutil
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import policy
from gateway.egress.squid_conf import ProxyLayout, error_pages

__all__ = ["SQUID_USER", "prepare", "squid_ids", "write_file", "write_json"]

SQUID_USER = "proxy"
_TEMPLATES = Path("/usr/share/squid/errors/templates")
_POLICY_DIR = Path(policy.__file__).parent
#: Not imported here: it puts its own directory on sys.path, which only its copy may do.
_HELPER = Path(__file__).with_name("acl_helper.py")


def squid_ids() -> tuple[int, int] | None:
    """(uid, gid) Squid runs as, when we are root; None: Squid runs as we do."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SQUID_USER).pw_uid, grp.getgrnam(SQUID_USER).gr_gid
    except KeyError:
        return None


def _own(path: Path, mode: int, *, squid_owns: bool = False) -> None:
    ids = squid_ids()
    if ids is not None:
        os.chown(path, ids[0] if squid_owns else 0, ids[1])
    os.chmod(path, mode)


def write_file(path: Path, text: str | bytes, mode: int = 0o640) -> None:
    """Write through a temporary name and rename(): a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    _own(tmp, mode)
    tmp.replace(path)


def write_json(path: Path, value: object) -> None:
    write_file(path, json.dumps(value, sort_keys=True, separators=(",", ":")))


def _stage_certificate(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for the tls stage's port (Squid wants one on a port that peeks; it
    is never shown to anyone: that stage splices or closes, and never intercepts)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandbox-gateway egress stage")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "stage.crt", directory / "stage.key"
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    write_file(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    return cert_path, key_path


def _directory(path: Path, mode: int = 0o750, *, squid_owns: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    _own(path, mode, squid_owns=squid_owns)
    return path


def prepare(layout: ProxyLayout) -> tuple[Path, Path]:
    """Make the state directory from scratch; (certificate, key) of the tls stage."""
    if layout.state_dir.exists():  # the last run's, kept once (its logs may hold unread lines)
        previous = layout.state_dir.with_name(layout.state_dir.name + ".previous")
        shutil.rmtree(previous, ignore_errors=True)
        layout.state_dir.rename(previous)
    _directory(layout.state_dir.parent, 0o755)
    _directory(layout.state_dir)
    _directory(layout.run_dir, squid_owns=True)
    helper = _directory(layout.state_dir / "helper")
    package = _directory(helper / "policy")
    write_file(helper / "acl_helper.py", _HELPER.read_text())
    write_file(package / "__init__.py", "")
    for module in ("egress.py", "egress_names.py"):
        write_file(package / module, (_POLICY_DIR / module).read_text())
    errors = _directory(layout.state_dir / "errors")
    if _TEMPLATES.is_dir():
        for template in _TEMPLATES.iterdir():
            write_file(errors / template.name, template.read_bytes())
    for name, page in error_pages():
        write_file(errors / name, page)
    if layout.hosts_file is not None:  # Squid reads a copy: the original may be no business of `proxy`
        write_file(layout.state_dir / "hosts", layout.hosts_file.read_bytes())
    return _stage_certificate(_directory(layout.state_dir / "pki"))
