"""What `policy diff` says about a profile's `egress`.

WEAKER: egress turned on (the sandboxes get a network); each `host:port` newly allowed (a wildcard
is spelled out: it covers every subdomain, at any depth); `allow_ip_literals` turned on; higher
`max_connections` and `download_bytes_per_s`. Stronger: the reverse. Rules are compared in their
normalized spelling, so `PyPI.org.:443` replacing `pypi.org:443` is no change.
"""

from __future__ import annotations

from collections.abc import Iterator

from policy.code_mode_diff import Item, Verdict
from policy.egress_model import Egress
from policy.egress_names import parse_rule

__all__ = ["describe_rule", "egress_changes"]

_LIMITS = ("max_connections", "download_bytes_per_s")


def describe_rule(rule: str) -> str:
    """`added`, or for a wildcard what it covers: `added: EVERY subdomain of github.com, port 443`."""
    host, port, kind = parse_rule(rule)
    if kind == "wildcard":
        rest = host[2:]
        return f"added: EVERY subdomain of {rest} at any depth ('{host}'; not {rest} itself), port {port}"
    if kind.startswith("ip"):
        return f"added: the IP address {host}, port {port}"
    return "added"


def _rule_changes(old: tuple[str, ...], new: tuple[str, ...]) -> Iterator[Item]:
    for rule in sorted(set(new) - set(old)):
        yield f"egress.allow[{rule}]", None, describe_rule(rule), "weaker"
    for rule in sorted(set(old) - set(new)):
        yield f"egress.allow[{rule}]", "present", None, "stronger"


def egress_changes(old: Egress | None, new: Egress | None) -> Iterator[Item]:
    """Every difference between two `egress` settings of one profile, with its verdict."""
    if new is None:
        if old is not None:
            yield "egress", "on", "off (no network)", "stronger"
        return
    if old is None:
        yield "egress", "off (no network)", "on", "weaker"
        yield from _rule_changes((), new.allow)
        if new.allow_ip_literals:
            yield "egress.allow_ip_literals", None, True, "weaker"
        for name in _LIMITS:
            yield f"egress.{name}", None, getattr(new, name), "weaker"
        return
    for name in _LIMITS:
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            verdict: Verdict = "weaker" if b > a else "stronger"
            yield f"egress.{name}", a, b, verdict
    if old.allow_ip_literals != new.allow_ip_literals:
        switch: Verdict = "weaker" if new.allow_ip_literals else "stronger"
        yield "egress.allow_ip_literals", old.allow_ip_literals, new.allow_ip_literals, switch
    yield from _rule_changes(old.allow, new.allow)
