"""`sandbox-gateway socket-proxy`: listen (unix socket, owner-only; or TCP on a private network),
forward to the engine's unix socket."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import logging
import os
import signal
import ssl
import stat
import sys
from pathlib import Path

import structlog

from gateway.backend.create_body import SECCOMP_DIR, seccomp_options
from gateway.config import DEFAULT_DOCKER_SOCKET, DEFAULT_PROXY_SOCKET, ENV_SANDBOX_UIDS
from gateway.egress.network import DEFAULT_EGRESS_SUBNET, EgressNetwork
from gateway.errors import ConfigError
from gateway.fdlimit import raise_open_file_limit
from gateway.sockproxy.rules import ProxyRules
from gateway.sockproxy.server import ProxyServer
from gateway.uids import DEFAULT_UID_RANGE, UidRange, host_accounts_in

__all__ = ["add_arguments", "rules_from_args", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        action="append",
        help=f"unix:PATH (default unix:{DEFAULT_PROXY_SOCKET}), tls:HOST:PORT (client certificates "
        "required: --tls-cert, --tls-key, --tls-client-ca) or tcp:HOST:PORT (a private network only); "
        "repeatable",
    )
    parser.add_argument("--tls-cert", type=Path, help="this proxy's certificate (PEM), for tls: listeners")
    parser.add_argument("--tls-key", type=Path, help="its private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="CA that signs the gateways' client certificates")
    parser.add_argument("--engine", default=DEFAULT_DOCKER_SOCKET, help="the engine's unix socket")
    parser.add_argument(
        "--sandbox-uids",
        default=os.environ.get(ENV_SANDBOX_UIDS) or DEFAULT_UID_RANGE,
        help=f"host uid range of sandboxes (default: ${ENV_SANDBOX_UIDS} or {DEFAULT_UID_RANGE})",
    )
    parser.add_argument(
        "--mount-source", action="append", default=[], help="a host directory allowed at /tools or /skills"
    )
    parser.add_argument(
        "--mount-root", action="append", default=[], help="a directory whose subdirectories may be mounted"
    )
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        help="an image (name:tag) sandboxes may be made from; repeatable; none given: any image",
    )
    parser.add_argument(
        "--egress-network",
        help="the egress network (made by setup) that sandboxes of egress profiles may join; "
        "default: none may (every sandbox has network none)",
    )
    parser.add_argument(
        "--egress-subnet", default=DEFAULT_EGRESS_SUBNET, help="its subnet (default %(default)s)"
    )
    parser.add_argument(
        "--max-connections", type=int, default=4096, help="connections open at once (each sandbox holds one)"
    )
    parser.add_argument(
        "--log-repeat-window",
        type=float,
        default=60.0,
        help="seconds in which repeated refusals from one client are written once per rule, then counted",
    )
    parser.add_argument(
        "--socket-group", help="group that may use the unix socket (mode 0660); default: owner only (0600)"
    )


def rules_from_args(args: argparse.Namespace) -> ProxyRules:
    uids = UidRange.parse(args.sandbox_uids)
    if accounts := host_accounts_in(uids):
        raise ConfigError(
            f"the sandbox uid range {uids} holds host accounts ({'; '.join(accounts[:5])}); "
            "choose a range no account, group or subordinate id range uses"
        )
    for path in (*args.mount_source, *args.mount_root):
        if not os.path.isabs(path) or os.path.normpath(path) != path:
            raise ConfigError(f"mount directory {path!r} must be an absolute, normalised path")
    return ProxyRules(
        uid_low=uids.low,
        uid_high=uids.high,
        seccomp_options=seccomp_options(SECCOMP_DIR),
        mount_sources=frozenset(args.mount_source),
        mount_roots=tuple(args.mount_root),
        images=frozenset(_tagged(image) for image in args.image),
        egress=EgressNetwork.parse(args.egress_network, args.egress_subnet) if args.egress_network else None,
    )


def _tagged(image: str) -> str:
    """`name` -> `name:latest`, as the engine lists its tags."""
    return image if ":" in image.rpartition("/")[2] else f"{image}:latest"


def _configure_logging() -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(sort_keys=True),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def _tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    """Server TLS that requires a client certificate from the given CA (and no other)."""
    if not (args.tls_cert and args.tls_key and args.tls_client_ca):
        raise ConfigError("a tls: listener needs --tls-cert, --tls-key and --tls-client-ca")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.tls_cert, args.tls_key)
    context.load_verify_locations(cafile=args.tls_client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _listen(server: ProxyServer, spec: str, args: argparse.Namespace) -> asyncio.base_events.Server:
    kind, _, where = spec.partition(":")
    group = args.socket_group
    if kind == "unix":
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if path.is_socket() or path.is_symlink():
            path.unlink()  # a stale socket of a proxy that died
        old_umask = os.umask(0o177)
        try:
            listener = await asyncio.start_unix_server(server.serve_connection, str(path), limit=1 << 18)
        finally:
            os.umask(old_umask)
        if group:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP)
        return listener
    if kind in ("tcp", "tls"):
        host, _, port = where.rpartition(":")
        if not port.isdigit() or not host:
            raise ConfigError(f"--listen {spec!r}: expected {kind}:HOST:PORT (a private network's address)")
        context = _tls_context(args) if kind == "tls" else None
        return await asyncio.start_server(
            server.serve_connection, host, int(port), limit=1 << 18, ssl=context
        )
    raise ConfigError(f"--listen {spec!r}: expected unix:PATH, tls:HOST:PORT or tcp:HOST:PORT")


async def _serve(args: argparse.Namespace) -> None:
    # Each connection may be a sandbox's stream, relayed on a connection of its own to the engine.
    raise_open_file_limit(2 * args.max_connections, f"--max-connections {args.max_connections}")
    server = ProxyServer(
        rules_from_args(args),
        args.engine,
        max_connections=args.max_connections,
        repeat_window_s=args.log_repeat_window,
    )
    listeners = [
        await _listen(server, spec, args) for spec in args.listen or [f"unix:{DEFAULT_PROXY_SOCKET}"]
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server.log.info(
        "proxy.start",
        listen=args.listen,
        engine=args.engine,
        sandbox_uids=f"{server.decider.rules.uid_low}-{server.decider.rules.uid_high}",
        mount_sources=sorted(server.decider.rules.mount_sources),
        mount_roots=list(server.decider.rules.mount_roots),
        images=sorted(server.decider.rules.images) or "any",
    )
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        server.flush_repeats()
    for listener in listeners:
        listener.close()
    server.flush_repeats(everything=True)
    server.log.info("proxy.stop", **server.stats())


def run(args: argparse.Namespace) -> int:
    _configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0
