"""SIGTERM during calls: a call inside the grace finishes and answers; one beyond it ends with an
error; either way every execution is recorded and no sandbox is left behind."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import anyio
import pytest

from tests.e2e.conftest import Gateway, mcp_client, start_gateway

pytestmark = pytest.mark.anyio


def _events(gateway: Gateway) -> list[dict[str, object]]:
    return [json.loads(line) for line in gateway.audit_log.read_text().splitlines()]


async def _call_then_sigterm(gateway: Gateway, command: str) -> object:
    """Start `command`, send SIGTERM once it runs, and return the call's result (or its error)."""
    outcome: list[object] = []

    async def call() -> None:
        try:
            async with mcp_client(gateway.url, gateway.tokens["alice"]) as client:
                outcome.append(await client.call_tool("execute_bash", {"command": command, "timeout_s": 30}))
        except Exception as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(call)
        with anyio.fail_after(30):
            while not any(e["event"] == "exec.start" for e in _events(gateway)):
                await anyio.sleep(0.05)
        await anyio.sleep(0.5)
        assert gateway.process is not None
        gateway.process.send_signal(signal.SIGTERM)
        exit_code = await anyio.to_thread.run_sync(lambda: gateway.process.wait(timeout=60))  # type: ignore[union-attr]
        assert exit_code in (0, -signal.SIGTERM)
    return outcome[0]


async def test_a_call_running_at_sigterm_finishes_within_the_grace(tmp_path: Path, backend) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(tmp_path, "--shutdown-grace", "20")
    result = await _call_then_sigterm(gateway, "sleep 2; echo finished")
    # The client library may give up on its session when the server closes its idle event stream;
    # when the answer reaches it, it is the whole answer.
    if not isinstance(result, Exception):
        assert result.structured_content["stdout"] == "finished\n"  # type: ignore[attr-defined]
    events = _events(gateway)
    finish = [e for e in events if e["event"] == "exec.finish"]
    assert [(f["outcome"]["status"], f["outcome"]["exit_code"]) for f in finish] == [("ok", 0)]
    assert finish[0]["outcome"]["stdout_bytes"] == len("finished\n"), "the command ran to its end"
    stop = [e for e in events if e["event"] == "gateway.stop"]
    assert stop and stop[-1]["detail"]["calls_interrupted"] == 0
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


async def test_a_call_beyond_the_grace_is_ended_and_recorded(tmp_path: Path, backend) -> None:  # type: ignore[no-untyped-def]
    gateway = start_gateway(tmp_path, "--shutdown-grace", "1")
    await _call_then_sigterm(gateway, "sleep 25; echo never")
    events = _events(gateway)
    started = [e for e in events if e["event"] == "exec.start"]
    finish = [e for e in events if e["event"] == "exec.finish"]
    assert len(started) == len(finish) == 1, "the interrupted execution is recorded"
    assert finish[0]["outcome"].get("exit_code") != 0
    assert all("never" not in line for line in gateway.audit_log.read_text().splitlines())
    stop = [e for e in events if e["event"] == "gateway.stop"]
    assert stop and stop[-1]["detail"]["sandboxes_removed"] >= 1
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []
