"""`sandbox-gateway serve`: settings from the flags, the core (gateway/wiring.py), the app, uvicorn."""

from __future__ import annotations

import argparse
import gc
import logging
import secrets
import sys

import uvicorn

from gateway.auth.oauth import JWTVerifier, OAuthSettings
from gateway.auth.tokens import TokenStore
from gateway.auth.verifier import GatewayTokenVerifier
from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.fdlimit import raise_open_file_limit
from gateway.http.app import build_app
from gateway.http.server_protocol import BoundedHttpProtocol
from gateway.telemetry import configure_telemetry
from gateway.uids import UidRange, host_accounts_in
from gateway.wiring import build_audit, build_core
from policy import PolicyError, load_policy
from policy.engine import PolicyEngine

__all__ = ["serve"]


def _oauth_settings(args: argparse.Namespace, settings: Settings) -> OAuthSettings | None:
    given = [args.oauth_issuer, args.oauth_audience, args.oauth_jwks]
    if not any(given):
        return None
    if not all(given):
        raise ConfigError("OAuth needs --oauth-issuer, --oauth-audience and --oauth-jwks together")
    scheme = "https" if settings.tls_cert else "http"
    return OAuthSettings(
        issuer=args.oauth_issuer,
        audience=args.oauth_audience,
        jwks=args.oauth_jwks,
        resource_url=args.oauth_resource or f"{scheme}://{settings.host}:{settings.port}/mcp",
        tenant_claim=args.oauth_tenant_claim,
        profile_claim=args.oauth_profile_claim,
    )


def serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        docker_host=args.docker_host,
        allow_raw_socket=args.allow_raw_socket,
        docker_tls_ca=args.docker_tls_ca,
        docker_tls_cert=args.docker_tls_cert,
        docker_tls_key=args.docker_tls_key,
        image=args.image,
        policy_file=args.policy,
        tokens_file=args.tokens,
        audit_log=args.audit_log,
        audit_max_bytes=args.audit_max_bytes,
        audit_backups=args.audit_backups,
        audit_fsync=args.audit_fsync,
        audit_stdout=not args.no_audit_stdout,
        audit_hmac_key_file=args.audit_hmac_key_file,
        audit_repeat_window_s=args.audit_repeat_window,
        audit_repeat_sources=args.audit_repeat_sources,
        gateway_id=args.gateway_id,
        remove_on_shutdown=not args.keep_sandboxes,
        tools_path=args.tools_dir,
        upstreams_file=args.upstreams,
        generate_tools=args.generate_tools or None,
        skills_path=args.skills_dir,
        egress_network=args.egress_network,
        egress_subnet=args.egress_subnet,
        egress_state_dir=args.egress_state_dir,
        egress_hosts_file=args.egress_hosts_file,
        egress_dns=tuple(args.egress_dns) or None,
        allowed_hosts=tuple(args.allowed_host),
        trusted_proxies=tuple(args.trusted_proxy),
        http_timeout_s=args.http_timeout,
        reap_interval_s=args.reap_interval,
        shutdown_grace_s=args.shutdown_grace,
        max_sandboxes=args.max_sandboxes,
        address_rate=args.address_rate,
        rate_limit_storage=args.rate_limit_storage,
        sessions_per_principal=args.sessions_per_principal,
        max_sessions=args.max_sessions,
        session_idle_timeout_s=args.session_idle_timeout,
        requests_per_session=args.requests_per_session,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        sandbox_uids=args.sandbox_uids,
        hosts_file=args.hosts_file,
        replica_id=args.replica_id,
    )
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    raise_open_file_limit(settings.max_sandboxes, f"--max-sandboxes {settings.max_sandboxes}")
    try:
        policy = load_policy(settings.policy_file)
    except PolicyError as exc:
        raise ConfigError(f"policy: {exc}") from exc
    engine = PolicyEngine(policy)
    default = policy.profiles.get("default") or next(iter(policy.profiles.values()))
    image = settings.image or default.sandbox.image_names()[0]
    if image not in default.sandbox.image_names():
        raise ConfigError(
            f"image {image!r} is not in the default profile's images {list(default.sandbox.image_names())}"
        )
    audit = build_audit(settings, policy)
    telemetry = configure_telemetry()

    tokens = TokenStore(settings.tokens_file)
    oauth = _oauth_settings(args, settings)
    dev_token = None
    if settings.tokens_file is None and oauth is None:
        dev_token = "sgw_" + secrets.token_urlsafe(32)
        tokens.add(dev_token, "dev")
    elif settings.tokens_file is not None and len(tokens) == 0:
        raise ConfigError(
            f"{settings.tokens_file} holds no tokens; create one with `sandbox-gateway token create`"
        )
    verifier = GatewayTokenVerifier(tokens, JWTVerifier(oauth) if oauth else None)

    uids = UidRange.parse(settings.sandbox_uids)
    if accounts := host_accounts_in(uids):
        raise ConfigError(
            f"the sandbox uid range {uids} holds host accounts ({'; '.join(accounts[:5])}): sandboxes "
            f"would share their kernel limits; choose a free range with --sandbox-uids"
        )
    # Request rates are enforced per HTTP request (429) by the app, not again per tool call.
    core = build_core(settings, engine, audit, enforce_request_rate=False, principals=tokens)

    def flush() -> None:
        core.backend.close()
        audit.close()
        telemetry.shutdown()

    app = build_app(settings, core, verifier=verifier, image=image, on_shutdown=flush)
    url = f"http://{settings.host}:{settings.port}/mcp"
    print(
        f"Sandbox Gateway: MCP endpoint {url} "
        f"(policy {engine.digest[:12]}, "
        + (
            f"sandbox hosts from {settings.hosts_file})"
            if settings.hosts_file
            else f"engine via {settings.docker_host}{' over TLS' if settings.docker_tls else ''})"
        ),
        file=sys.stderr,
        flush=True,
    )
    if dev_token is not None:
        print(f"dev token (principal 'dev'): {dev_token}", file=sys.stderr, flush=True)
    # What start-up made lives as long as the process: full collections need not walk it again.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        # uvloop when installed; llhttp (httptools) within the gateway's bounds on heads, framing,
        # pipelining and time (gateway/http/server_protocol.py).
        loop="auto",
        http=BoundedHttpProtocol.with_timeout(settings.http_timeout_s),
        log_level=settings.log_level.lower(),
        # An access line per request only where the log level would show it (it costs a call's
        # worth of formatting even when filtered out); the audit log records every call anyway.
        access_log=settings.log_level in ("DEBUG", "INFO"),
        server_header=False,
        # The peer address is the client's unless the operator names a proxy in front: forwarding
        # headers say whatever a client writes in them (uvicorn would trust them from 127.0.0.1),
        # and the address budget and the audit's source_ip must not be the client's to choose.
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=list(settings.trusted_proxies) or None,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        lifespan="on",
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )
    return 0
