"""`sandbox-gateway tools generate`: Python modules for the sandbox from the upstreams file's servers."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import anyio

from gateway.upstream import Upstreams, generate, load_upstreams
from gateway.upstream.codegen import GenerationReport

__all__ = ["add_tools_commands"]


async def _run(args: argparse.Namespace) -> GenerationReport:
    async with Upstreams(load_upstreams(args.upstreams)) as upstreams:
        return await generate(upstreams, args.out, package=args.package)


def _generate(args: argparse.Namespace) -> int:
    # Connection failures are in the report; the clients' own warnings would repeat them.
    logging.getLogger("sandbox_gateway.upstream").setLevel(logging.ERROR)
    report = anyio.run(_run, args)
    for server, tools in sorted(report.tools.items()):
        print(f"{server}: {len(tools)} tool(s): {', '.join(tools) or '-'}")
    for server, why in report.unavailable.items():
        print(f"{server}: unavailable, its modules were kept: {why}", file=sys.stderr)
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    changed = ", ".join(report.written) or "nothing"
    removed = f"; removed {', '.join(report.removed)}" if report.removed else ""
    print(f"{report.out}: wrote {changed}{removed}")
    return 1 if report.unavailable else 0


def add_tools_commands(sub: Any) -> None:
    tools = sub.add_parser("tools", help="Python modules for code mode's upstream MCP tools")
    commands = tools.add_subparsers(dest="tools_command", required=True)

    generate_cmd = commands.add_parser(
        "generate",
        help="write a module per exposed upstream tool into a directory for /tools; exit status 1 "
        "if a server could not be listed (its earlier modules are kept)",
    )
    generate_cmd.add_argument("--upstreams", type=Path, required=True, help="the upstreams file (YAML)")
    generate_cmd.add_argument(
        "--out", type=Path, required=True, help="output directory (made by this command)"
    )
    generate_cmd.add_argument(
        "--package", help="import prefix INDEX.md shows, e.g. `upstream` for `from upstream.notes import ...`"
    )
    generate_cmd.set_defaults(func=_generate)
