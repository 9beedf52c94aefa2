"""The fleet's certificates, as `sandbox-gateway certs` writes them.

One CA for the fleet (`ca.pem`, `ca-key.pem`; an existing pair in the directory is reused, so hosts
and gateways can be added later); per sandbox host a server certificate for its socket proxy's
`tls:` listener, naming the host's address (IP or DNS name) and good for serverAuth only
(`hosts/NAME/server.pem`, `server-key.pem`, and `ca.pem`, the CA the proxy checks clients against);
per gateway a client certificate good for clientAuth only (`clients/NAME.pem`, `NAME-key.pem`, and
`ca.pem`, the CA a gateway checks hosts against). Keys are EC P-256, written mode 0600 from the
start, and never replaced unless asked to; the CA key stays in the top directory alone.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from gateway.errors import ConfigError
from gateway.setup.fleet_x509 import CA_DAYS, FleetCa, cert_pem, key_pem, load_ca, new_ca

__all__ = [
    "CA_DAYS",
    "DEFAULT_CLIENT",
    "DEFAULT_DAYS",
    "FleetCerts",
    "HostSpec",
    "check_name",
    "make_fleet_certs",
    "parse_address",
    "parse_host",
]

#: Host and client names: DNS-label-like, so they fit file names, hosts-file names and labels alike.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
DEFAULT_CLIENT = "gateway"
#: Lifetime of host and client certificates unless --days says otherwise; the CA's is CA_DAYS.
DEFAULT_DAYS = 365

Address = ipaddress.IPv4Address | ipaddress.IPv6Address | str


def check_name(name: str, what: str = "name") -> str:
    """`name` if it is a valid host or client name, else ConfigError naming it."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r} is not valid: use 1 to 63 lower-case letters, digits and '-', "
            "starting with a letter or digit"
        )
    return name


def parse_address(text: str) -> Address:
    """An IP address, or a DNS name (lower-cased); ConfigError naming `text` otherwise."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        if ip.is_unspecified or ip.is_multicast or (isinstance(ip, ipaddress.IPv6Address) and ip.scope_id):
            raise ConfigError(f"address {text!r} is not a host's address (unspecified, multicast or scoped)")
        return ip
    name = text.lower().removesuffix(".")
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # a malformed IP address (10.0.0.300), not a name
    ):
        raise ConfigError(
            f"address {text!r} is not an IP address or a DNS name (give the host's address alone, "
            "without scheme or port)"
        )
    return name


@dataclass(frozen=True, slots=True)
class HostSpec:
    """A sandbox host: its name and the address gateways reach its socket proxy at."""

    name: str
    address: Address

    @property
    def san(self) -> x509.GeneralName:
        if isinstance(self.address, str):
            return x509.DNSName(self.address)
        return x509.IPAddress(self.address)

    def url(self, port: int) -> str:
        """`tcp://ADDR:PORT`, as a hosts file names the host."""
        if isinstance(self.address, ipaddress.IPv6Address):
            return f"tcp://[{self.address}]:{port}"
        return f"tcp://{self.address}:{port}"


def parse_host(spec: str) -> HostSpec:
    """`NAME=ADDR` -> HostSpec; ConfigError naming the bad part."""
    name, sep, address = spec.partition("=")
    if not sep or not address:
        raise ConfigError(f"--host {spec!r}: expected NAME=ADDR (ADDR an IP address or a DNS name)")
    return HostSpec(check_name(name, "host name"), parse_address(address))


@dataclass
class FleetCerts:
    """What a run made: the directory, whether its CA was reused, and each file with what befell it
    (`new`, `replaced`, `kept`, or `copy` for a copy of the CA's certificate)."""

    out: Path
    ca_reused: bool
    hosts: list[HostSpec]
    clients: list[str]
    #: When the host and client certificates made expire.
    not_after: dt.datetime | None = None
    files: list[tuple[Path, str]] = field(default_factory=list)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` through a new file created with `mode` (never widened, never chmod-ed),
    renamed over `path`: a reader never sees half a file, nor a key with looser permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _existing_ca(out: Path, now: dt.datetime) -> FleetCa | None:
    """The CA already in `out` (both files), None when there is none, ConfigError when half of one."""
    cert_path, key_path = out / "ca.pem", out / "ca-key.pem"
    present = [path for path in (cert_path, key_path) if path.exists()]
    if not present:
        return None
    if len(present) == 1:
        missing = key_path if present[0] == cert_path else cert_path
        raise ConfigError(
            f"{out} holds {present[0].name} but not {missing.name}: restore it, or remove "
            f"{present[0].name} to make a new CA (everything the old one signed must then be made again)"
        )
    return load_ca(cert_path, key_path, now)


def make_fleet_certs(
    out: Path,
    hosts: Sequence[HostSpec],
    clients: Sequence[str] | None = None,
    *,
    days: int = DEFAULT_DAYS,
    force: bool = False,
    now: dt.datetime | None = None,
) -> FleetCerts:
    """Write the CA (or reuse the one in `out`), a server pair per host and a client pair per client.

    `clients` None: the default client (`gateway`), kept as it is when `out` already has its pair
    and its CA. A key that exists is never replaced unless `force`; everything is checked before
    anything is written, so a refused run writes nothing.
    """
    now = now or dt.datetime.now(dt.UTC)
    if not 1 <= days <= CA_DAYS:
        raise ConfigError(f"--days {days}: expected 1 to {CA_DAYS}")
    client_names = [check_name(c, "client name") for c in (clients or [DEFAULT_CLIENT])]
    for what, listed in (("host", [host.name for host in hosts]), ("client", client_names)):
        if twice := sorted({name for name in listed if listed.count(name) > 1}):
            raise ConfigError(f"{what} name {twice[0]!r} is given twice")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: not a directory")
    ca = _existing_ca(out, now)
    made = FleetCerts(out, ca is not None, list(hosts), [])

    host_keys = {host.name: out / "hosts" / host.name / "server-key.pem" for host in hosts}
    client_keys = {client: out / "clients" / f"{client}-key.pem" for client in client_names}
    kept_client = clients is None and ca is not None and client_keys[DEFAULT_CLIENT].exists()
    if kept_client:
        client_keys = {}  # the gateway's pair from an earlier run, with this CA
    keys = (*host_keys.values(), *client_keys.values())
    if (existing := [key for key in keys if key.is_symlink() or key.exists()]) and not force:
        replaced = "it and its certificate" if len(existing) == 1 else f"these {len(existing)} keys"
        raise ConfigError(f"{existing[0]} exists: not replacing a key (--force replaces {replaced})")

    if ca is None:
        out.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = new_ca(now)
        _write(out / "ca-key.pem", key_pem(ca.key), 0o600)
        _write(out / "ca.pem", cert_pem(ca.cert), 0o644)
        made.files += [(out / "ca.pem", "new"), (out / "ca-key.pem", "new")]
    else:
        made.files += [(out / "ca.pem", "kept"), (out / "ca-key.pem", "kept")]
    if kept_client:
        made.clients.append(DEFAULT_CLIENT)
        made.files += [(out / "clients" / f"{DEFAULT_CLIENT}{end}.pem", "kept") for end in ("", "-key")]
    made.not_after = ca.not_after(now, days)

    def issue(name: str, server: x509.GeneralName | None, cert_path: Path, key_path: Path) -> None:
        cert, key = ca.issue(name, server=server, not_before=now, days=days)
        state = "replaced" if key_path.exists() else "new"
        _write(key_path, key_pem(key), 0o600)
        _write(cert_path, cert_pem(cert), 0o644)
        _write(cert_path.parent / "ca.pem", cert_pem(ca.cert), 0o644)
        made.files += [(cert_path, state), (key_path, state), (cert_path.parent / "ca.pem", "copy")]

    for host in hosts:
        key_path = host_keys[host.name]
        issue(host.name, host.san, key_path.with_name("server.pem"), key_path)
    for client, key_path in client_keys.items():
        issue(client, None, key_path.with_name(f"{client}.pem"), key_path)
        made.clients.append(client)
    return made
