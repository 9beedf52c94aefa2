"""Squid's external ACL helper: the egress decision for one connection, by the sandbox's address.

Runs under the system's python3 as `acl_helper.py connect|sni POLICY_JSON`, next to a copy of
policy/egress.py and policy/egress_names.py (files.py puts them there): standard library only.
Squid's concurrent protocol: each line is `CHANNEL FIELD... DATA` (as sent, `-` for none; DATA, the
acl line's arguments, is always `-` here), each answer
`CHANNEL OK|ERR key="value"...`. The answer's keys become the connection's notes (principal, tenant,
profile, rule: the audit event's fields) and `message` the 403 page's text.

- connect (front): `%>a %>rm %>rd %>rP`: source address, method, host, port.
- sni (tls stage): `%>a %>rd %>rP %ssl::>sni`: the SNI must be the CONNECT host, exactly (Squid
  passes only a plain name: tls.conf closes any other hello first).

POLICY_JSON (the gateway rewrites it with rename(), and it is re-read when it changes):
`{"sources": {ADDRESS: {"principal", "tenant", "profile"}}, "profiles": {NAME: [RULE, ...]}}`.
Anything unexpected, a policy that cannot be read included, is a refusal (`helper-error`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from policy.egress import egress_decision
from policy.egress_names import HostRule, host_problem, ip_literal, parse_rule

Answer = tuple[bool, dict[str, str]]


class Policy:
    """policy.json, parsed once per change of the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: tuple[int, int] | None = None
        self.sources: dict[str, dict[str, str]] = {}
        self.rules: dict[str, list[HostRule]] = {}

    def load(self) -> None:
        status = os.stat(self.path)
        stamp = (status.st_mtime_ns, status.st_ino)
        if stamp == self.stamp:
            return
        with open(self.path, encoding="utf-8") as handle:
            data = json.load(handle)
        self.sources = {
            str(k): {f: str(v[f]) for f in ("principal", "tenant", "profile")}
            for k, v in data["sources"].items()
        }
        self.rules = {
            str(name): [parse_rule(rule) for rule in rules] for name, rules in data["profiles"].items()
        }
        self.stamp = stamp


def _refusal_rule(host: str) -> str:
    try:
        literal = ip_literal(host.lower().rstrip(".") if not host.startswith("[") else host)
    except ValueError:
        return "ip-literal"
    if literal is not None:
        return "ip-literal"
    return "invalid-target" if host_problem(host.lower().rstrip(".")) else "not-allowed"


def _sni_refusal(notes: dict[str, str], host: str, sni: str) -> Answer | None:
    """Why a ClientHello's SNI does not name the CONNECT host, exactly; None when it does."""
    name = host.lower().rstrip(".")
    if sni in ("", "-"):
        return False, {**notes, "rule": "no-sni", "message": f"egress refused: no TLS SNI for {name}"}
    if sni.lower().rstrip(".") != name:
        message = f"egress refused: TLS SNI {sni!r} is not {name}"
        return False, {**notes, "rule": "sni-mismatch", "message": message}
    return None


def decide(policy: Policy, phase: str, fields: list[str]) -> Answer:
    policy.load()
    who = policy.sources.get(fields[0]) if len(fields) == 4 else None
    if who is None:
        why = f"{fields[0]} is not a sandbox of this gateway" if len(fields) == 4 else "a malformed question"
        return False, {
            "rule": "unknown-source" if len(fields) == 4 else "helper-error",
            "message": f"egress refused: {why}",
        }
    notes = dict(who)
    if phase == "connect":
        _, _method, host, port_text = fields
        sni = ""
    else:
        _, host, port_text, sni = fields
    decimal = port_text.isdigit() and port_text.isascii() and not port_text.startswith("0")
    port = int(port_text) if decimal and len(port_text) <= 5 else -1  # one spelling: no sign, no 0443
    rules = policy.rules.get(who["profile"])
    allowed, rule, why = egress_decision(rules, host, port)
    if not allowed:
        code = "egress-off" if rules is None else _refusal_rule(host)
        return False, {**notes, "rule": code, "message": f"{why} (profile {who['profile']}, rule: {code})"}
    notes["rule"] = str(rule)
    if phase == "sni":
        refusal = _sni_refusal(notes, host, sni)
        if refusal is not None:
            return refusal
        notes["clt_conn_tag"] = "sni-verified"  # lets Squid's own re-check after the splice through
    return True, {**notes, "message": why}


def _quote(value: Any) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))[:500]
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def answer(policy: Policy, phase: str, line: str) -> str:
    parts = line.split()
    if not parts:
        return ""
    # Fields come as the client sent them (Squid does not encode them): nothing is decoded, and a
    # field that is not plain printable ASCII without `%`, or a line with a field more or less than
    # the phase sends, is refused whole.
    channel, fields = parts[0], parts[1:]
    if fields[-1:] == ["-"] and len(fields) == 5:
        fields = fields[:4]  # the acl line's own arguments, which ours have none of (%DATA)
    if not all(field.isascii() and field.isprintable() and "%" not in field for field in fields):
        fields = []
    try:
        allowed, notes = decide(policy, phase, fields)
    except Exception as exc:  # noqa: BLE001 - fail closed: any error is a refusal
        allowed, notes = (
            False,
            {"rule": "helper-error", "message": f"egress refused: policy error ({type(exc).__name__})"},
        )
    return f"{channel} {'OK' if allowed else 'ERR'} " + " ".join(f"{k}={_quote(v)}" for k, v in notes.items())


def main() -> None:
    phase, path = sys.argv[1], sys.argv[2]
    policy = Policy(path)
    for line in sys.stdin:
        reply = answer(policy, phase, line)
        if reply:
            sys.stdout.write(reply + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
