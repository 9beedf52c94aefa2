"""The hosts file: the Docker hosts sandboxes may be placed on, edited by the operator and re-read
on SIGHUP. Each host is its engine behind the project's socket proxy, reached over TLS with a client
certificate; a plain tcp:// address is refused unless the file says the network is private."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from gateway.errors import ConfigError
from policy.loader import UniqueKeyLoader
from policy.model_base import Strict

__all__ = ["HostSpec", "HostTLS", "HostsFile", "load_hosts", "parse_hosts"]

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class HostTLS(Strict):
    """The gateway's client side of a host's TLS: the CA that signed the host's certificate, and the
    gateway's own certificate and key."""

    ca: Path
    cert: Path
    key: Path


class HealthSettings(Strict):
    """How hosts are watched: probed every `probe_interval_s`, each probe given `probe_timeout_s`;
    a host that has not answered for `down_after_s` is down."""

    probe_interval_s: float = Field(default=1.0, gt=0, le=60)
    probe_timeout_s: float = Field(default=2.0, gt=0, le=60)
    down_after_s: float = Field(default=5.0, gt=0, le=600)


class HostSpec(Strict):
    """One sandbox host."""

    name: str
    #: tcp://HOST:PORT of the host's socket proxy.
    address: str
    #: The most sandboxes (pooled ones included) placed on it.
    capacity: int = Field(gt=0, le=100_000)
    labels: dict[str, str] = Field(default_factory=dict)
    #: No new sandboxes here; the ones it has run until they expire.
    drain: bool = False
    #: This host's TLS, when it differs from the file's.
    tls: HostTLS | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("a host name is 1-63 of a-z, 0-9 and '-', starting with a letter or digit")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        parts = urlsplit(value)
        extra = parts.path or parts.query or parts.fragment or "@" in parts.netloc  # userinfo
        if parts.scheme != "tcp" or not parts.hostname or extra:
            raise ValueError(f"{value!r}: expected tcp://HOST:PORT (the host's socket proxy)")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{value!r}: the port is not a number from 1 to 65535") from exc
        if port == 0:
            raise ValueError(f"{value!r}: the port is not a number from 1 to 65535")
        if port is None:
            raise ValueError(f"{value!r}: the port is missing (the socket proxy's TLS port, e.g. 2376)")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not _LABEL.fullmatch(key) or not _LABEL.fullmatch(item):
                raise ValueError(f"label {key}={item}: keys and values are 1-63 of A-Z a-z 0-9 . _ -")
        return value

    def satisfies(self, needs: dict[str, str]) -> bool:
        """Whether this host carries every label `needs` asks for, with the same value."""
        return all(self.labels.get(key) == value for key, value in needs.items())


class HostsFile(Strict):
    """The whole file: default TLS, health settings, the hosts."""

    version: int = Field(default=1, ge=1, le=1)
    tls: HostTLS | None = None
    #: Plain tcp:// to hosts without TLS: only for a network no one else can reach.
    insecure_private_network: bool = False
    health: HealthSettings = HealthSettings()
    hosts: tuple[HostSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_and_secured(self) -> HostsFile:
        # One engine written two ways (TCP://H:02376) is one address: it must not count twice.
        names, addresses = [h.name for h in self.hosts], [_endpoint(h.address) for h in self.hosts]
        for what, values in (("name", names), ("address", addresses)):
            seen = {v for v in values if values.count(v) > 1}
            if seen:
                raise ValueError(f"two hosts have the same {what}: {', '.join(sorted(seen))}")
        for host in self.hosts:
            if host.tls is None and self.tls is None and not self.insecure_private_network:
                raise ValueError(
                    f"host {host.name} has no TLS settings (tls: ca, cert, key); a plain tcp:// engine "
                    "needs insecure_private_network: true"
                )
        return self

    def tls_of(self, host: HostSpec) -> HostTLS | None:
        return host.tls or self.tls

    def named(self, name: str) -> HostSpec | None:
        return next((h for h in self.hosts if h.name == name), None)


def _endpoint(address: str) -> str:
    parts = urlsplit(address)
    return f"{parts.hostname}:{parts.port}"


def _location(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(file)"
        lines.append(f"{where}: {error['msg']}")
    return "; ".join(lines)


def parse_hosts(text: str, source: str = "<hosts>") -> HostsFile:
    """A hosts file from YAML text; ConfigError naming the key when it is wrong."""
    try:
        raw: Any = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with a `hosts:` list")
    try:
        hosts = HostsFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_location(exc)}") from exc
    return hosts


def load_hosts(path: Path) -> HostsFile:
    """Read and check the hosts file at `path`, and that its TLS files are readable."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the hosts file {path}: {exc.strerror}") from exc
    hosts = parse_hosts(text, str(path))
    for host in hosts.hosts:
        tls = hosts.tls_of(host)
        for part in (tls.ca, tls.cert, tls.key) if tls else ():
            if not part.is_file():
                raise ConfigError(f"{path}: host {host.name}: TLS file {part} does not exist")
    return hosts
