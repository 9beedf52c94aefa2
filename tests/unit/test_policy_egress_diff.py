"""`policy diff` and the policy views on egress: every widening is WEAKER (a wildcard spelled out),
its reverse stronger, and an operator sees each profile's allow-list."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.calls.explain import profile_limits
from policy import PolicyEngine, load_policy
from policy.diff import diff_policies, render_diff
from tests.unit.test_policy_egress import EGRESS, load


def changes(old: Any, new: Any) -> dict[str, tuple[Any, str]]:
    return {c.field: (c.new, c.verdict) for c in diff_policies(load(old), load(new))}


def with_(**keys: Any) -> dict[str, Any]:
    return {**EGRESS, **keys}


@pytest.mark.parametrize(
    ("new", "field", "verdict"),
    [
        (with_(allow=[*EGRESS["allow"], "example.com:443"]), "egress.allow[example.com:443]", "weaker"),
        (with_(allow=EGRESS["allow"][:2]), "egress.allow[*.github.com:443]", "stronger"),
        (with_(allow=[*EGRESS["allow"], "pypi.org:80"]), "egress.allow[pypi.org:80]", "weaker"),
        (with_(max_connections=64), "egress.max_connections", "weaker"),
        (with_(max_connections=4), "egress.max_connections", "stronger"),
        (with_(download_bytes_per_s="100m"), "egress.download_bytes_per_s", "weaker"),
        (with_(download_bytes_per_s="1m"), "egress.download_bytes_per_s", "stronger"),
        (with_(allow_ip_literals=True), "egress.allow_ip_literals", "weaker"),
        (None, "egress", "stronger"),
    ],
)
def test_each_egress_change_gets_its_verdict(new: Any, field: str, verdict: str) -> None:
    found = changes(EGRESS, new)
    assert found[field][1] == verdict and len(found) == 1, found
    if field != "egress":
        assert changes(new, EGRESS)[field][1] == ("stronger" if verdict == "weaker" else "weaker")


def test_turning_egress_on_is_weaker_and_lists_what_it_allows() -> None:
    found = changes(None, with_(allow=[*EGRESS["allow"], "93.184.216.34:443"], allow_ip_literals=True))
    assert found["egress"] == ("on", "weaker")
    assert {f for f, (_, v) in found.items() if v == "weaker"} == set(found)
    assert found["egress.allow[pypi.org:443]"] == ("added", "weaker")
    assert "IP address 93.184.216.34" in found["egress.allow[93.184.216.34:443]"][0]
    assert found["egress.allow_ip_literals"] == (True, "weaker")
    assert found["egress.max_connections"] == (16, "weaker")


def test_a_wildcard_is_spelled_out() -> None:
    report = render_diff(diff_policies(load(None), load()))
    assert (
        "!! WEAKER   egress.allow[*.github.com:443]: None -> added: EVERY subdomain of github.com at any "
        "depth ('*.github.com'; not github.com itself), port 443"
    ) in report


def test_a_respelled_rule_is_no_change() -> None:
    respelled = with_(allow=["PyPI.org.:443", "files.pythonhosted.org:443", "*.GitHub.com:443"])
    assert diff_policies(load(), load(respelled)) == []


def test_profile_limits_show_the_allow_list() -> None:
    assert all(limits.egress is None for limits in profile_limits(PolicyEngine(load_policy())))
    (limits,) = profile_limits(PolicyEngine(load(with_(allow=["PYPI.org:443"]))))
    assert limits.egress is not None and limits.egress.allow == ["pypi.org:443"]
    assert (limits.egress.max_connections, limits.egress.download_bytes_per_s) == (16, 10 * 2**20)


def test_the_console_shows_egress_per_profile() -> None:
    from frontend.format import policy_view

    profiles = [limits.model_dump(mode="json") for limits in profile_limits(PolicyEngine(load()))]
    view = policy_view({"tenant": "t", "profiles": [*profiles, {"name": "other", "egress": None}]})
    assert "| egress | on: pypi.org:443, files.pythonhosted.org:443, \\*.github.com:443" in view or (
        "| egress | on: pypi.org:443" in view
    )
    assert view.split("| egress |")[1].split("\n")[0].rstrip().endswith("| off (no network) |")
