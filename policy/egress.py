"""The egress decision: may a sandbox of a profile open a connection to `host:port`?

Pure and standard library only (the egress proxy's ACL helper runs it under the system's python3):
no DNS, no I/O. The egress proxy's helper calls `egress_decision` with the CONNECT target,
before anything is resolved. A host matches a rule when it equals the rule's host, or, for a
`*.suffix` rule, ends with `.suffix` on a label boundary (and is not `suffix` itself); the port must
be equal. Case does not matter and one trailing dot is dropped; anything else that is not a plain
RFC 1123 name (spaces, NUL, `%`, `@`, `:`, non-ASCII) is refused, never cleaned up. An IP literal
matches only an IP rule with the same canonical address, and never one in a blocked range; any other
spelling of an address (`2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]`) is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from policy.egress_names import HostRule, address_problem, host_problem, ip_literal

__all__ = ["EGRESS_OFF", "egress_decision"]

EGRESS_OFF = "egress is off for this profile (no network)"


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _target(host: object, port: object) -> tuple[str, Address | None]:
    """(normalized host, its address if it is an IP literal); ValueError says why it is refused."""
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"port {port!r} is not 1-65535")
    if not isinstance(host, str) or not host.isascii():
        raise ValueError(f"host {str(host)[:80]!r} is not an ASCII name (international names are punycode)")
    name = host.lower()
    name = name[:-1] if name.endswith(".") and not name.startswith("[") else name
    try:
        address = ip_literal(name)
    except ValueError as exc:
        raise ValueError(f"host {host[:80]!r}: {exc}") from None
    if address is not None:
        return address.compressed, address
    problem = host_problem(name)
    if problem:
        raise ValueError(f"host {host[:80]!r} {problem}")
    return name, None


def egress_decision(rules: Sequence[HostRule] | None, host: str, port: int) -> tuple[bool, str | None, str]:
    """(allowed, the rule that allowed it or None, why), for a profile's parsed rules (`Egress.rules()`;
    None: egress off). An exact rule wins over a wildcard, and a longer wildcard over a shorter one,
    so the rule named is always the most specific."""
    if rules is None:
        return False, None, EGRESS_OFF
    try:
        name, address = _target(host, port)
    except ValueError as exc:
        return False, None, f"egress refused: {exc}"
    target = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    if address is not None:
        problem = address_problem(address)
        if problem or not any(kind.startswith("ip") for _, _, kind in rules):
            why = (
                f"{name} {problem}"
                if problem
                else f"{target} is an IP literal and the profile has no IP rule"
            )
            return False, None, f"egress refused: {why}"
    best: tuple[int, str] | None = None
    for rule_host, rule_port, kind in rules:
        if rule_port != port:
            continue
        rule = f"{rule_host}:{rule_port}"
        if kind != "wildcard":
            if rule_host.strip("[]") == name:
                return True, rule, f"allowed by {rule}"
        elif address is None and name.endswith(rule_host[1:]) and (best is None or len(rule) > best[0]):
            best = (len(rule), rule)
    if best is not None:
        return True, best[1], f"allowed by {best[1]}"
    return False, None, f"egress refused: {target} is not in the allow-list"
