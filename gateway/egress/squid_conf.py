"""The egress proxy's two Squid configurations, rendered from the gateway's settings and policy.

**front** listens on the egress network's gateway address, the only port sandboxes reach. It is a
plain HTTP proxy (no TLS interception), so every refusal is a real `403` whose page names the
rule: it asks the ACL helper (source address -> profile -> allow-list) before anything is
resolved, then resolves the name itself and refuses any blocked address (loopback, private,
link-local, metadata, this host's own). Allowed CONNECTs go on to **tls**, on loopback only, which
peeks at the TLS ClientHello and splices the tunnel only when the SNI is the CONNECT host and the
name still resolves to an allowed address (checked in the process that connects, just before it
connects); otherwise it closes the connection. Squid cannot answer a refusal with a 403 on a port
that peeks at TLS, hence two processes (SECURITY.md, "Egress").
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.egress.network import EGRESS_PORT, EgressNetwork
from policy.egress_model import Egress
from policy.egress_names import BLOCKED_NETWORKS

__all__ = ["LOG_FIELDS", "ProxyLayout", "front_conf", "tls_conf"]

#: One access-log line: `key=value` pairs, values URL-encoded where a client or helper sets them.
LOG_FIELDS = (
    ("ts", "%ts.%03tu"), ("src", "%>a"), ("src_port", "%>p"), ("up_port", "%<lp"), ("method", "%rm"),
    ("host", "%#>rd"), ("port", "%>rP"), ("server", "%<a"), ("status", "%>Hs"), ("squid", "%Ss"),
    ("up", "%>st"), ("down", "%<st"), ("ms", "%tr"), ("sni", "%#ssl::>sni"),
    ("principal", "%#{principal}note"), ("tenant", "%#{tenant}note"), ("profile", "%#{profile}note"),
    ("rule", "%#{rule}note"), ("msg", "%#{message}note"), ("err", "%err_code"),
)  # fmt: skip
_PROFILE_ACL = re.compile(r"[^A-Za-z0-9]")


@dataclass(frozen=True, slots=True)
class ProxyLayout:
    """Where one gateway's egress proxy keeps its files, and how it is reached."""

    network: EgressNetwork
    state_dir: Path
    tls_port: int
    #: Proves to the tls stage that a CONNECT comes from front (so it may trust X-Forwarded-For).
    stage_token: str
    python: str
    hosts_file: Path | None = None
    dns: tuple[str, ...] = ()
    #: Addresses this host holds: never a destination either.
    host_addresses: tuple[str, ...] = field(default=())

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def log(self, stage: str) -> Path:
        return self.run_dir / f"{stage}-access.log"

    def conf(self, stage: str) -> Path:
        return self.state_dir / f"{stage}.conf"

    @property
    def policy_file(self) -> Path:
        return self.state_dir / "policy.json"

    def helper(self, phase: str) -> str:
        return f"{self.python} -I -S {self.state_dir / 'helper' / 'acl_helper.py'} {phase} {self.policy_file}"


def _blocked(layout: ProxyLayout) -> list[str]:
    # IPv4-mapped IPv6 is left to the IPv4 ranges: Squid reads ::ffff:0:0/96 as 0.0.0.0/0.
    nets = [str(net) for net in BLOCKED_NETWORKS if not (net.version == 6 and net.prefixlen == 96)]
    for address in layout.host_addresses:
        parsed = ipaddress.ip_address(address)
        if not any(parsed in net for net in BLOCKED_NETWORKS if net.version == parsed.version):
            nets.append(str(parsed))
    return nets


def _common(layout: ProxyLayout, stage: str) -> list[str]:
    run = layout.run_dir
    fmt = " ".join(f"{key}={code}" for key, code in LOG_FIELDS)
    lines = [
        f"logformat egress {fmt}",
        f"pid_filename {run / (stage + '.pid')}",
        f"cache_log {run / (stage + '-cache.log')}",
        f"access_log stdio:{layout.log(stage)} logformat=egress",
        f"coredump_dir {run}",
        "cache_store_log none",
        "netdb_filename none",
        "logfile_rotate 0",
        "cache deny all",
        "cache_mem 4 MB",
        f"error_directory {layout.state_dir / 'errors'}",
        "visible_hostname egress-proxy",
        "httpd_suppress_version_string on",
        "via off",
        "shutdown_lifetime 1 seconds",
        "pinger_enable off",
        "client_db on",
        "request_start_timeout 15 seconds",  # a connection that sends no request is not held
        "log_fqdn off",
        f"hosts_file {layout.state_dir / 'hosts' if layout.hosts_file else 'none'}",  # files.py copies it
        f"acl sandbox_net src {layout.network.subnet}",
        "acl CONNECT method CONNECT",
        "acl blocked_addr dst " + " ".join(_blocked(layout)),
    ]
    if layout.dns:
        lines.append("dns_nameservers " + " ".join(layout.dns))
    return lines


def _acl_name(profile: str) -> str:
    return "p_" + _PROFILE_ACL.sub("_", profile) + f"_{len(profile)}"


def front_conf(layout: ProxyLayout, profiles: Mapping[str, Egress]) -> str:
    """front.conf for these egress profiles (their limits are lines here; their allow-lists are
    in policy.json, which the helper re-reads on change)."""
    network = layout.network
    lines = [
        *_common(layout, "front"),
        f"http_port {network.gateway}:{EGRESS_PORT}",
        f"cache_peer 127.0.0.1 parent {layout.tls_port} 0 no-query no-digest no-netdb-exchange default "
        "name=tlsstage",
        "cache_peer_access tlsstage allow CONNECT",
        "cache_peer_access tlsstage deny all",
        "never_direct allow CONNECT",
        # Only front's own word reaches the tls stage: the sandbox's address alone (never a chain a
        # client sent) and a token no client can send (its own copy is dropped).
        "forwarded_for truncate",
        "request_header_access X-Forwarded-For deny !CONNECT",
        "request_header_access X-Egress-Stage-Token deny all",
        f'request_header_add X-Egress-Stage-Token "{layout.stage_token}" CONNECT',
        "acl methods_ok method GET HEAD POST PUT PATCH DELETE OPTIONS",
        "external_acl_type egress_connect ttl=0 negative_ttl=0 children-max=8 children-startup=1 "
        f"concurrency=100 %>a %>rm %>rd %>rP {layout.helper('connect')}",
        "acl egress_ok external egress_connect",
        "deny_info ERR_EGRESS egress_ok",
        "deny_info ERR_EGRESS_ADDR blocked_addr",
        "deny_info ERR_EGRESS_METHOD methods_ok",
    ]
    limits, pools = [], []
    for index, (name, egress) in enumerate(sorted(profiles.items()), start=1):
        acl = _acl_name(name)
        lines += [
            f"acl {acl} note profile {name}",
            f"acl {acl}_conns maxconn {egress.max_connections}",
            f"deny_info ERR_EGRESS_LIMIT {acl}_conns",
        ]
        limits.append(f"http_access deny {acl} {acl}_conns")
        rate = egress.download_bytes_per_s
        pools += [
            f"delay_class {index} 3",
            f"delay_parameters {index} -1/-1 -1/-1 {rate}/{rate}",
            f"delay_access {index} allow {acl}",
            f"delay_access {index} deny all",
        ]
    lines += [
        "http_access deny !sandbox_net",
        "http_access deny !egress_ok",  # before anything resolves: a refused name is never looked up
        "http_access deny !CONNECT !methods_ok",
        *limits,
        "http_access deny blocked_addr",  # Squid resolves here: any resolved address blocked -> 403
        "http_access allow sandbox_net",
        "http_access deny all",
    ]
    if pools:
        lines += [f"delay_pools {len(profiles)}", *pools]
    return "\n".join(lines) + "\n"


def tls_conf(layout: ProxyLayout, cert: Path, key: Path) -> str:
    """tls.conf: reached by front only; never refuses at http_access (that would make Squid
    intercept TLS to show an error), only closes."""
    token = re.escape(layout.stage_token)
    return (
        "\n".join(
            [
                *_common(layout, "tls"),
                f"http_port 127.0.0.1:{layout.tls_port} ssl-bump tls-cert={cert} tls-key={key} "
                "generate-host-certificates=off",
                f"acl stage_token req_header X-Egress-Stage-Token ^{token}$",
                "follow_x_forwarded_for allow stage_token",
                "follow_x_forwarded_for deny all",
                "external_acl_type egress_sni ttl=0 negative_ttl=0 children-max=8 children-startup=1 "
                f"concurrency=100 %>a %>rd %>rP %ssl::>sni {layout.helper('sni')}",
                "acl sni_ok external egress_sni",
                "acl sni_verified note clt_conn_tag sni-verified",
                "http_access allow CONNECT stage_token sandbox_net",
                "http_access allow CONNECT sni_verified",
                "http_access deny all",
                "acl step1 at_step SslBump1",
                "acl step2 at_step SslBump2",
                # Squid hands the SNI to the helper as sent: only a plain name may get that far (a
                # space or a newline in it would split the helper's line).
                "acl sni_plain ssl::server_name_regex ^[A-Za-z0-9.-]{1,253}$",
                "ssl_bump peek step1",
                "ssl_bump terminate step2 !sni_plain",
                "ssl_bump terminate step2 blocked_addr",
                "ssl_bump splice step2 sni_ok",
                "ssl_bump terminate all",
                "on_unsupported_protocol respond all",
            ]
        )
        + "\n"
    )


def error_pages() -> Iterable[tuple[str, str]]:
    """The proxy's own refusal pages: (name, template). `%o` is the helper's message."""
    page = (
        "<html><head><title>403 egress refused</title></head><body>\n"
        '<h1>Egress refused by the sandbox gateway</h1>\n<p id="reason">{}</p>\n</body></html>\n'
    )
    yield "ERR_EGRESS", page.format("%o")
    yield (
        "ERR_EGRESS_ADDR",
        page.format(
            "egress refused: %H resolves to a loopback, private, link-local, metadata or this host's own "
            "address (rule: blocked-address)"
        ),
    )
    yield (
        "ERR_EGRESS_LIMIT",
        page.format(
            "egress refused: too many connections open at once from this sandbox (rule: max-connections)"
        ),
    )
    yield "ERR_EGRESS_METHOD", page.format("egress refused: method %M is not allowed (rule: method)")
