"""`python -m frontend` and `sandbox-gateway ui`: serve the web console (needs the `ui` extra)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from frontend.config import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET_FILE,
    ENV_ISSUER,
    ENV_PUBLIC_URL,
    ENV_SCOPES,
    ENV_URL,
    OAuthOptions,
    UiConfig,
)

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--mcp-server-url",
        help=f"the gateway's MCP endpoint (default: ${ENV_URL} or http://127.0.0.1:8000/mcp)",
    )
    oauth = parser.add_argument_group("sign-in through the gateway's OAuth issuer (off without a client id)")
    oauth.add_argument(
        "--oauth-client-id", help=f"the console's client id at the issuer (default: ${ENV_CLIENT_ID})"
    )
    oauth.add_argument(
        "--oauth-client-secret-file",
        help=f"file with the client secret of a confidential client (default: ${ENV_CLIENT_SECRET_FILE})",
    )
    oauth.add_argument(
        "--public-url",
        help=f"the console's origin as browsers reach it; the issuer redirects to <it>/oauth/callback "
        f"(default: ${ENV_PUBLIC_URL}, else http://HOST:PORT)",
    )
    oauth.add_argument(
        "--oauth-issuer",
        help=f"which of the issuers the gateway names to use (default: ${ENV_ISSUER}, else the first)",
    )
    oauth.add_argument(
        "--oauth-scopes",
        help=f"scopes to ask for, space-separated (default: ${ENV_SCOPES}, else the gateway's list)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        options = OAuthOptions(
            args.oauth_client_id,
            args.oauth_client_secret_file,
            args.public_url,
            args.oauth_issuer,
            args.oauth_scopes,
        )
        config = UiConfig.from_env(args.mcp_server_url, args.host, args.port, options)
    except ValueError as exc:
        print(f"sandbox-gateway ui: {exc}", file=sys.stderr)
        return 2
    try:
        from frontend.app import launch
    except ImportError as exc:
        print(
            "sandbox-gateway ui: the web console needs the ui extra "
            f"(pip install 'sandbox-gateway[ui]'): {exc}",
            file=sys.stderr,
        )
        return 2
    signin = f"; OAuth sign-in as client {config.oauth.client_id}" if config.oauth else ""
    print(
        f"web console on http://{config.host}:{config.port} for the gateway at {config.gateway_url}{signin}",
        file=sys.stderr,
    )
    launch(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontend", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
