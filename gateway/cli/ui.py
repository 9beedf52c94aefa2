"""`sandbox-gateway ui`: the web console, an MCP client of a gateway (Gradio loads only when it runs)."""

from __future__ import annotations

from typing import Any

from frontend.cli import add_arguments, run

__all__ = ["add_ui_commands"]


def add_ui_commands(sub: Any) -> None:
    ui = sub.add_parser(
        "ui", help="serve the web console for people (needs the ui extra; reads $MCP_SERVER_URL)"
    )
    add_arguments(ui)
    ui.set_defaults(func=run)
