"""Egress rules and destinations as text: parsing `host:port` rules, telling names from IP literals
(in every spelling the OS reads as an address), and the address ranges that are never reachable.

Standard library only: the egress proxy's ACL helper runs this module under the system's python3,
outside the gateway's environment (gateway/egress/files.py ships it). The rule syntax is described
in egress_model.py, where the policy key is defined.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = [
    "BLOCKED_NETWORKS",
    "HostRule",
    "address_problem",
    "host_problem",
    "ip_literal",
    "parse_rule",
    "split_host_port",
]

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
#: Never reachable, whatever the policy says (also what Squid's `blocked_addr` ACL holds).
BLOCKED_NETWORKS = tuple(
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
    if any(address in net for net in BLOCKED_NETWORKS if net.version == address.version):
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
