"""The socket proxy and the egress network, on the real proxy and engine: the body the broker sends
for an egress sandbox is created exactly as sent (the engine's own description matches it, and the
container gets the address the broker picked); every wider body, in the spellings an attacker would
try, is refused by its rule and leaves nothing behind; addresses are fuzzed against the engine."""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.backend.create_body import create_body
from gateway.egress.network import EgressNetwork
from gateway.uids import DEFAULT_UID_RANGE, UidRange
from policy import load_policy
from tests.conftest import IMAGE
from tests.integration.test_socket_proxy import call, engine_call, refused_by, remove_labelled
from tests.support.bodies import edited

NET = EgressNetwork.from_env()
UIDS = UidRange.parse(DEFAULT_UID_RANGE)
RUN = f"proxy-egress-{uuid.uuid4().hex[:8]}"
ENDPOINT = f"NetworkingConfig/EndpointsConfig/{NET.name}"


def name() -> str:
    return f"sgw-{uuid.uuid4().hex[:16]}"


def egress_body(address: str, exec_path: str = "agent") -> dict[str, Any]:
    spec = (
        load_policy()
        .profiles["default"]
        .sandbox.model_copy(update={"network": "egress", "exec_path": exec_path})
    )
    labels = {"sandbox-gateway.managed": "true", "sandbox-gateway.gateway": RUN}
    return create_body(spec, uid=UIDS.pick(), image=IMAGE, labels=labels, egress=(NET, address))


def free_address() -> str:
    taken = {
        net.get("IPAddress") or (net.get("IPAMConfig") or {}).get("IPv4Address")
        for row in engine_call("GET", "/v1.41/containers/json?all=1").json()
        for net in ((row.get("NetworkSettings") or {}).get("Networks") or {}).values()
    }
    span = NET.sandbox_addresses()
    for offset in range(len(span)):
        address = str(ipaddress.IPv4Address(span[(offset * 37 + 11) % len(span)]))
        if address not in taken:
            return address
    raise AssertionError("the egress network is full")


@pytest.fixture(autouse=True)
def remove_what_the_test_made() -> Iterator[None]:
    yield
    remove_labelled(RUN)


def test_the_egress_body_is_created_exactly_as_sent() -> None:
    address = free_address()
    sandbox = name()
    created = call("POST", f"/v1.41/containers/create?name={sandbox}", egress_body(address))
    assert created.status_code == 201, created.text
    started = call("POST", f"/v1.41/containers/{sandbox}/start")
    assert started.status_code == 204, started.text
    doc = engine_call("GET", f"/v1.41/containers/{sandbox}/json").json()
    networks = doc["NetworkSettings"]["Networks"]
    assert list(networks) == [NET.name] and networks[NET.name]["IPAddress"] == address
    assert networks[NET.name]["IPAMConfig"] == {"IPv4Address": address}
    # The engine's own aliases only (its short id and the hostname): none from the body.
    assert set(networks[NET.name]["Aliases"] or ()) <= {doc["Id"][:12], "sandbox"}
    host = doc["HostConfig"]
    assert host["NetworkMode"] == NET.name and host["Dns"] == [str(NET.dns)]
    assert not host.get("ExtraHosts") and not host.get("PortBindings") and not host.get("Links")
    assert f"HTTPS_PROXY={NET.proxy_url}" in doc["Config"]["Env"]
    inspect = call("GET", f"/v1.41/containers/{sandbox}/json")
    assert inspect.status_code == 200, "the proxy counts it as a sandbox"


def _refused_cases() -> list[Any]:
    ip = f"{ENDPOINT}/IPAMConfig/IPv4Address"
    cases: dict[str, tuple[str, Any]] = {
        "network-bridge": ("HostConfig/NetworkMode", "bridge"),
        "network-host": ("HostConfig/NetworkMode", "host"),
        "network-by-id-prefix": ("HostConfig/NetworkMode", "sandbox-gateway-egres"),
        "dns-public": ("HostConfig/Dns", ["8.8.8.8"]),
        "dns-loopback": ("HostConfig/Dns", ["127.0.0.1"]),
        "dns-options": ("HostConfig/DnsOptions", ["ndots:0"]),
        "extra-hosts": ("HostConfig/ExtraHosts", ["good.test:10.1.2.3"]),
        "links": ("HostConfig/Links", ["victim:alias"]),
        "published-ports": ("HostConfig/PublishAllPorts", True),
        "address-gateway": (ip, str(NET.gateway)),
        "address-dns": (ip, str(NET.dns)),
        "address-outside": (ip, "10.213.1.5"),
        "address-leading-zero": (ip, "10.213.0.050"),
        "address-spaces": (ip, " 10.213.0.50"),
        "address-v6": (f"{ENDPOINT}/IPAMConfig/IPv6Address", "fd00::5"),
        "link-local-ips": (f"{ENDPOINT}/IPAMConfig/LinkLocalIPs", ["169.254.1.1"]),
        "aliases": (f"{ENDPOINT}/Aliases", ["pypi.org"]),
        "mac": (f"{ENDPOINT}/MacAddress", "02:42:0a:d5:00:32"),
        "driver-opts": (f"{ENDPOINT}/DriverOpts", {"x": "y"}),
        "second-endpoint": ("NetworkingConfig/EndpointsConfig/bridge", {}),
        "network-enabled-flag": ("NetworkDisabled", True),
        "proxy-elsewhere": ("Env", ["HTTPS_PROXY=http://10.1.2.3:3128"]),
        "no-dns-key": ("HostConfig/Dns", KeyError),
    }
    return [pytest.param(path, value, id=case) for case, (path, value) in cases.items()]


@pytest.mark.parametrize(("path", "value"), _refused_cases())
def test_a_wider_egress_body_is_refused_and_nothing_is_made(path: str, value: Any) -> None:
    sandbox = name()
    body = edited(egress_body(free_address()), path, value)
    response = call("POST", f"/v1.41/containers/create?name={sandbox}", body)
    assert response.status_code == 403, response.text
    assert refused_by(response) in ("body-shape", "egress-network")
    assert engine_call("GET", f"/v1.41/containers/{sandbox}/json").status_code == 404


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(lambda s: s.replace('"IPv4Address"', '"ipv4address"'), id="folded-lower"),
        pytest.param(lambda s: s.replace('"IPv4Address"', '"IPv4Addre\\u017f\\u017f"'), id="folded-long-s"),
        pytest.param(lambda s: s.replace('"NetworkingConfig"', '"networkingConfig"'), id="folded-top"),
        pytest.param(
            lambda s: s.replace('"IPAMConfig": {', '"IPAMConfig": {"IPv4Address": "10.213.0.2", ', 1),
            id="dup",
        ),
        pytest.param(
            lambda s: s.replace(
                f'"NetworkMode": "{NET.name}"', f'"NetworkMode": "{NET.name}", "networkmode": "bridge"'
            ),
            id="twin",
        ),
    ],
)
def test_spellings_the_engine_would_read_otherwise_are_refused(raw: Any) -> None:
    sandbox = name()
    body = json.dumps(egress_body(free_address()))
    text = raw(body)
    assert text != body, "the case changes the body"
    response = call("POST", f"/v1.41/containers/create?name={sandbox}", raw=text.encode())
    assert response.status_code == 403, response.text
    assert engine_call("GET", f"/v1.41/containers/{sandbox}/json").status_code == 404


def test_a_container_on_the_egress_network_with_a_second_network_is_no_sandbox() -> None:
    """Made on the raw engine (an operator's mistake, or another tool): the proxy lets no verb reach it."""
    body = egress_body(free_address())
    raw_name = name()
    made = engine_call("POST", f"/v1.41/containers/create?name={raw_name}", body)
    assert made.status_code == 201, made.text
    connected = engine_call("POST", "/v1.41/networks/bridge/connect", {"Container": raw_name})
    assert connected.status_code == 200, connected.text
    started = call("POST", f"/v1.41/containers/{raw_name}/start")
    assert started.status_code == 404 and refused_by(started) == "not-a-sandbox"


def test_a_second_sandbox_cannot_take_a_held_address() -> None:
    address = free_address()
    first, second = name(), name()
    assert call("POST", f"/v1.41/containers/create?name={first}", egress_body(address)).status_code == 201
    assert call("POST", f"/v1.41/containers/{first}/start").status_code == 204
    assert call("POST", f"/v1.41/containers/create?name={second}", egress_body(address)).status_code == 201
    refused = call("POST", f"/v1.41/containers/{second}/start")
    assert refused.status_code >= 400 and "Address already in use" in refused.text, refused.text
    doc = engine_call("GET", f"/v1.41/containers/{first}/json").json()
    assert doc["NetworkSettings"]["Networks"][NET.name]["IPAddress"] == address


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    address=st.one_of(
        st.integers(min_value=0, max_value=255).map(lambda n: f"10.213.0.{n}"),
        st.ip_addresses(v=4).map(str),
        st.text(alphabet="0123456789.x ", min_size=1, max_size=16),
    )
)
def test_an_address_the_proxy_accepts_is_the_address_the_engine_gives(address: str) -> None:
    """Differential: accepted => created with exactly that address on that network only."""
    sandbox = name()
    response = call("POST", f"/v1.41/containers/create?name={sandbox}", egress_body(address, "exec"))
    if not NET.holds(address):
        assert response.status_code == 403, (address, response.text)
        return
    assert response.status_code == 201, (address, response.text)
    try:
        doc = engine_call("GET", f"/v1.41/containers/{sandbox}/json").json()
        assert doc["NetworkSettings"]["Networks"][NET.name]["IPAMConfig"] == {"IPv4Address": address}
        assert list(doc["NetworkSettings"]["Networks"]) == [NET.name]
    finally:
        engine_call("DELETE", f"/v1.41/containers/{sandbox}?force=1")
