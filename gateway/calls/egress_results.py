"""Wire model of egress in the policy views (`policy show`, `admin_policy`): a profile's allow-list
and limits. The network side (the egress proxy) is not built yet: this is what the policy says."""

from __future__ import annotations

from pydantic import BaseModel, Field

from policy.egress_model import Egress

__all__ = ["EgressLimits"]


class EgressLimits(BaseModel):
    """Egress of a profile: the `host:port` its sandboxes may reach through the egress proxy."""

    allow: list[str] = Field(
        description='Normalized "host:port" rules; "*.example.com:443" covers every subdomain of '
        "example.com (not example.com itself)"
    )
    allow_ip_literals: bool = Field(description="Rules may be public IP addresses")
    max_connections: int = Field(description="Connections open at once, per sandbox")
    download_bytes_per_s: int = Field(description="Download rate, per sandbox")

    @classmethod
    def of(cls, egress: Egress | None) -> EgressLimits | None:
        if egress is None:
            return None
        return cls(
            allow=list(egress.allow),
            allow_ip_literals=egress.allow_ip_literals,
            max_connections=egress.max_connections,
            download_bytes_per_s=egress.download_bytes_per_s,
        )
