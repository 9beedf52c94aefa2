"""`sandbox-gateway ui`: the web console, an MCP client of a gateway (Gradio loads only when it runs).

The console is the top-level `frontend` package; an install without it (the gateway's own image)
still has every other command, and `ui` says what is missing.
"""

from __future__ import annotations

import argparse
from typing import Any

from gateway.errors import ConfigError

__all__ = ["add_ui_commands"]


def add_ui_commands(sub: Any) -> None:
    ui = sub.add_parser(
        "ui", help="serve the web console for people (needs the ui extra; reads $MCP_SERVER_URL)"
    )
    try:
        from frontend.cli import add_arguments, run  # noqa: PLC0415 - absent from gateway-only installs
    except ImportError:
        ui.set_defaults(func=_not_installed)
        return
    add_arguments(ui)
    ui.set_defaults(func=run)


def _not_installed(_args: argparse.Namespace) -> int:
    raise ConfigError("the web console is not installed here: install sandbox-gateway with its ui extra")
