"""The egress network: an internal Docker bridge with a fixed subnet and no traffic between its
containers, whose gateway address (the host's side of the bridge) is where the egress proxy listens.

`sandbox-gateway setup` creates it; the broker attaches egress sandboxes to it with an address it
picked; the socket proxy accepts exactly this attachment and nothing wider. All three take it from
`EgressNetwork`, so what the broker sends and what the proxy accepts cannot drift apart.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from gateway.errors import ConfigError

__all__ = [
    "DEFAULT_EGRESS_NETWORK",
    "DEFAULT_EGRESS_SUBNET",
    "EGRESS_BRIDGE",
    "EGRESS_PORT",
    "ENV_EGRESS_NETWORK",
    "ENV_EGRESS_SUBNET",
    "EgressNetwork",
]

DEFAULT_EGRESS_NETWORK = "sandbox-gateway-egress"
DEFAULT_EGRESS_SUBNET = "10.213.0.0/24"
ENV_EGRESS_NETWORK = "SGW_EGRESS_NETWORK"
ENV_EGRESS_SUBNET = "SGW_EGRESS_SUBNET"
#: The Linux bridge's name (the host firewall rules name it).
EGRESS_BRIDGE = "sgw-egress0"
#: The egress proxy's port on the gateway address: the only port sandboxes can reach there.
EGRESS_PORT = 3128
_DEFAULT_SUBNET = ipaddress.IPv4Network(DEFAULT_EGRESS_SUBNET)
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


@dataclass(frozen=True, slots=True)
class EgressNetwork:
    name: str = DEFAULT_EGRESS_NETWORK
    subnet: ipaddress.IPv4Network = _DEFAULT_SUBNET

    @classmethod
    def parse(cls, name: str, subnet: str) -> EgressNetwork:
        try:
            network = ipaddress.IPv4Network(subnet)
        except ValueError as exc:
            raise ConfigError(
                f"egress subnet {subnet!r} is not an IPv4 network (a.b.c.d/len): {exc}"
            ) from exc
        if not network.is_private or not 16 <= network.prefixlen <= 28:
            raise ConfigError(f"egress subnet {subnet} must be a private IPv4 network of /16 to /28")
        if not name or not all(c.isalnum() or c in "-_." for c in name) or len(name) > 64:
            raise ConfigError(f"egress network name {name!r}: 1-64 of letters, digits, '-', '_', '.'")
        return cls(name=name, subnet=network)

    @classmethod
    def from_env(cls) -> EgressNetwork:
        """The network setup makes and the socket proxy is told of: $SGW_EGRESS_NETWORK and
        $SGW_EGRESS_SUBNET, or the defaults."""
        return cls.parse(
            os.environ.get(ENV_EGRESS_NETWORK) or DEFAULT_EGRESS_NETWORK,
            os.environ.get(ENV_EGRESS_SUBNET) or DEFAULT_EGRESS_SUBNET,
        )

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The host's address on the bridge, where the egress proxy listens."""
        return self.subnet.network_address + 1

    @property
    def dns(self) -> ipaddress.IPv4Address:
        """What a sandbox's resolver forwards to: an address of the subnet that nothing holds, so a
        sandbox has no DNS at all (never a loopback address: the engine would query it from the
        host's own namespace). Clients need none: they send the name to the proxy."""
        return self.subnet.broadcast_address - 1

    @property
    def proxy_url(self) -> str:
        return f"http://{self.gateway}:{EGRESS_PORT}"

    def sandbox_addresses(self) -> range:
        """The integers of the addresses a sandbox may hold: not the network, gateway, DNS or
        broadcast address."""
        return range(int(self.gateway) + 1, int(self.dns))

    def holds(self, address: str) -> bool:
        """`address` is a sandbox address of this network, in its one canonical spelling."""
        try:
            parsed = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        return str(parsed) == address and int(parsed) in self.sandbox_addresses()

    def environment(self) -> list[str]:
        """What a sandbox's processes get on top of the fixed environment, in both spellings (libcurl
        reads only the lower-case http_proxy): pip, curl, git and urllib send every name to the proxy."""
        return [f"{variable}={self.proxy_url}" for variable in _PROXY_VARIABLES] + ["NO_PROXY=", "no_proxy="]

    def host_config(self) -> dict[str, object]:
        """The HostConfig keys of an egress sandbox (in place of `NetworkMode: none`)."""
        return {"NetworkMode": self.name, "Dns": [str(self.dns)], "DnsSearch": [], "DnsOptions": []}

    def networking_config(self, address: str) -> dict[str, object]:
        """The top-level NetworkingConfig: this network only, at the address the broker picked."""
        return {"EndpointsConfig": {self.name: {"IPAMConfig": {"IPv4Address": address}}}}
