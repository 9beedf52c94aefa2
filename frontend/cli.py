"""`python -m frontend` and `sandbox-gateway ui`: serve the web console (needs the `ui` extra)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from frontend.config import DEFAULT_HOST, DEFAULT_PORT, ENV_URL, UiConfig

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


def run(args: argparse.Namespace) -> int:
    try:
        config = UiConfig.from_env(args.mcp_server_url, args.host, args.port)
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
    print(
        f"web console on http://{config.host}:{config.port} for the gateway at {config.gateway_url}",
        file=sys.stderr,
    )
    launch(config)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m frontend", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
