"""The create body of an egress sandbox, as the socket proxy judges it: the exact body the broker
sends is accepted, and each wider one is refused by the rule that should refuse it (the same
bodies go to the real proxy and engine in tests/integration/test_socket_proxy_egress.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.backend.create_body import create_body, seccomp_options
from gateway.egress.network import EgressNetwork
from gateway.sockproxy.create_rules import validate_create
from gateway.sockproxy.errors import Refused
from gateway.sockproxy.rules import ProxyRules
from policy import load_policy
from tests.support.bodies import edited

NET = EgressNetwork()
NAME = "sgw-0123456789abcdef"


def _egress_body() -> dict[str, Any]:
    spec = load_policy().profiles["default"].sandbox.model_copy(update={"network": "egress"})
    return create_body(
        spec,
        uid=2000000001,
        image="mcp-code-executor:latest",
        labels={"sandbox-gateway.managed": "true"},
        egress=(NET, "10.213.0.9"),
    )


RULES = ProxyRules(uid_low=2000000000, uid_high=2000999999, seccomp_options=seccomp_options(), egress=NET)


def test_the_socket_proxy_accepts_the_egress_body_the_broker_sends() -> None:
    body = _egress_body()
    assert validate_create(NAME, body, RULES) == body
    with pytest.raises(Refused):  # a proxy not told of the egress network refuses it
        validate_create(NAME, body, ProxyRules(2000000000, 2000999999, seccomp_options()))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("HostConfig.NetworkMode", "bridge"),
        ("HostConfig.NetworkMode", "host"),
        ("HostConfig.NetworkMode", "container:abc"),
        ("HostConfig.NetworkMode", "SANDBOX-GATEWAY-EGRESS"),
        ("HostConfig.Dns", ["8.8.8.8"]),
        ("HostConfig.Dns", ["127.0.0.11"]),
        ("HostConfig.DnsSearch", ["evil.test"]),
        ("HostConfig.ExtraHosts", ["good.test:10.1.2.3"]),
        ("NetworkDisabled", True),
        ("NetworkingConfig.EndpointsConfig.sandbox-gateway-egress.IPAMConfig.IPv4Address", "10.213.0.1"),
        ("NetworkingConfig.EndpointsConfig.sandbox-gateway-egress.IPAMConfig.IPv4Address", "10.213.0.254"),
        ("NetworkingConfig.EndpointsConfig.sandbox-gateway-egress.IPAMConfig.IPv4Address", "10.213.0.255"),
        ("NetworkingConfig.EndpointsConfig.sandbox-gateway-egress.IPAMConfig.IPv4Address", "10.213.1.9"),
        ("NetworkingConfig.EndpointsConfig.sandbox-gateway-egress.IPAMConfig.IPv4Address", "10.213.0.09"),
        ("NetworkingConfig.EndpointsConfig.sandbox-gateway-egress.IPAMConfig.IPv6Address", "fd00::1"),
        ("NetworkingConfig.EndpointsConfig.sandbox-gateway-egress.Aliases", ["good.test"]),
        ("NetworkingConfig.EndpointsConfig.sandbox-gateway-egress.MacAddress", "02:42:ac:11:00:02"),
        ("NetworkingConfig.EndpointsConfig.bridge", {}),
        ("NetworkingConfig.EndpointsConfig.sandbox-gateway-egress", {}),
        ("Env", ["HTTPS_PROXY=http://10.1.2.3:3128"]),
        ("NetworkingConfig", KeyError),
        ("HostConfig.Dns", KeyError),
    ],
)
def test_the_socket_proxy_refuses_anything_wider(path: str, value: Any) -> None:
    with pytest.raises(Refused):
        validate_create(NAME, edited(_egress_body(), path, value, sep="."), RULES)


def test_a_none_network_body_cannot_smuggle_the_egress_endpoint() -> None:
    spec = load_policy().profiles["default"].sandbox
    body = create_body(
        spec, uid=2000000001, image="mcp-code-executor:latest", labels={"sandbox-gateway.managed": "true"}
    )
    assert validate_create(NAME, body, RULES) == body
    body["NetworkingConfig"] = NET.networking_config("10.213.0.9")
    with pytest.raises(Refused):
        validate_create(NAME, body, RULES)
