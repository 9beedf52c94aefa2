"""`sandbox-gateway certs`: the fleet's CA, a server certificate per sandbox host, a client
certificate per gateway (gateway/setup/fleet_certs.py), and the lines that use them.

The X.509 code loads when the command runs, not whenever the command line is parsed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.setup.fleet_certs import FleetCerts, HostSpec

__all__ = ["add_arguments", "hosts_file", "proxy_command", "report", "run"]

#: Where the printed lines expect the files: a host's hosts/NAME/ and a gateway's clients/ go here.
INSTALL_DIR = "/etc/sandbox-gateway/fleet"
#: The port a sandbox host's socket proxy listens on with TLS (Docker's own TLS port).
PROXY_PORT = 2376


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory to write to; an existing CA in it (ca.pem, ca-key.pem) is reused",
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME=ADDR",
        help="a sandbox host: its name and the IP address or DNS name gateways reach it at; repeatable",
    )
    parser.add_argument(
        "--client",
        action="append",
        metavar="NAME",
        help="a gateway client certificate to make; repeatable (default: 'gateway', kept as it is "
        "if DIR already has it)",
    )
    parser.add_argument(
        "--days",
        type=int,
        help="how long host and client certificates are valid (default: 365; the CA: 10 years)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing host and client keys")


def run(args: argparse.Namespace) -> int:
    from gateway.setup import fleet_certs  # noqa: PLC0415 - cryptography's X.509, for this command only

    hosts = [fleet_certs.parse_host(spec) for spec in args.host]
    days = fleet_certs.DEFAULT_DAYS if args.days is None else args.days
    made = fleet_certs.make_fleet_certs(args.out, hosts, args.client, days=days, force=args.force)
    print(report(made))
    return 0


def proxy_command(host: HostSpec) -> str:
    """The socket-proxy line for a host whose hosts/NAME/ files are in INSTALL_DIR."""
    return (
        f"sandbox-gateway socket-proxy --listen tls:0.0.0.0:{PROXY_PORT} "
        f"--tls-cert {INSTALL_DIR}/server.pem --tls-key {INSTALL_DIR}/server-key.pem "
        f"--tls-client-ca {INSTALL_DIR}/ca.pem"
    )


def _host_entries(hosts: list[HostSpec]) -> list[str]:
    entries = []
    for host in hosts:
        entries += [f"  - name: {host.name}", f"    address: {host.url(PROXY_PORT)}"]
    return entries


def hosts_file(hosts: list[HostSpec], client: str) -> str:
    """A hosts file (--hosts-file) naming `hosts`, for a gateway whose clients/ files are in INSTALL_DIR."""
    lines = [
        "tls:",
        f"  ca: {INSTALL_DIR}/ca.pem",
        f"  cert: {INSTALL_DIR}/{client}.pem",
        f"  key: {INSTALL_DIR}/{client}-key.pem",
        "hosts:",
    ]
    return "\n".join([*lines, *_host_entries(hosts)])


def report(made: FleetCerts) -> str:
    """What was written, and how to use it: each host's socket-proxy line, the gateways' hosts file."""
    out = made.out
    lines = [f"in {out} ({'its CA, reused' if made.ca_reused else 'a new fleet CA'}):"]
    width = max(len(str(path.relative_to(out))) for path, _ in made.files)
    lines += [f"  {path.relative_to(out)!s:<{width}}  {state}" for path, state in made.files]
    issued = [path for path, state in made.files if state in ("new", "replaced") and path.parent != out]
    if issued and made.not_after is not None:
        lines.append(f"host and client certificates made now expire on {made.not_after:%Y-%m-%d}")
    lines.append(f"{out / 'ca-key.pem'} signs for the whole fleet: keep it here, on no gateway or host.")
    if made.hosts:
        lines += ["", f"On each sandbox host, copy {out}/hosts/NAME/ to {INSTALL_DIR}/ and run:"]
        lines += [f"  {host.name}: {proxy_command(host)}" for host in made.hosts]
        lines += [
            "  (with --image and --mount-source as for any socket proxy; let only the gateways reach",
            f"  port {PROXY_PORT})",
        ]
    client = made.clients[0]  # the default one, made or kept, when none was named
    if (out / "clients" / f"{client}.pem", "kept") in made.files:
        # The gateways have their pair and a hosts file already: only the new hosts are news.
        if made.hosts:
            lines += ["", "On each gateway, add to `hosts:` in its hosts file (--hosts-file):", ""]
            lines += _host_entries(made.hosts)
    else:
        files = f"{out}/clients/ca.pem, {client}.pem and {client}-key.pem"
        lines += [
            "",
            f"On each gateway, copy {files} to {INSTALL_DIR}/; its hosts file (--hosts-file):",
            "",
            hosts_file(made.hosts, client),
        ]
        if not made.hosts:
            lines.append(f"  # the fleet's hosts, each `- name: NAME` and `address: tcp://ADDR:{PROXY_PORT}`")
    return "\n".join(lines)
