"""A gateway killed with SIGKILL and restarted: its sandboxes are swept or adopted, nothing is orphaned,
and the audit chain continues."""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import anyio
import pytest

from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import mcp_client, start_gateway, stop_gateway
from tests.e2e.test_cli import cli
from tests.e2e.test_policy_over_mcp import write_policy

pytestmark = pytest.mark.anyio


async def run(url: str, token: str, command: str) -> str:
    async with mcp_client(url, token) as client:
        result = await client.call_tool("execute_bash", {"command": command})
    assert result.structured_content is not None, result.content
    return str(result.structured_content["stdout"])


def _name(principal: str, tenant: str = "default") -> str:
    """The sandbox name a gateway gives a principal (see Broker._name)."""
    return "sgw-" + hashlib.sha256(f"restart-test\0{tenant}/{principal}".encode()).hexdigest()[:16]


def _pooled(name: str) -> bool:
    return name.startswith("sgw-pool-")


async def test_sigkill_then_restart_adopts_current_sandboxes_and_removes_stale_ones(
    tmp_path: Path, backend: DockerBackend
) -> None:
    policy = write_policy(tmp_path / "policy.yaml")
    first = start_gateway(
        tmp_path,
        "--policy",
        str(policy),
        "--gateway-id",
        "restart-test",
        principals={"alice": "default", "bob": "data-science"},
    )
    tokens, audit_log = first.tokens, first.audit_log
    await run(first.url, tokens["alice"], "echo survived > /workspace/state")
    await run(first.url, tokens["bob"], "true")
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=30)
    owned = [r for r in backend.list({"sandbox-gateway.gateway": "restart-test"}) if not _pooled(r.name)]
    assert sorted(r.name for r in owned) == sorted([_name("alice"), _name("bob")]), "SIGKILL left them"

    # bob's profile gets a stricter sandbox spec: his sandbox is stale; alice's is current.
    write_policy(policy, {"profiles.data-science.sandbox.pids_limit": 200})
    (tmp_path / "second").mkdir()
    second = start_gateway(
        tmp_path / "second",
        "--policy",
        str(policy),
        "--gateway-id",
        "restart-test",
        "--tokens",
        str(tmp_path / "tokens.jsonl"),
        "--audit-log",
        str(audit_log),
        principals={},
    )
    try:
        left = backend.list({"sandbox-gateway.gateway": "restart-test"})
        assert [row.name for row in left if not _pooled(row.name)] == [_name("alice")]
        assert await run(second.url, tokens["alice"], "cat /workspace/state") == "survived\n"
    finally:
        stop_gateway(second)
    assert backend.list({"sandbox-gateway.gateway": "restart-test"}) == []
    verify = cli("audit", "verify", str(audit_log), "--from-genesis")
    assert verify.returncode == 0, verify.stdout
    await anyio.sleep(0)
