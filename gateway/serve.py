"""`sandbox-gateway serve`: wire settings, policy, audit, backend and app, then run uvicorn."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys

import uvicorn

from gateway.app import build_app
from gateway.auditing import build_audit
from gateway.backend.docker_engine import DockerBackend
from gateway.broker import Broker
from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.service import ExecutionService
from gateway.telemetry import configure_telemetry
from gateway.tokens import TokenStore
from policy import PolicyError, Principal, load_policy
from policy.engine import PolicyEngine

__all__ = ["serve"]


def serve(args: argparse.Namespace) -> int:
    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        docker_host=args.docker_host,
        allow_raw_socket=args.allow_raw_socket,
        image=args.image,
        policy_file=args.policy,
        tokens_file=args.tokens,
        audit_log=args.audit_log,
        audit_max_bytes=args.audit_max_bytes,
        audit_backups=args.audit_backups,
        audit_stdout=not args.no_audit_stdout,
        audit_hmac_key_file=args.audit_hmac_key_file,
        gateway_id=args.gateway_id,
        remove_on_shutdown=not args.keep_sandboxes,
        tools_path=args.tools_dir,
        skills_path=args.skills_dir,
        allowed_hosts=tuple(args.allowed_host),
        reap_interval_s=args.reap_interval,
        max_sandboxes=args.max_sandboxes,
    )
    logging.basicConfig(
        level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
    dev_token = None
    if settings.tokens_file is None:
        dev_token = "sgw_" + secrets.token_urlsafe(32)
        tokens.add(
            dev_token, Principal(id="dev", tenant="default", profile="default", auth_method="dev-token")
        )
    elif len(tokens) == 0:
        raise ConfigError(
            f"{settings.tokens_file} holds no tokens; create one with `sandbox-gateway token create`"
        )

    backend = DockerBackend(settings.docker_host, pool_size=settings.docker_workers * 2)
    broker = Broker(
        backend,
        audit,
        gateway_id=settings.gateway_id,
        tools_path=settings.tools_path,
        skills_path=settings.skills_path,
        workers=settings.docker_workers,
        max_sandboxes=settings.max_sandboxes,
    )
    service = ExecutionService(engine, broker, audit)

    def flush() -> None:
        backend.close()
        audit.close()
        telemetry.shutdown()

    app = build_app(settings, service=service, tokens=tokens, audit=audit, image=image, on_shutdown=flush)
    url = f"http://{settings.host}:{settings.port}/mcp"
    print(
        f"Sandbox Gateway: MCP endpoint {url} "
        f"(policy {engine.digest[:12]}, engine via {settings.docker_host})",
        file=sys.stderr,
        flush=True,
    )
    if dev_token is not None:
        print(f"dev token (principal 'dev'): {dev_token}", file=sys.stderr, flush=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        server_header=False,
        timeout_keep_alive=15,
        timeout_graceful_shutdown=40,
        h11_max_incomplete_event_size=64 * 1024,
        lifespan="on",
    )
    return 0
