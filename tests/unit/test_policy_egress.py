"""Egress's policy: the schema refuses every rule it cannot mean in one way, the guardrail makes
`egress` the only way to a network, and `egress_decision` matches exactly what the rules say; the
bypass corpus holds it against hostname tricks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from policy import Policy, PolicyLoadError, load_policy, load_policy_text
from policy.egress import EGRESS_OFF, egress_decision
from policy.egress_model import Egress
from policy.errors import GuardrailViolation

EGRESS: dict[str, Any] = {"allow": ["pypi.org:443", "files.pythonhosted.org:443", "*.github.com:443"]}


def document(egress: Any = EGRESS, **sandbox: Any) -> dict[str, Any]:
    profile: dict[str, Any] = {"tools": ["execute_python"], "sandbox": {"images": ["img:latest"], **sandbox}}
    if egress is not None:
        profile["egress"] = copy.deepcopy(egress)
    return {"version": 1, "profiles": {"default": profile}}


def load(egress: Any = EGRESS, **sandbox: Any) -> Policy:
    return load_policy_text(yaml.safe_dump(document(egress, **sandbox)))


def rules(*allow: str, **keys: Any) -> Egress:
    egress = load({"allow": list(allow), **keys}).profiles["default"].egress
    assert egress is not None
    return egress


def refusal(egress: Any) -> str:
    with pytest.raises(PolicyLoadError) as info:
        load(egress)
    return str(info.value)


# --- the schema -------------------------------------------------------------------------------------


def test_absent_egress_is_no_network_and_changes_no_digest() -> None:
    policy = load(None)
    assert policy.profiles["default"].egress is None and policy.profiles["default"].sandbox.network == "none"
    assert all(p.egress is None for p in load_policy().profiles.values())
    assert "egress" not in policy.model_dump(exclude_none=True)["profiles"]["default"]


def test_defaults_and_normalization() -> None:
    egress = rules(
        "PyPI.Org.:443", "*.GitHub.com:443", "xn--bcher-kva.example:443", download_bytes_per_s="1m"
    )
    assert egress.allow == ("pypi.org:443", "*.github.com:443", "xn--bcher-kva.example:443")
    assert (egress.allow_ip_literals, egress.max_connections, egress.download_bytes_per_s) == (
        False,
        16,
        2**20,
    )


@pytest.mark.parametrize(
    ("rule", "why"),
    [
        ("pypi.org", "give the port"),
        ("pypi.org:", "port ''"),
        ("pypi.org:0", "1-65535"),
        ("pypi.org:65536", "1-65535"),
        ("pypi.org:0443", "leading zero"),
        ("pypi.org:+443", "decimal"),
        ("pypi.org:https", "decimal"),
        ("pypi.org:443:443", "brackets"),
        ("https://pypi.org:443", "scheme"),
        ("user@pypi.org:443", "userinfo"),
        ("pypi.org:443/simple", "a path"),
        ("pypi.org%2eevil:443", "'%'"),
        ("pypi.org\\evil:443", "holds '\\'"),
        ("pypi .org:443", "spaces"),
        (" pypi.org:443", "spaces"),
        ("pypi.org\t:443", "control"),
        ("pypi.org\x00:443", "control"),
        ("bücher.example:443", "punycode"),
        ("xn--zz-.example:443", "label"),
        ("xn--a.example:443", "not valid punycode"),
        ("ab--cd.example:443", "reserved"),
        ("-pypi.org:443", "label '-pypi'"),
        ("pypi-.org:443", "label 'pypi-'"),
        ("pypi..org:443", "label ''"),
        ("pypi.org..:443", "label ''"),
        ("py_pi.org:443", "label 'py_pi'"),
        (f"{'a' * 64}.org:443", "1-63"),
        (".".join(["a" * 63] * 4) + ":443", "1-253"),
        (":443", "1-253"),
        ("*:443", "'*' may only be"),
        ("*.com:443", "top-level domain"),
        ("*.*.github.com:443", "'*' may only be"),
        ("api.*.github.com:443", "'*' may only be"),
        ("*github.com:443", "'*' may only be"),
        ("**.github.com:443", "'*' may only be"),
        ("*.1.2.3.4:443", "not addresses"),
        ("2130706433:443", "non-canonical"),
        ("0177.0.0.1:443", "non-canonical"),
        ("0x7f.1:443", "non-canonical"),
        ("127.1:443", "non-canonical"),
        ("example.123:443", "non-canonical"),
        ("[::1]:443", "never reachable"),
        ("[::ffff:8.8.8.8]:443", "IPv4-mapped"),
        ("[2606:4700:0::1]:443", "canonical form"),
        ("[fe80::1%eth0]:443", "'%'"),
        ("[2606:4700::1:443", "[address]:port"),
        ("pypi.org:443 ", "spaces"),
    ],
)
def test_malformed_rules_are_refused(rule: str, why: str) -> None:
    message = refusal({"allow": [rule], "allow_ip_literals": True})
    assert "profiles.default.egress.allow" in message and why in message, message


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
        "0.0.0.0",  # noqa: S104 - an address refused here, nothing binds to it
        "224.0.0.1", "255.255.255.255", "198.51.100.10", "[::1]", "[::]", "[fd00::1]",
        "[fe80::1]", "[ff02::1]", "[64:ff9b::a9fe:a9fe]", "[2001:db8::1]", "[2002:7f00:1::]",
    ],
)  # fmt: skip
def test_blocked_ranges_are_refused_even_with_the_switch(address: str) -> None:
    message = refusal({"allow": [f"{address}:443"], "allow_ip_literals": True})
    assert "refused even with allow_ip_literals" in message or "not a public" in message, message


def test_ip_literals_need_the_switch() -> None:
    assert "allow_ip_literals: true" in refusal({"allow": ["93.184.216.34:443"]})
    assert "allow_ip_literals: true" in refusal({"allow": ["[2606:4700::1]:443"]})
    egress = rules("93.184.216.34:443", "[2606:4700::1]:443", allow_ip_literals=True)
    assert egress.allow == ("93.184.216.34:443", "[2606:4700::1]:443")


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        ({"allow": []}, "egress.allow"),
        ({"allow": "pypi.org:443"}, "egress.allow"),
        ({"allow": [443]}, "egress.allow"),
        ({"allow": ["pypi.org:443", "PYPI.org.:443"]}, "egress.allow"),
        ({"allow": ["pypi.org:443"], "max_connections": 0}, "egress.max_connections"),
        ({"allow": ["pypi.org:443"], "max_connections": 1025}, "egress.max_connections"),
        ({"allow": ["pypi.org:443"], "max_connections": "16"}, "egress.max_connections"),
        ({"allow": ["pypi.org:443"], "download_bytes_per_s": 1023}, "egress.download_bytes_per_s"),
        ({"allow": ["pypi.org:443"], "download_bytes_per_s": "2g"}, "egress.download_bytes_per_s"),
        ({"allow": ["pypi.org:443"], "allow_ip_literals": "yes"}, "egress.allow_ip_literals"),
        ({"allow": ["pypi.org:443"], "allow_ip_literal": True}, "egress.allow_ip_literal"),
        ({"allow": ["pypi.org:443"], "deny": ["x.org:443"]}, "egress.deny"),
    ],
)
def test_bad_keys_name_the_field(keys: dict[str, Any], field: str) -> None:
    assert f"profiles.default.{field}" in refusal(keys)


def test_duplicates_are_refused_in_any_spelling() -> None:
    assert "listed twice" in refusal({"allow": ["pypi.org:443", "PYPI.org.:443"]})


@pytest.mark.parametrize("network", ["bridge", "default", "egress", "sgw-egress", "host"])
def test_egress_is_the_only_way_to_a_network(network: str) -> None:
    for egress in (None, EGRESS):
        with pytest.raises(GuardrailViolation) as info:
            load(egress, network=network)
        rule = "no-host-network" if network == "host" else "egress-is-the-only-network"
        assert f"profiles.default.sandbox.network: forbidden by guardrail {rule}" in str(info.value)
    assert load(EGRESS, network="none").profiles["default"].egress is not None


def test_a_child_inherits_egress_and_may_switch_it_off_only_by_its_own_profile() -> None:
    raw = document()
    raw["profiles"]["child"] = {"extends": "default", "egress": {"max_connections": 4}}
    child = load_policy_text(yaml.safe_dump(raw)).profiles["child"].egress
    assert child is not None and child.max_connections == 4 and len(child.allow) == 3


# --- the decision -----------------------------------------------------------------------------------

POLICY = rules(*EGRESS["allow"])

ALLOWED = [
    ("pypi.org", 443, "pypi.org:443"),
    ("PYPI.ORG", 443, "pypi.org:443"),
    ("pypi.org.", 443, "pypi.org:443"),
    ("Files.PythonHosted.org", 443, "files.pythonhosted.org:443"),
    ("api.github.com", 443, "*.github.com:443"),
    ("a.b.c.github.com", 443, "*.github.com:443"),
    ("API.GITHUB.COM.", 443, "*.github.com:443"),
]


@pytest.mark.parametrize(("host", "port", "rule"), ALLOWED)
def test_allowed_targets_name_their_rule(host: str, port: int, rule: str) -> None:
    assert egress_decision(POLICY.rules(), host, port) == (True, rule, f"allowed by {rule}")


BYPASSES = [
    "github.com", "github.com.evil.test", "evilgithub.com", "api.evilgithub.com", "api-github.com",
    "api.github.com.evil.test", "api.github.co", "api.github.comm", "pypi.org.evil.test",
    "evilpypi.org", "pypi.org.evil", "www.pypi.org", "pypi.org..", ".pypi.org", "pypi..org",
    "pypi.org\x00.evil", "pypi.org\x00", "pypi.org%2eevil", "pypi%2eorg", "pypi.org ", " pypi.org",
    "pypi.org\t", "pypi.org\n", "pypi.org:443", "user@pypi.org", "pypi.org@evil.test",
    "pypi.org/evil", "pypi.org\\evil", "https://pypi.org", "xn--pypi-org.evil", "xn--pyp-5cd.org",
    "\u0440\u0443pi.org", "pypi.\u03bfrg", "\uff50\uff59\uff50\uff49.org", "api.github.com\u200b",
    "api\uff0egithub.com", "*.github.com",
    "[::ffff:127.0.0.1]", "[::1]", "0x7f000001", "2130706433", "0177.0.0.1", "127.1", "127.0.0.1",
    "169.254.169.254", "[fd00::1]", "", ".", "*", "github.com\u0000.api.github.com",
    "api.github.com:443", "pypi.org:443", "xn--a.pypi.org",
]  # fmt: skip
#: Right host, wrong port.
WRONG_PORTS = [("pypi.org", 4430), ("pypi.org", 80), ("api.github.com.", 80), ("pypi.org", 44)]


@pytest.mark.parametrize(("host", "port"), [(host, 443) for host in BYPASSES] + WRONG_PORTS)
def test_bypass_corpus_never_matches(host: str, port: int) -> None:
    allowed, rule, reason = egress_decision(POLICY.rules(), host, port)
    assert (allowed, rule) == (False, None) and reason.startswith("egress refused:"), reason


def test_the_corpus_is_large_enough() -> None:
    assert len(set(BYPASSES)) >= 30


@pytest.mark.parametrize("port", [0, -1, 65536, True, "443", 443.0])
def test_bad_ports_are_refused(port: Any) -> None:
    assert egress_decision(POLICY.rules(), "pypi.org", port)[0] is False


def test_non_string_host_is_refused() -> None:
    assert egress_decision(POLICY.rules(), b"pypi.org", 443)[0] is False  # type: ignore[arg-type]


def test_off_means_no_network() -> None:
    assert egress_decision(None, "pypi.org", 443) == (False, None, EGRESS_OFF)


def test_ip_literals_match_only_an_explicit_ip_rule() -> None:
    assert "has no IP rule" in egress_decision(POLICY.rules(), "93.184.216.34", 443)[2]
    mixed = rules("93.184.216.34:443", "[2606:4700::1]:443", "*.example.com:443", allow_ip_literals=True)
    assert egress_decision(mixed.rules(), "93.184.216.34", 443) == (
        True,
        "93.184.216.34:443",
        "allowed by 93.184.216.34:443",
    )
    assert egress_decision(mixed.rules(), "[2606:4700::1]", 443)[:2] == (True, "[2606:4700::1]:443")
    assert egress_decision(mixed.rules(), "[2606:4700::1]", 80)[0] is False
    for host in (
        "93.184.216.35",
        "1572395042",
        "93.184.55330",
        "0x5d.0xb8.0xd8.0x22",
        "[::ffff:93.184.216.34]",
    ):
        assert egress_decision(mixed.rules(), host, 443)[0] is False, host
    assert "never reachable" in egress_decision(mixed.rules(), "127.0.0.1", 443)[2]


def test_the_most_specific_rule_is_named() -> None:
    nested = rules("*.github.com:443", "*.api.github.com:443", "x.api.github.com:443")
    assert egress_decision(nested.rules(), "x.api.github.com", 443)[1] == "x.api.github.com:443"
    assert egress_decision(nested.rules(), "y.api.github.com", 443)[1] == "*.api.github.com:443"
    assert egress_decision(nested.rules(), "api.github.com", 443)[1] == "*.github.com:443"
