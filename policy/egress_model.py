"""The `egress` key of a profile: which `host:port` its sandboxes may reach through the egress proxy,
and how much. A profile without `egress` has no network at all (`network: none`, the default), and
`egress` is the only way a sandbox gets one (guardrail `egress-is-the-only-network`).

A rule is `host:port`, written in one spelling only, so that what a reviewer reads is what matches:

- `host` is an RFC 1123 name (labels of a-z 0-9 and inner `-`, 1-63 characters, 253 in all),
  lower-cased, one trailing dot dropped. Non-ASCII names are refused: write them as punycode
  (`xn--...`, which must decode). Labels with `--` in places 3-4 other than `xn--` are reserved.
- `*.` may stand as the first label only, and covers EVERY subdomain (at any depth) of the rest, but
  not the rest itself; the rest needs at least two labels (`*.com` is refused). There is no public
  suffix list here, so `*.co.uk` passes and `policy diff` spells out what it covers.
- an IP literal (`a.b.c.d`, or IPv6 in brackets `[2001:db8::1]`) is refused unless
  `allow_ip_literals: true`, and even then only a public unicast address in canonical form: loopback,
  private, link-local, metadata (169.254.169.254), shared, documentation, multicast, NAT64 and
  IPv4-mapped addresses are always refused. Any other spelling the OS would read as an address
  (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) is refused whatever the switch says.
- `port` is explicit, decimal, 1-65535, no leading zero. No scheme, userinfo, path or spaces.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from policy.egress_names import HostRule, parse_rule
from policy.model_base import Strict
from policy.units import Size

__all__ = ["MAX_DOWNLOAD_BYTES_PER_S", "MIN_DOWNLOAD_BYTES_PER_S", "Egress", "network_follows_egress"]

MIN_DOWNLOAD_BYTES_PER_S = 1024
MAX_DOWNLOAD_BYTES_PER_S = 1024**3


class Egress(Strict):
    """Egress of a profile. Rules are normalized (`PyPI.org.:443` is kept as `pypi.org:443`), and a
    rule given twice (in any spelling) is refused. Numbers and switches take their own YAML type."""

    allow: tuple[str, ...] = Field(min_length=1, max_length=1024)
    #: Rules that are IP literals are refused unless this is true (blocked ranges: always).
    allow_ip_literals: bool = Field(default=False, strict=True)
    #: Connections open at once, per sandbox.
    max_connections: int = Field(default=16, ge=1, le=1024, strict=True)
    #: Download rate per sandbox (shaped by the proxy): 1 KiB/s to 1 GiB/s; sizes take `10m`.
    download_bytes_per_s: Size = Field(
        default=10 * 1024**2, ge=MIN_DOWNLOAD_BYTES_PER_S, le=MAX_DOWNLOAD_BYTES_PER_S
    )

    @field_validator("allow", mode="before")
    @classmethod
    def _rules(cls, value: object) -> object:
        if not isinstance(value, list | tuple):
            return value
        normalized, seen = [], set()
        for index, entry in enumerate(value):
            if not isinstance(entry, str):
                raise ValueError(f"allow[{index}] is a string host:port, not {entry!r}")  # noqa: TRY004
            try:
                host, port, _ = parse_rule(entry)
            except ValueError as exc:
                raise ValueError(f"allow[{index}] {entry[:100]!r}: {exc}") from None
            rule = f"{host}:{port}"
            if rule in seen:
                raise ValueError(f"allow[{index}] {entry[:100]!r}: {rule} is listed twice")
            seen.add(rule)
            normalized.append(rule)
        return tuple(normalized)

    @model_validator(mode="after")
    def _ip_literals_need_the_switch(self) -> Egress:
        if not self.allow_ip_literals:
            for index, rule in enumerate(self.allow):
                if parse_rule(rule)[2].startswith("ip"):
                    raise ValueError(
                        f"allow[{index}] {rule} is an IP literal: refused unless allow_ip_literals: true"
                    )
        return self

    def rules(self) -> list[HostRule]:
        return [parse_rule(rule) for rule in self.allow]


def network_follows_egress(cls: type, data: object) -> object:
    """A profile's `sandbox.network` is `egress` exactly when the profile has an `egress` key (a
    before-validator of Profile): never written by hand, and never with gVisor."""
    if not isinstance(data, dict) or not isinstance(data.get("sandbox"), dict):
        return data
    if data["sandbox"].get("network", "none") != "none":
        raise ValueError(
            "sandbox.network is always none as written: a profile reaches the outside only through "
            "its `egress` allow-list, which gives its sandboxes the egress network"
        )
    if data.get("egress") is None:
        return data
    if data["sandbox"].get("runtime") == "runsc":
        raise ValueError(
            "egress needs runtime: runc (gVisor runs here with --network=none, so a runsc sandbox "
            "cannot reach the egress proxy)"
        )
    return {**data, "sandbox": {**data["sandbox"], "network": "egress"}}
