"""The `sandbox-gateway` command: setup, build-images, serve, socket-proxy, certs, token, policy,
audit, sandboxes, hosts, tools, ui."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.cli.audit import add_audit_commands
from gateway.cli.hosts import add_hosts_command, fleet_arguments
from gateway.cli.policy import add_policy_commands
from gateway.cli.sandboxes import add_sandbox_commands
from gateway.cli.tokens import add_token_commands
from gateway.cli.tools import add_tools_commands
from gateway.cli.ui import add_ui_commands
from gateway.config import DEFAULT_DOCKER_HOST
from gateway.errors import GatewayError

__all__ = ["main"]


def _cmd_setup(args: argparse.Namespace) -> int:
    import os

    from gateway.config import DEFAULT_IMAGE, ENV_EXECUTOR_IMAGE
    from gateway.setup import SetupPaths, run_setup

    image = args.image or os.environ.get(ENV_EXECUTOR_IMAGE) or DEFAULT_IMAGE
    paths = SetupPaths.from_env()
    images = run_setup(paths, image)
    print(f"ready: engine {paths.docker_socket}, socket proxy {paths.proxy_url}, images {', '.join(images)}")
    return 0


def _cmd_build_images(args: argparse.Namespace) -> int:
    from gateway.setup import SetupPaths
    from gateway.setup import compose_images as images

    images.build_compose_images(SetupPaths.from_env(), args.gateway_image, args.proxy_image)
    print(f"built {args.gateway_image} and {args.proxy_image}")
    if args.fleet:
        images.build_fleet_images(SetupPaths.from_env())
        print(f"built {images.DEFAULT_HAPROXY_IMAGE} and {images.DEFAULT_REDIS_IMAGE}")
    return 0


def _cmd_socket_proxy(args: argparse.Namespace) -> int:
    from gateway.sockproxy.main import run

    return run(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.cli.serve import serve

    return serve(args)


def _add_socket_proxy(sub: Any) -> None:
    from gateway.sockproxy.main import add_arguments

    proxy = sub.add_parser(
        "socket-proxy", help="the socket proxy: the only door to the Docker API (setup starts it)"
    )
    add_arguments(proxy)
    proxy.set_defaults(func=_cmd_socket_proxy)


def _cmd_certs(args: argparse.Namespace) -> int:
    from gateway.cli.certs import run

    return run(args)


def _add_certs(sub: Any) -> None:
    from gateway.cli.certs import add_arguments

    certs = sub.add_parser(
        "certs", help="make the fleet's TLS certificates: a CA, one per sandbox host, one per gateway"
    )
    add_arguments(certs)
    certs.set_defaults(func=_cmd_certs)


def _add_setup(sub: Any) -> None:
    setup = sub.add_parser("setup", help="make sure the engine, socket proxy and sandbox image are ready")
    setup.add_argument(
        "--image", help="sandbox image name (default: $MCP_EXECUTOR_IMAGE or mcp-code-executor:latest)"
    )
    setup.set_defaults(func=_cmd_setup)

    images = sub.add_parser(
        "build-images",
        help="build the compose stack's gateway and socket-proxy images without a registry",
    )
    images.add_argument("--gateway-image", default="sandbox-gateway:latest", help="tag of the gateway image")
    images.add_argument(
        "--proxy-image", default="sandbox-gateway-proxy:latest", help="tag of the socket-proxy image"
    )
    images.add_argument(
        "--fleet", action="store_true", help="also the fleet's HAProxy and Redis images (compose/fleet)"
    )
    images.set_defaults(func=_cmd_build_images)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandbox-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    _add_setup(sub)
    serve = sub.add_parser("serve", help="serve MCP over streamable HTTP at /mcp")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--tokens", type=Path, help="tokens file (without it a dev token is made and printed)")
    serve.add_argument("--policy", type=Path, help="policy file (default: the shipped default.yaml)")
    serve.add_argument(
        "--docker-host", help=f"Docker API URL (default: $DOCKER_HOST or {DEFAULT_DOCKER_HOST})"
    )
    serve.add_argument(
        "--allow-raw-socket",
        action="store_true",
        help="accept a unix:// engine socket instead of the socket proxy (unsafe)",
    )
    serve.add_argument(
        "--docker-tls-ca", type=Path, help="CA of a remote engine over TLS (or $DOCKER_CERT_PATH/ca.pem)"
    )
    serve.add_argument("--docker-tls-cert", type=Path, help="client certificate for the remote engine")
    serve.add_argument("--docker-tls-key", type=Path, help="client key for the remote engine")
    serve.add_argument("--image", help="sandbox image (default: $MCP_EXECUTOR_IMAGE or the profile's first)")
    _audit_arguments(serve)
    serve.add_argument(
        "--sandbox-uids",
        help="host uid range sandboxes run as, LOW-HIGH, each sandbox its own "
        "(default: $SGW_SANDBOX_UIDS or 2000000000-2000999999; the socket proxy's must match)",
    )
    serve.add_argument(
        "--gateway-id",
        default="default",
        help="labels this gateway's sandboxes, so several gateways can share one engine",
    )
    serve.add_argument("--keep-sandboxes", action="store_true", help="do not remove sandboxes on shutdown")
    fleet_arguments(serve)
    serve.add_argument("--tools-dir", type=Path, help="host directory mounted read-only at /tools")
    serve.add_argument(
        "--upstreams",
        type=Path,
        help="code mode: the upstream MCP servers sandbox code may call, as the policy allows "
        "(default: $SGW_UPSTREAMS)",
    )
    serve.add_argument(
        "--generate-tools",
        action="store_true",
        help="code mode: write the upstream tools' Python modules into --tools-dir at start and "
        "whenever a server's tool list changes",
    )
    serve.add_argument("--skills-dir", type=Path, help="host directory mounted read-only at /skills")
    _egress_arguments(serve)
    serve.add_argument(
        "--max-sandboxes", type=int, default=1000, help="live sandboxes at most (all principals)"
    )
    serve.add_argument("--reap-interval", type=float, default=30.0, help="seconds between expiry sweeps")
    serve.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds running calls may take to finish before sandboxes are removed",
    )
    serve.add_argument(
        "--address-rate",
        default="600/minute",
        help="requests to /mcp per client address that do not authenticate (authenticated ones count "
        "against their principal and tenant)",
    )
    serve.add_argument(
        "--sessions-per-principal", type=int, default=8, help="open MCP sessions one principal may hold"
    )
    serve.add_argument(
        "--max-sessions", type=int, default=10_000, help="open MCP sessions at most (all principals)"
    )
    serve.add_argument(
        "--session-idle-timeout",
        type=float,
        default=900.0,
        help="seconds after which an MCP session no request has used is closed",
    )
    serve.add_argument(
        "--requests-per-session", type=int, default=16, help="requests in flight at once on one MCP session"
    )
    serve.add_argument(
        "--rate-limit-storage", default="memory://", help="slowapi storage URI for rate counters"
    )
    serve.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    serve.add_argument(
        "--oauth-issuer", help="accept JWT access tokens from this issuer (OAuth 2.1 resource server)"
    )
    serve.add_argument("--oauth-audience", help="the audience JWTs must name (this gateway's resource id)")
    serve.add_argument("--oauth-jwks", help="the issuer's JWKS: a file or an https:// URL")
    serve.add_argument("--oauth-resource", help="this gateway's resource URL (default: the /mcp URL)")
    serve.add_argument("--oauth-tenant-claim", default="tenant", help="JWT claim holding the tenant")
    serve.add_argument(
        "--oauth-profile-claim", default="profile", help="JWT claim holding the policy profile"
    )
    serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        help="extra Host header value to accept (DNS-rebinding protection); repeatable",
    )
    serve.add_argument("--trusted-proxy", action="append", default=[], metavar="ADDRESS", help=(
        "a proxy in front whose X-Forwarded-For names the client (IP or network); repeatable"))  # fmt: skip
    serve.add_argument("--http-timeout", type=float, default=30.0, metavar="SECONDS", help=(
        "for a request head, a client silent mid-request, one reading nothing (default 30)"))  # fmt: skip
    serve.set_defaults(func=_cmd_serve)

    _add_socket_proxy(sub)
    _add_certs(sub)
    for add_commands in (
        add_policy_commands,
        add_audit_commands,
        add_sandbox_commands,
        add_token_commands,
        add_tools_commands,
        add_ui_commands,
        add_hosts_command,
    ):
        add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except GatewayError as exc:
        print(f"sandbox-gateway: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _audit_arguments(serve: argparse.ArgumentParser) -> None:
    """The audit log's flags: its file, rotation, durability, sinks, code HMAC key, folding."""
    serve.add_argument("--audit-log", type=Path, help="also append audit events (JSON lines) to this file")
    serve.add_argument(
        "--audit-max-bytes", type=int, default=100 * 1024 * 1024, help="rotate the file at this size"
    )
    serve.add_argument("--audit-backups", type=int, default=5, help="rotated audit files to keep")
    serve.add_argument(
        "--audit-fsync",
        choices=["never", "batch"],
        default="never",
        help="fsync the audit file after each batch of lines (batch) or leave it to the kernel (never)",
    )
    serve.add_argument("--no-audit-stdout", action="store_true", help="do not write audit events to stdout")
    serve.add_argument(
        "--audit-hmac-key-file",
        type=Path,
        help="key for HMACs of submitted code (default: $SGW_AUDIT_HMAC_KEY_FILE, else per-process)",
    )
    serve.add_argument(
        "--audit-repeat-window",
        type=float,
        default=60.0,
        help="seconds per window in which repeated auth failures and rate-limit hits from one source "
        "are written once and then counted into a summary",
    )
    serve.add_argument(
        "--audit-repeat-sources",
        type=int,
        default=512,
        help="sources tracked one by one per window; beyond, new sources are counted together",
    )


def _egress_arguments(serve: argparse.ArgumentParser) -> None:
    """Where sandboxes of profiles with `egress` get their network (setup makes it), and how the
    egress proxy resolves names."""
    serve.add_argument(
        "--egress-network", help="the egress network (default: $SGW_EGRESS_NETWORK or sandbox-gateway-egress)"
    )
    serve.add_argument("--egress-subnet", help="its subnet (default: $SGW_EGRESS_SUBNET or 10.213.0.0/24)")
    serve.add_argument(
        "--egress-state-dir",
        type=Path,
        help="the egress proxy's files (default: /run/sandbox-gateway/egress/GATEWAY_ID)",
    )
    serve.add_argument(
        "--egress-hosts-file", type=Path, help="names the egress proxy resolves before DNS (hosts format)"
    )
    serve.add_argument(
        "--egress-dns",
        action="append",
        default=[],
        help="a DNS server the egress proxy asks (repeatable; default: the host's resolv.conf)",
    )
