"""What the code-mode e2e tests share: a gateway with code mode on (its policy, upstreams and generated
tool modules), running Python as a principal, and reading the upstream calls the gateway recorded."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from policy.loader import default_policy_path
from tests.conftest import mountable_dir
from tests.e2e.conftest import mcp_client, start_gateway, stop_gateway
from tests.support import audit_events
from tests.support.gateway_process import Gateway

if TYPE_CHECKING:
    from gateway.backend.docker_engine import DockerBackend

__all__ = ["code_mode_gateway", "code_mode_policy", "run_python", "upstream_calls"]


def code_mode_policy(profile: str, code_mode: dict[str, Any], **top: Any) -> dict[str, Any]:
    """The shipped policy plus `profile`, extending `default` with `code_mode`; `top` replaces
    top-level keys (`audit`, say)."""
    policy = yaml.safe_load(default_policy_path().read_text())
    policy["profiles"][profile] = {"extends": "default", "code_mode": code_mode}
    return {**policy, **top}


@contextlib.contextmanager
def code_mode_gateway(
    work: Path, policy: dict[str, Any], upstreams: Path, principals: dict[str, str], backend: DockerBackend
) -> Iterator[tuple[Gateway, Path]]:
    """A gateway with `policy` and the `upstreams` file, writing the tools' modules into a tools
    directory the socket proxy lets sandboxes mount; on exit it is stopped, the directory removed,
    and no sandbox of it may be left."""
    (work / "policy.yaml").write_text(yaml.safe_dump(policy))
    tools = mountable_dir("tools")
    try:
        gateway = start_gateway(
            work,
            "--policy", str(work / "policy.yaml"),
            "--upstreams", str(upstreams),
            "--tools-dir", str(tools),
            "--generate-tools",
            principals=principals,
        )  # fmt: skip
        try:
            yield gateway, tools
        finally:
            stop_gateway(gateway)
    finally:
        shutil.rmtree(tools, ignore_errors=True)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


async def run_python(gateway: Gateway, who: str, code: str, timeout_s: float | None = None) -> dict[str, Any]:
    """`execute_python` of `code` as `who`; its structured result."""
    arguments: dict[str, Any] = {"code": code}
    if timeout_s is not None:
        arguments["timeout_s"] = timeout_s
    async with mcp_client(gateway.url, gateway.tokens[who]) as client:
        result = await client.call_tool("execute_python", arguments)
    assert result.structured_content is not None, result
    return dict(result.structured_content)


def _flat(event: dict[str, Any]) -> dict[str, Any]:
    """An upstream.call event's facts: status, error, server, tool, principal, request_id, ..."""
    upstream, outcome = event.get("upstream") or {}, event.get("outcome") or {}
    return {
        **upstream,
        **outcome,
        "principal": (event.get("actor") or {}).get("principal"),
        "request_id": event.get("request_id"),
    }


def upstream_calls(gateway: Gateway, **match: Any) -> list[dict[str, Any]]:
    """The upstream.call events (flattened) whose facts match."""
    flat = [_flat(e) for e in audit_events(gateway.audit_log, "upstream.call")]
    return [e for e in flat if all(e.get(k) == v for k, v in match.items())]
