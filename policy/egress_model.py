"""The `egress` key of a profile: which `host:port` its sandboxes may reach through the egress proxy,
and how much. A profile without `egress` has no network at all (`network: none`, the default), and
`egress` is the only way a sandbox gets one (guardrail `egress-is-the-only-network`).

A rule is `host:port`, written in one spelling only, so that what a reviewer reads is what matches:

- `host` is an RFC 1123 name (labels of a-z 0-9 and inner `-`, 1-63 characters, 253 in all),
  lower-cased, one trailing dot dropped. Non-ASCII names are refused: write them as punycode
  (`xn--...`, which must decode). Labels with `--` in places 3-4 other than `xn--` are reserved.
- `*.` may stand as the first label only, and covers EVERY subdomain (at any depth) of the rest, but
  not the rest itself; the rest needs at least two labels (`*.com` is refused). There is no public
  suffix list here, so `*.co.uk` passes and `policy diff` spells out what it covers.
- an IP literal (`a.b.c.d`, or IPv6 in brackets `[2001:db8::1]`) is refused unless
  `allow_ip_literals: true`, and even then only a public unicast address in canonical form: loopback,
  private, link-local, metadata (169.254.169.254), shared, documentation, multicast, NAT64 and
  IPv4-mapped addresses are always refused. Any other spelling the OS would read as an address
  (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) is refused whatever the switch says.
- `port` is explicit, decimal, 1-65535, no leading zero. No scheme, userinfo, path or spaces.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, field_validator, model_validator

from policy.model_base import Strict
from policy.units import Size

__all__ = [
    "MAX_DOWNLOAD_BYTES_PER_S",
    "MIN_DOWNLOAD_BYTES_PER_S",
    "Egress",
    "HostRule",
    "address_problem",
    "host_problem",
    "ip_literal",
    "parse_rule",
    "split_host_port",
]

MIN_DOWNLOAD_BYTES_PER_S = 1024
MAX_DOWNLOAD_BYTES_PER_S = 1024**3

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
#: Never reachable, whatever the policy says (also what Squid's `blocked_addr` ACL holds).
_BLOCKED = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/3",
        "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "fc00::/7", "fe80::/10",
        "fec0::/10", "ff00::/8", "2001:db8::/32", "2002::/16", "2001::/32",
    )
)  # fmt: skip

HostRule = tuple[str, int, str]  # (host, port, kind: "name" | "wildcard" | "ipv4" | "ipv6")


def split_host_port(text: str) -> tuple[str, str]:
    """`host:port` or `[v6]:port` -> (host, port text); raise ValueError for anything else."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or "]" in host or "[" in host:
            raise ValueError("an IPv6 address is written [address]:port")
        return f"[{host}]", port
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError("give the port explicitly: host:port")
    if ":" in host:
        raise ValueError("an IPv6 address is written in brackets: [address]:port")
    return host, port


def address_problem(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why `address` may never be a destination, or None for a public unicast address."""
    if any(address in net for net in _BLOCKED if net.version == address.version):
        return "is in a range that is never reachable (loopback, private, link-local, metadata, ...)"
    if not address.is_global or address.is_multicast:
        return "is not a public unicast address"
    return None


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` spells, if it is an IP literal; ValueError for a non-canonical spelling."""
    if host.startswith("["):
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise ValueError(f"{host!r} is not an IPv6 address") from exc
        if address.ipv4_mapped is not None:
            raise ValueError(f"{host!r} is an IPv4-mapped address; IPv4 is written a.b.c.d")
        if f"[{address.compressed}]" != host:
            raise ValueError(f"write {host!r} in canonical form: [{address.compressed}]")
        return address
    if not _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return None
    try:
        address4 = ipaddress.IPv4Address(host)
    except ValueError:
        address4 = None
    if address4 is None or str(address4) != host:
        raise ValueError(
            f"{host!r} reads as an IP address in a non-canonical form (decimal, octal, hex or short); "
            "an address is written as a dotted quad a.b.c.d, and a name cannot end in a numeric label"
        )
    return address4


def _punycode(text: str) -> bool:
    """`text` decodes to printable non-ASCII text that encodes back to `text` (one spelling only)."""
    try:
        decoded = text.encode("ascii").decode("punycode")
    except UnicodeError:
        return False
    return not decoded.isascii() and decoded.isprintable() and decoded.encode("punycode") == text.encode()


def host_problem(host: str) -> str | None:
    """Why `host` (lower-case ASCII, no trailing dot) is not an RFC 1123 name, or None."""
    if not host or len(host) > 253:
        return "must be 1-253 characters"
    for label in host.split("."):
        if not _LABEL.fullmatch(label):
            return f"has the label {label[:70]!r}: labels are 1-63 of a-z 0-9 and inner '-'"
        if label[2:4] == "--":
            if not label.startswith("xn--"):
                return f"has the label {label!r}: '--' in places 3-4 is reserved for punycode (xn--)"
            if not _punycode(label[4:]):
                return f"has the label {label!r}, which is not valid punycode"
    return None


def parse_rule(text: str) -> HostRule:
    """One allow-list entry, checked and normalized: (host, port, kind). ValueError says why not."""
    if not text.isascii():
        raise ValueError("holds non-ASCII characters: write an international name as punycode (xn--...)")
    if not text.isprintable() or " " in text:
        raise ValueError("holds spaces or control characters")
    for bad, what in (("://", "a scheme"), ("@", "userinfo"), ("/", "a path"), ("%", "'%'"), ("\\", "'\\'")):
        if bad in text:
            raise ValueError(f"holds {what}: a rule is host:port only")
    host, port_text = split_host_port(text)
    if not _PORT.fullmatch(port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} must be decimal 1-65535, no sign or leading zero")
    port, host = int(port_text), host.lower()
    host = host[:-1] if host.endswith(".") and not host.startswith("[") else host
    wildcard = host.startswith("*.")
    rest = host[2:] if wildcard else host
    if "*" in rest:
        raise ValueError("'*' may only be the whole first label, as in *.example.com")
    address = ip_literal(rest)
    if address is not None:
        if wildcard:
            raise ValueError("a wildcard covers names, not addresses")
        problem = address_problem(address)
        if problem:
            raise ValueError(f"{host} {problem}; it is refused even with allow_ip_literals")
        return host, port, f"ipv{address.version}"
    problem = host_problem(rest)
    if problem:
        raise ValueError(f"host {rest[:80]!r} {problem}")
    if wildcard and rest.count(".") < 1:
        raise ValueError(
            f"*.{rest} would cover a whole top-level domain: a wildcard needs two labels after *."
        )
    return host, port, ("wildcard" if wildcard else "name")


class Egress(Strict):
    """Egress of a profile. Rules are normalized (`PyPI.org.:443` is kept as `pypi.org:443`), and a
    rule given twice (in any spelling) is refused. Numbers and switches take their own YAML type."""

    allow: tuple[str, ...] = Field(min_length=1, max_length=1024)
    #: Rules that are IP literals are refused unless this is true (blocked ranges: always).
    allow_ip_literals: bool = Field(default=False, strict=True)
    #: Connections open at once, per sandbox.
    max_connections: int = Field(default=16, ge=1, le=1024, strict=True)
    #: Download rate per sandbox (shaped by the proxy): 1 KiB/s to 1 GiB/s; sizes take `10m`.
    download_bytes_per_s: Size = Field(
        default=10 * 1024**2, ge=MIN_DOWNLOAD_BYTES_PER_S, le=MAX_DOWNLOAD_BYTES_PER_S
    )

    @field_validator("allow", mode="before")
    @classmethod
    def _rules(cls, value: object) -> object:
        if not isinstance(value, list | tuple):
            return value
        normalized, seen = [], set()
        for index, entry in enumerate(value):
            if not isinstance(entry, str):
                raise ValueError(f"allow[{index}] is a string host:port, not {entry!r}")  # noqa: TRY004
            try:
                host, port, _ = parse_rule(entry)
            except ValueError as exc:
                raise ValueError(f"allow[{index}] {entry[:100]!r}: {exc}") from None
            rule = f"{host}:{port}"
            if rule in seen:
                raise ValueError(f"allow[{index}] {entry[:100]!r}: {rule} is listed twice")
            seen.add(rule)
            normalized.append(rule)
        return tuple(normalized)

    @model_validator(mode="after")
    def _ip_literals_need_the_switch(self) -> Egress:
        if not self.allow_ip_literals:
            for index, rule in enumerate(self.allow):
                if parse_rule(rule)[2].startswith("ip"):
                    raise ValueError(
                        f"allow[{index}] {rule} is an IP literal: refused unless allow_ip_literals: true"
                    )
        return self

    def rules(self) -> list[HostRule]:
        return [parse_rule(rule) for rule in self.allow]
