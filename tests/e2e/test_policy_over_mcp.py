"""Profiles and policy reload as an MCP client sees them."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from mcp import Client

from gateway.backend.docker_engine import DockerBackend
from policy import load_policy
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway
from tests.support import audit_events, eventually_async

pytestmark = pytest.mark.anyio


def write_policy(path: Path, mutate: dict[str, object] | None = None) -> Path:
    doc = load_policy().model_dump(mode="json")
    doc["principals"] = {"sam": "strict"}
    for dotted, value in (mutate or {}).items():
        node = doc
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("profiled")
    policy = write_policy(tmp / "policy.yaml")
    running = start_gateway(tmp, "--policy", str(policy), principals={"alice": "default", "sam": "default"})
    yield running
    stop_gateway(running)
    assert backend.list({"sandbox-gateway.gateway": running.gateway_id}) == []


async def test_a_tool_allowed_for_one_profile_is_denied_for_another(profiled: Gateway) -> None:
    async with mcp_client(profiled.url, profiled.tokens["alice"]) as alice:
        allowed = await alice.call_tool("execute_bash", {"command": "echo hi"})
    async with mcp_client(profiled.url, profiled.tokens["sam"]) as sam:
        denied = await sam.call_tool("execute_bash", {"command": "echo hi"})
        python = await sam.call_tool("execute_python", {"code": "print('strict ok')"})
    assert allowed.structured_content and allowed.structured_content["stdout"] == "hi\n"
    assert denied.is_error and "tool-not-allowed" in denied.content[0].text  # type: ignore[union-attr]
    assert python.structured_content and python.structured_content["stdout"] == "strict ok\n"


async def test_sandbox_info_and_reset_over_mcp(profiled: Gateway) -> None:
    async with mcp_client(profiled.url, profiled.tokens["alice"]) as alice:
        await alice.call_tool("execute_bash", {"command": "echo x > /workspace/f"})
        info = await alice.call_tool("sandbox_info", {})
        reset = await alice.call_tool("reset_sandbox", {})
        after = await alice.call_tool("execute_bash", {"command": "ls /workspace"})
    assert info.structured_content is not None
    assert info.structured_content["profile"] == "default"
    assert info.structured_content["sandbox"]["up_to_date"] is True
    assert reset.structured_content == {"reset": True}
    assert after.structured_content and after.structured_content["stdout"] == ""
    async with mcp_client(profiled.url, profiled.tokens["sam"]) as sam:
        sam_info = await sam.call_tool("sandbox_info", {})
        sam_reset = await sam.call_tool("reset_sandbox", {})
    assert sam_info.structured_content and sam_info.structured_content["runtime"] == "runsc"
    assert sam_reset.is_error, "strict does not list reset_sandbox"


async def test_sighup_reloads_a_valid_policy_and_keeps_the_old_one_on_a_bad_file(
    tmp_path: Path, backend: DockerBackend
) -> None:
    policy = write_policy(tmp_path / "policy.yaml")
    gateway = start_gateway(tmp_path, "--policy", str(policy))
    try:
        async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
            assert not (await client.call_tool("execute_bash", {"command": "true"})).is_error
            write_policy(policy, {"profiles.default.tools": ["execute_python"]})
            gateway.process.send_signal(signal.SIGHUP)
            denied = await _eventually_error(client, "tool-not-allowed")
            policy.write_text(
                "version: 1\nprofiles: {default: {tools: [execute_bash], sandbox: {privileged: true}}}\n"
            )
            gateway.process.send_signal(signal.SIGHUP)
            await eventually_async(
                lambda: audit_events(gateway.audit_log, "policy.reload", outcome="rejected"),
                message="no policy.reload rejected event",
            )
            still = await client.call_tool("execute_bash", {"command": "true"})
        assert denied
        assert still.is_error and "tool-not-allowed" in still.content[0].text  # type: ignore[union-attr]
        reloads = audit_events(gateway.audit_log, "policy.reload")
        assert [r["outcome"]["status"] for r in reloads] == ["ok", "rejected"]
        assert "no-privileged" in reloads[1]["outcome"]["error"]
    finally:
        stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


async def _eventually_error(client: Client, code: str) -> bool:
    async def refused() -> bool:
        result = await client.call_tool("execute_bash", {"command": "true"})
        return result.is_error and code in result.content[0].text  # type: ignore[union-attr]

    return await eventually_async(refused, message=f"execute_bash never failed with {code}")
