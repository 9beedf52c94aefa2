"""What the egress e2e tests share: the outside world, a gateway whose profile `web` has an egress
allow-list (one per host at a time: its proxy holds the egress port), and running commands in a
principal's sandbox with the world's CA at hand."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from policy.loader import default_policy_path
from tests.e2e.conftest import mcp_client, start_gateway, stop_gateway
from tests.support.egress_lock import egress_port
from tests.support.egress_world import DNS_IP, World
from tests.support.gateway_process import Gateway

__all__ = ["bash", "egress_arguments", "egress_gateway", "egress_policy", "outside_world", "with_ca"]


@contextlib.contextmanager
def outside_world(workdir: Path) -> Iterator[World]:
    world = World(workdir)
    world.start()
    try:
        yield world
    finally:
        world.stop()


def egress_policy(path: Path, egress: dict[str, Any]) -> list[str]:
    """The shipped policy plus `web` (default with `egress`) at `path`; its `--policy` arguments."""
    doc = yaml.safe_load(default_policy_path().read_text())
    doc["profiles"]["web"] = {"extends": "default", "egress": egress}
    path.write_text(yaml.safe_dump(doc))
    return ["--policy", str(path)]


def egress_arguments(world: World) -> list[str]:
    """The gateway's egress proxy resolves names as the world says (its hosts file, then its DNS)."""
    return ["--egress-hosts-file", str(world.hosts_path), "--egress-dns", DNS_IP]


@contextlib.contextmanager
def egress_gateway(
    work: Path, world: World, egress: dict[str, Any], principals: dict[str, str], backend: Any
) -> Iterator[Gateway]:
    """A gateway for `principals` with profile `web` = `egress`; on exit none of its sandboxes is left."""
    policy = egress_policy(work / "policy.yaml", egress)
    with egress_port():
        gateway = start_gateway(work, *policy, *egress_arguments(world), principals=principals)
        try:
            yield gateway
        finally:
            stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == [], "no sandbox is left"


async def bash(gateway: Gateway, who: str, command: str, timeout_s: float = 30) -> dict[str, Any]:
    async with mcp_client(gateway.url, gateway.tokens[who]) as client:
        result = await client.call_tool("execute_bash", {"command": command, "timeout_s": timeout_s})
    assert result.structured_content is not None, result
    return dict(result.structured_content)


async def with_ca(gateway: Gateway, who: str, world: World, command: str) -> dict[str, Any]:
    """`command` in `who`'s sandbox, with the world's CA at ./ca.pem."""
    return await bash(gateway, who, f"cat > ca.pem <<'EOF'\n{world.ca_pem}EOF\n{command}")
