"""The egress side of setup: Squid (with OpenSSL, for its TLS peek), the egress network, and the
host firewall rules that leave sandboxes on that network one door: the egress proxy's port.

The network is internal (no route out of it), has a fixed subnet (the broker picks each sandbox's
address, which is how the proxy knows who asks) and no traffic between its containers
(`enable_icc=false`). The bridge's own address on the host is where the proxy listens; the INPUT
rules drop everything else a sandbox sends to the host, IPv6 included.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from gateway.egress.network import EGRESS_BRIDGE, EGRESS_PORT, EgressNetwork
from gateway.errors import SetupError
from gateway.setup.state import SetupPaths, apt_install, is_root, say

__all__ = ["ensure_egress", "firewall_rules", "network_create_argv"]

_LABEL = "sandbox-gateway.egress=true"
_CHAIN = "SGW-EGRESS-IN"
_ICC = "com.docker.network.bridge.enable_icc"
_BRIDGE = "com.docker.network.bridge.name"


def _docker(paths: SetupPaths, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "-H", f"unix://{paths.docker_socket}", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def network_create_argv(network: EgressNetwork) -> list[str]:
    return [
        "network", "create", "--driver", "bridge", "--internal",
        "--subnet", str(network.subnet), "--gateway", str(network.gateway),
        "-o", f"{_ICC}=false", "-o", f"{_BRIDGE}={EGRESS_BRIDGE}",
        "--label", _LABEL, network.name,
    ]  # fmt: skip


def _network_problem(info: dict[str, object], network: EgressNetwork) -> str | None:
    """What makes an existing network unfit to be the egress network, or None."""
    ipam = info.get("IPAM") if isinstance(info.get("IPAM"), dict) else {}
    configs = ipam.get("Config") if isinstance(ipam, dict) else None
    subnets = [c.get("Subnet") for c in configs or [] if isinstance(c, dict)]
    options = info.get("Options") if isinstance(info.get("Options"), dict) else {}
    if info.get("Driver") != "bridge" or info.get("Internal") is not True:
        return "it is not an internal bridge network"
    if subnets != [str(network.subnet)]:
        return f"its subnets are {subnets}, not [{network.subnet}]"
    if not isinstance(options, dict) or options.get(_ICC) != "false" or options.get(_BRIDGE) != EGRESS_BRIDGE:
        return f"it lacks {_ICC}=false or {_BRIDGE}={EGRESS_BRIDGE}"
    if info.get("EnableIPv6"):
        return "it has IPv6"
    return None


def _ensure_network(paths: SetupPaths, network: EgressNetwork) -> None:
    found = _docker(paths, "network", "inspect", network.name)
    if found.returncode == 0:
        info = json.loads(found.stdout)[0]
        problem = _network_problem(info, network)
        if problem is None:
            say(f"egress network {network.name} ({network.subnet}, internal, no inter-container traffic)")
            return
        if info.get("Containers"):
            raise SetupError(
                f"the network {network.name} cannot be the egress network ({problem}) and containers use it; "
                "remove them, or choose another name with --egress-network"
            )
        say(f"recreating the network {network.name}: {problem}")
        _docker(paths, "network", "rm", network.name)
    made = _docker(paths, *network_create_argv(network))
    if made.returncode != 0:
        raise SetupError(f"creating the egress network {network.name} failed: {made.stderr.strip()}")
    say(f"created the egress network {network.name} ({network.subnet} on bridge {EGRESS_BRIDGE})")


def firewall_rules(network: EgressNetwork) -> list[tuple[str, list[str]]]:
    """(tool, rule) of the chain the INPUT jump leads to: the proxy's port on the gateway address,
    and nothing else of the host, from the egress bridge."""
    return [
        ("iptables", ["-p", "tcp", "-d", str(network.gateway), "--dport", str(EGRESS_PORT), "-j", "ACCEPT"]),
        ("iptables", ["-j", "DROP"]),
        ("ip6tables", ["-j", "DROP"]),
    ]


def _ensure_firewall(network: EgressNetwork) -> None:
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} is missing: the egress network needs its INPUT rules")
        subprocess.run([tool, "-w", "-N", _CHAIN], capture_output=True, check=False)
        subprocess.run([tool, "-w", "-F", _CHAIN], capture_output=True, check=True)
        jump = ["INPUT", "-i", EGRESS_BRIDGE, "-j", _CHAIN]
        if subprocess.run([tool, "-w", "-C", *jump], capture_output=True, check=False).returncode != 0:
            subprocess.run([tool, "-w", "-I", *jump], capture_output=True, check=True)
    for tool, rule in firewall_rules(network):
        subprocess.run([tool, "-w", "-A", _CHAIN, *rule], capture_output=True, check=True)
    say(f"firewall: from {EGRESS_BRIDGE}, only tcp {network.gateway}:{EGRESS_PORT} reaches this host")


def _squid_has_openssl() -> bool:
    squid = shutil.which("squid") or "/usr/sbin/squid"
    if not Path(squid).exists():
        return False
    proc = subprocess.run([squid, "-v"], capture_output=True, text=True, timeout=30, check=False)
    return "--with-openssl" in proc.stdout


def _ensure_squid() -> None:
    """squid-openssl (plain `squid` on Debian has no TLS peek). Its own service never starts: the
    gateway runs its proxies with configurations of its own."""
    if _squid_has_openssl():
        return
    guard = Path("/usr/sbin/policy-rc.d")
    placed = not guard.exists()
    if placed:
        guard.write_text("#!/bin/sh\nexit 101\n")
        guard.chmod(0o755)
    try:
        apt_install(["squid-openssl"], "the egress proxy (profiles with an egress allow-list) needs it")
    finally:
        if placed:
            guard.unlink(missing_ok=True)
    subprocess.run(["/etc/init.d/squid", "stop"], capture_output=True, check=False, timeout=60)


def ensure_egress(paths: SetupPaths, network: EgressNetwork) -> None:
    """Squid, the egress network and its firewall rules (root only: without root, say what is missing)."""
    if not is_root():
        say("not root: skipping the egress network (profiles with egress will fail until root runs setup)")
        return
    _ensure_squid()
    _ensure_network(paths, network)
    _ensure_firewall(network)
