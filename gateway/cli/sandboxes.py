"""`sandbox-gateway sandboxes`: a gateway's sandboxes on the engine, and which principal owns each.

A sandbox made for a principal names its owner in its labels (`sandbox-gateway.principal` and
`.tenant`). A sandbox from the warm pool was made before it had an owner: it carries the `pool`
label and no principal, and labels cannot change after a create, so when it is handed out it keeps
them and only its name changes, to its principal's sandbox name (gateway/sandboxes/naming.py). For
such a sandbox the name is the record of its owner. The name is a digest of the gateway id and
`tenant/principal`: a given principal can be checked against it (`--principal`), an unknown one
cannot be read back out of it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.backend.base import Backend, ContainerInfo
from gateway.config import Settings
from gateway.sandboxes.naming import (
    POOL,
    POOL_PREFIX,
    PRINCIPAL,
    PROFILE,
    TENANT,
    managed_by,
    sandbox_name,
    uid_of,
)
from policy import Principal

__all__ = [
    "ENV_GATEWAY_ID",
    "Listed",
    "add_sandbox_commands",
    "describe",
    "listing",
    "lookup",
    "matching",
    "render_table",
]

#: The gateway id the compose files pass to `serve --gateway-id`; this command's default too.
ENV_GATEWAY_ID = "SGW_GATEWAY_ID"
#: The tenant of a principal whose credential names none (policy.Principal's default).
DEFAULT_TENANT = Principal("").tenant
_UNKNOWN_OWNER_NOTE = (
    "?: taken from the warm pool and handed out; its labels still say pool, and only its name "
    "records the owner: `--principal ID [--tenant T]` finds it"
)


@dataclass(frozen=True, slots=True)
class Listed:
    """One sandbox of a gateway as the engine shows it, with its owner when it is known."""

    id: str
    name: str
    tenant: str | None
    principal: str | None
    #: Where the owner was read: "labels" (made for the principal) or "name" (a handed-out pooled
    #: sandbox whose name is the given principal's); None when no owner is known.
    owner_from: str | None
    #: Made for the warm pool (its labels say `pool`, whoever owns it now).
    pooled: bool
    #: A pooled sandbox renamed to a principal's sandbox name: in use, not waiting in the pool.
    handed_out: bool
    #: The profile the sandbox was made for (its label; for a pooled one, one with the same spec).
    profile: str
    uid: int
    created: float
    running: bool

    @property
    def owner(self) -> str | None:
        """`tenant/principal`, or None."""
        return f"{self.tenant}/{self.principal}" if self.principal is not None else None

    @property
    def state(self) -> str:
        return "running" if self.running else "not running"

    @property
    def pool_state(self) -> str:
        if not self.pooled:
            return "no"
        return "handed out" if self.handed_out else "waiting"

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner,
            "tenant": self.tenant,
            "principal": self.principal,
            "owner_from": self.owner_from,
            "pooled": self.pooled,
            "handed_out": self.handed_out,
            "profile": self.profile,
            "uid": self.uid,
            "created": _iso(self.created),
            "state": self.state,
        }


def _iso(timestamp: float) -> str:
    if timestamp <= 0:
        return ""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def describe(info: ContainerInfo, gateway_id: str, candidates: Collection[tuple[str, str]] = ()) -> Listed:
    """What `info` is and who owns it: the labels' principal, or, for a pooled sandbox handed out,
    the one of `candidates` ((tenant, principal) pairs) whose sandbox name it bears."""
    labels = info.labels
    pooled = labels.get(POOL) == "true"
    handed_out = pooled and not info.name.startswith(POOL_PREFIX)
    tenant: str | None = None
    principal: str | None = None
    owner_from: str | None = None
    if labels.get(PRINCIPAL):
        tenant, principal, owner_from = labels.get(TENANT) or DEFAULT_TENANT, labels[PRINCIPAL], "labels"
    elif handed_out:
        for candidate_tenant, candidate in candidates:
            if sandbox_name(gateway_id, f"{candidate_tenant}/{candidate}") == info.name:
                tenant, principal, owner_from = candidate_tenant, candidate, "name"
                break
    return Listed(
        id=info.id,
        name=info.name,
        tenant=tenant,
        principal=principal,
        owner_from=owner_from,
        pooled=pooled,
        handed_out=handed_out,
        profile=labels.get(PROFILE, ""),
        uid=uid_of(labels),
        created=info.created,
        running=info.running,
    )


def listing(
    backend: Backend, gateway_id: str, *, principal: str | None = None, tenant: str | None = None
) -> list[Listed]:
    """Every sandbox of the gateway (one engine list call), oldest first; a pooled one handed out
    is attributed to `principal` (of `tenant`, default DEFAULT_TENANT) when it bears its name."""
    candidates = [(tenant or DEFAULT_TENANT, principal)] if principal is not None else []
    return sorted(
        (describe(info, gateway_id, candidates) for info in backend.list(managed_by(gateway_id))),
        key=lambda row: (row.created, row.name),
    )


def lookup(
    backend: Backend, gateway_id: str, *, principal: str | None = None, tenant: str | None = None
) -> list[Listed]:
    """The gateway's sandboxes, oldest first. With `principal` (of `tenant`, default DEFAULT_TENANT)
    only that principal's, a pooled one handed out to it included; with `tenant` alone, those whose
    owner is known to be of that tenant."""
    rows = listing(backend, gateway_id, principal=principal, tenant=tenant)
    return matching(rows, principal=principal, tenant=tenant)


def matching(rows: Sequence[Listed], *, principal: str | None, tenant: str | None) -> list[Listed]:
    """The rows `lookup` keeps for these filters."""
    if principal is not None:
        return [row for row in rows if (row.tenant, row.principal) == (tenant or DEFAULT_TENANT, principal)]
    if tenant is not None:
        return [row for row in rows if row.tenant == tenant]
    return list(rows)


def _owner_cell(row: Listed) -> str:
    if row.owner is not None:
        return row.owner
    return "?" if row.handed_out else "-"


def render_table(rows: Sequence[Listed]) -> str:
    """The rows as aligned columns, with a note under them when an owner is unknown."""
    header = ("NAME", "OWNER", "OWNER FROM", "POOL", "PROFILE", "UID", "CREATED", "STATE", "ID")
    cells = [
        (
            row.name,
            _owner_cell(row),
            row.owner_from or "-",
            row.pool_state,
            row.profile or "-",
            str(row.uid) if row.uid >= 0 else "-",
            _iso(row.created) or "-",
            row.state,
            row.id[:12],
        )
        for row in rows
    ]
    table = [header, *cells]
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    if any(row.owner is None and row.handed_out for row in rows):
        lines += ["", _UNKNOWN_OWNER_NOTE]
    return "\n".join(lines)


def _backend(settings: Settings) -> Backend:
    # docker loads only for the commands that talk to the engine.
    from gateway.backend.docker_engine import DockerBackend, tls_config  # noqa: PLC0415

    tls = tls_config(*map(str, settings.docker_tls)) if settings.docker_tls else None
    return DockerBackend(settings.docker_host, tls=tls)


def _run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()  # DOCKER_HOST (the socket proxy) and DOCKER_TLS_VERIFY, as `serve`
    backend = _backend(settings)
    try:
        every = listing(backend, args.gateway_id, principal=args.principal, tenant=args.tenant)
    finally:
        backend.close()
    rows = matching(every, principal=args.principal, tenant=args.tenant)
    if args.json:
        print(json.dumps([row.as_json() for row in rows], indent=2))
    elif rows:
        print(render_table(rows))
    gateway = f"gateway {args.gateway_id!r}"
    if args.principal is not None:
        if not rows:
            owner = f"{args.tenant or DEFAULT_TENANT}/{args.principal}"
            print(f"no sandbox of {owner} on {gateway}", file=sys.stderr)
            return 1
        return 0
    if args.tenant is not None and (
        unknown := sum(1 for row in every if row.handed_out and row.owner is None)
    ):
        print(
            f"{unknown} sandbox(es) of {gateway} came from the warm pool and have an owner only by name: "
            "name the principal with --principal to check one",
            file=sys.stderr,
        )
    if not rows and not args.json:
        print(
            f"no sandbox of {gateway}{f' for tenant {args.tenant!r}' if args.tenant else ''}", file=sys.stderr
        )
    return 0


def add_sandbox_commands(sub: Any) -> None:
    parser = sub.add_parser(
        "sandboxes",
        help="list this gateway's sandboxes on the engine with their owners (pooled ones included)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--principal",
        metavar="ID",
        help="only this principal's sandbox (found by name if it came from the pool)",
    )
    parser.add_argument(
        "--tenant",
        metavar="T",
        help=f"the principal's tenant (default {DEFAULT_TENANT!r}); alone: sandboxes whose owner is of T",
    )
    parser.add_argument(
        "--gateway-id",
        metavar="G",
        default=os.environ.get(ENV_GATEWAY_ID) or "default",
        help=f"the gateway's `serve --gateway-id` (default: ${ENV_GATEWAY_ID} or 'default')",
    )
    parser.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    parser.set_defaults(func=_run)
