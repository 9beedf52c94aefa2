"""Who holds which address on the egress network: the proxy's only way to know who asks.

The broker picks an address and records its holder here *before* the sandbox is created, and the
policy file the proxy reads is rewritten at once: a new sandbox can never inherit a removed one's
address with its profile, because an address is free again only after its sandbox is gone.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass

from gateway.egress.network import EgressNetwork
from gateway.errors import EgressUnavailable

__all__ = ["Addresses", "Holder"]


@dataclass(slots=True)
class Holder:
    principal: str
    tenant: str
    profile: str
    container_id: str | None = None


class Addresses:
    def __init__(self, network: EgressNetwork) -> None:
        self.network = network
        self._held: dict[str, Holder] = {}

    def pick(self, holder: Holder) -> str:
        """A free address, now held by `holder`."""
        span = self.network.sandbox_addresses()
        if len(self._held) >= len(span):
            raise EgressUnavailable(f"every address of the egress network {self.network.subnet} is in use")
        while True:
            address = str(ipaddress.IPv4Address(span[secrets.randbelow(len(span))]))
            if address not in self._held:
                self._held[address] = holder
                return address

    def claim(self, address: str, holder: Holder) -> bool:
        """Hold a known address (a sandbox adopted after a restart); False if it is not one of ours
        to give or someone holds it."""
        if not self.network.holds(address) or address in self._held:
            return False
        self._held[address] = holder
        return True

    def attach(self, address: str, container_id: str) -> None:
        self._held[address].container_id = container_id

    def holder(self, address: str) -> Holder | None:
        return self._held.get(address)

    def address_of(self, container_id: str) -> str | None:
        return next((a for a, h in self._held.items() if h.container_id == container_id), None)

    def reassign(self, container_id: str, principal: str, tenant: str, profile: str) -> None:
        """A pooled sandbox handed to its principal: the proxy now sees that principal."""
        address = self.address_of(container_id)
        if address is not None:
            self._held[address] = Holder(principal, tenant, profile, container_id)

    def release(self, *, address: str | None = None, container_id: str | None = None) -> bool:
        if address is None and container_id is not None:
            address = self.address_of(container_id)
        return address is not None and self._held.pop(address, None) is not None

    def sources(self) -> dict[str, dict[str, str]]:
        """policy.json's `sources`: address -> principal, tenant, profile."""
        return {
            address: {"principal": h.principal, "tenant": h.tenant, "profile": h.profile}
            for address, h in sorted(self._held.items())
        }

    def __len__(self) -> int:
        return len(self._held)
