"""`sandbox-gateway hosts`: the sandbox hosts of a hosts file, asked directly: whether each answers,
how many of the fleet's sandboxes it holds against its capacity, whether it drains, its labels.
Also the `serve` flags of fleet mode."""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway.config import ENV_HOSTS_FILE, ENV_REPLICA_ID
from gateway.errors import ConfigError, GatewayError
from gateway.fleet.hosts import HostsFile, HostSpec, load_hosts

__all__ = ["add_hosts_command", "fleet_arguments"]


def fleet_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--hosts-file",
        type=Path,
        help=f"fleet mode: the sandbox hosts (YAML; default ${ENV_HOSTS_FILE}); replaces DOCKER_HOST",
    )
    serve.add_argument(
        "--replica-id",
        help=f"fleet mode: this gateway's name among the replicas sharing --gateway-id (${ENV_REPLICA_ID})",
    )


def _ask(host: HostSpec, hosts: HostsFile, gateway_id: str) -> dict[str, Any]:
    from gateway.fleet.status import connect_host  # noqa: PLC0415 - loads docker: this command only
    from gateway.sandboxes.naming import managed_by  # noqa: PLC0415

    row: dict[str, Any] = {
        "name": host.name,
        "address": host.address,
        "capacity": host.capacity,
        "drain": host.drain,
        "labels": dict(host.labels),
    }
    engine = connect_host(host, hosts, timeout_s=hosts.health.probe_timeout_s, pool_size=1)
    try:
        engine.ping()
        rows = engine.list(managed_by(gateway_id))
    except GatewayError as exc:
        return {**row, "state": "down", "sandboxes": None, "error": exc.message}
    finally:
        engine.close()
    running = sum(1 for r in rows if r.running)
    return {**row, "state": "up", "sandboxes": len(rows), "running": running, "error": None}


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'HOST':<16} {'STATE':<6} {'SANDBOXES':>11} {'DRAIN':<5} {'ADDRESS':<28} LABELS / ERROR"]
    for row in rows:
        count = "-" if row["sandboxes"] is None else f"{row['sandboxes']}/{row['capacity']}"
        tail = row["error"] or ",".join(f"{k}={v}" for k, v in sorted(row["labels"].items()))
        drain = "yes" if row["drain"] else "no"
        lines.append(
            f"{row['name']:<16} {row['state']:<6} {count:>11} {drain:<5} {row['address']:<28} {tail}"
        )
    return "\n".join(lines)


def _cmd_hosts(args: argparse.Namespace) -> int:
    path = args.hosts_file or (Path(os.environ[ENV_HOSTS_FILE]) if os.environ.get(ENV_HOSTS_FILE) else None)
    if path is None:
        raise ConfigError(f"which hosts? pass --hosts-file or set ${ENV_HOSTS_FILE}")
    hosts = load_hosts(path)
    with ThreadPoolExecutor(max_workers=min(16, len(hosts.hosts))) as pool:
        rows = list(pool.map(lambda host: _ask(host, hosts, args.gateway_id), hosts.hosts))
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0 if all(row["state"] == "up" for row in rows) else 1


def add_hosts_command(sub: Any) -> None:
    hosts = sub.add_parser(
        "hosts",
        help="list the sandbox hosts of a hosts file: up or down, sandboxes/capacity, drain, labels "
        "(exit 1 when one does not answer)",
    )
    hosts.add_argument("--hosts-file", type=Path, help=f"the hosts file (default ${ENV_HOSTS_FILE})")
    hosts.add_argument("--gateway-id", default="default", help="the fleet's `serve --gateway-id`")
    hosts.add_argument("--json", action="store_true", help="one JSON object per host")
    hosts.set_defaults(func=_cmd_hosts)
