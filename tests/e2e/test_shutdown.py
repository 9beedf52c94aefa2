"""SIGTERM during calls: a call inside the grace finishes and answers; one beyond it ends with an
error; either way every execution is recorded and no sandbox is left behind."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import Gateway, mcp_client, start_gateway
from tests.support import audit_events, eventually_async
from tests.support.sandboxes import commands_in_sandboxes

pytestmark = pytest.mark.anyio


async def _call_then_sigterm(gateway: Gateway, backend: DockerBackend, command: str, runs: str) -> Any:
    """Start `command`, send SIGTERM once `runs` (one of its commands) runs in the sandbox, and return
    the call's result (or its error)."""
    outcome: list[Any] = []

    async def call() -> None:
        try:
            async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
                outcome.append(await client.call_tool("execute_bash", {"command": command, "timeout_s": 30}))
        except Exception as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call)
        await eventually_async(
            lambda: tuple(runs.split()) in commands_in_sandboxes(backend, gateway.gateway_id),
            timeout_s=30,
            interval_s=0.05,
            message=f"`{runs}` never ran in the sandbox",
        )
        gateway.process.send_signal(signal.SIGTERM)
        exit_code = await anyio.to_thread.run_sync(lambda: gateway.process.wait(timeout=60))
        assert exit_code in (0, -signal.SIGTERM)
    return outcome[0]


async def test_a_call_running_at_sigterm_finishes_within_the_grace(
    tmp_path: Path, backend: DockerBackend
) -> None:
    gateway = start_gateway(tmp_path, "--shutdown-grace", "20")
    result = await _call_then_sigterm(gateway, backend, "sleep 2; echo finished", runs="sleep 2")
    # The client library may give up on its session when the server closes its idle event stream;
    # when the answer reaches it, it is the whole answer.
    if not isinstance(result, Exception):
        assert result.structured_content["stdout"] == "finished\n"
    finish = audit_events(gateway.audit_log, "exec.finish")
    assert [(f["outcome"]["status"], f["outcome"]["exit_code"]) for f in finish] == [("ok", 0)]
    assert finish[0]["outcome"]["stdout_bytes"] == len("finished\n"), "the command ran to its end"
    stop = audit_events(gateway.audit_log, "gateway.stop")
    assert stop and stop[-1]["detail"]["calls_interrupted"] == 0
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


async def test_a_call_beyond_the_grace_is_ended_and_recorded(tmp_path: Path, backend: DockerBackend) -> None:
    gateway = start_gateway(tmp_path, "--shutdown-grace", "1")
    await _call_then_sigterm(gateway, backend, "sleep 25; echo never", runs="sleep 25")
    started = audit_events(gateway.audit_log, "exec.start")
    finish = audit_events(gateway.audit_log, "exec.finish")
    assert len(started) == len(finish) == 1, "the interrupted execution is recorded"
    assert finish[0]["outcome"].get("exit_code") != 0
    assert all("never" not in line for line in gateway.audit_log.read_text().splitlines())
    stop = audit_events(gateway.audit_log, "gateway.stop")
    assert stop and stop[-1]["detail"]["sandboxes_removed"] >= 1
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []
