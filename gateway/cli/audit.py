"""`sandbox-gateway audit verify FILE`: check the hash chain of an audit log and its rotations."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from audit import rotated_files
from audit.chain import GENESIS, verify_lines
from gateway.errors import ConfigError

__all__ = ["add_audit_commands"]


def _numbered(files: list[Path]) -> Iterator[tuple[str, str]]:
    for path in files:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                yield f"{path}:{number}", line.rstrip("\n")


def _verify(args: argparse.Namespace) -> int:
    files = rotated_files(args.file)
    if not files:
        raise ConfigError(f"{args.file} does not exist")
    report = verify_lines(_numbered(files), expect_genesis=args.from_genesis)
    names = ", ".join(p.name for p in files)
    if not report.ok:
        print(f"BROKEN at {report.broken_at}: {report.problem}")
        return 1
    start = (
        "genesis"
        if report.first_prev_hash == GENESIS
        else f"{report.first_prev_hash} (older lines rotated away)"
    )
    print(f"OK: {report.lines} events in {names}; chain from {start} to {report.last_hash}")
    return 0


def add_audit_commands(sub: Any) -> None:
    audit = sub.add_parser("audit", help="work with audit logs")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = commands.add_parser(
        "verify", help="verify the hash chain; exit 1 at the first broken or missing line"
    )
    verify.add_argument(
        "file", type=Path, help="the audit log; its rotations FILE.N ... FILE.1 are read first"
    )
    verify.add_argument("--from-genesis", action="store_true", help="require the chain to start at genesis")
    verify.set_defaults(func=_verify)
