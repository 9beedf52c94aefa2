"""`sandbox-gateway token create | list | revoke`."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from gateway.auth.tokens import DEFAULT_SCOPES, SCOPES, TokenStore, parse_duration

__all__ = ["add_token_commands"]


def _create(args: argparse.Namespace) -> int:
    scopes = tuple(args.scope) if args.scope else DEFAULT_SCOPES
    expires_in = parse_duration(args.expires_in) if args.expires_in else None
    token = TokenStore(args.tokens).create(
        args.principal, args.profile, args.tenant, scopes=scopes, expires_in=expires_in
    )
    print(
        f"token for principal {args.principal!r} (profile {args.profile!r}, scopes {' '.join(scopes)}); "
        "it is shown only once:",
        file=sys.stderr,
    )
    print(token)
    return 0


def _list(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC)
    print(
        f"{'id':<12}  {'principal':<20} {'tenant':<12} {'profile':<14} {'state':<8} {'created':<25} "
        f"{'expires':<25} scopes"
    )
    for entry in TokenStore(args.tokens).entries():
        expires = entry.expires.isoformat(timespec="seconds") if entry.expires else "never"
        print(
            f"{entry.id:<12}  {entry.principal:<20} {entry.tenant:<12} {entry.profile:<14} "
            f"{entry.state(now):<8} {entry.created.isoformat(timespec='seconds'):<25} {expires:<25} "
            f"{' '.join(entry.scopes)}"
        )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    count = TokenStore(args.tokens).revoke(token_id=args.id, principal=args.principal)
    print(f"revoked {count} token(s)")
    return 0 if count else 1


def add_token_commands(sub: Any) -> None:
    token = sub.add_parser("token", help="manage API tokens (the file keeps hashes only)")
    commands = token.add_subparsers(dest="token_command", required=True)

    create = commands.add_parser("create", help="make a token; prints it once, as the last line")
    create.add_argument("--principal", required=True)
    create.add_argument("--profile", default="default")
    create.add_argument("--tenant", default="default")
    create.add_argument(
        "--scope",
        action="append",
        choices=sorted(SCOPES),
        help=f"repeatable; default: {' '.join(DEFAULT_SCOPES)}",
    )
    create.add_argument("--expires-in", help="lifetime like 30d, 12h, 90m (default: no expiry)")
    create.add_argument("--tokens", type=Path, required=True, help="tokens file to append to")
    create.set_defaults(func=_create)

    listing = commands.add_parser("list", help="principal, profile, state, created, expires; never the token")
    listing.add_argument("--tokens", type=Path, required=True)
    listing.set_defaults(func=_list)

    revoke = commands.add_parser("revoke", help="revoke by token id or every token of a principal")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the id shown by `token list`")
    which.add_argument("--principal")
    revoke.add_argument("--tokens", type=Path, required=True)
    revoke.set_defaults(func=_revoke)
