"""Faults against the real engine: dockerd restarted while idle and while a call runs.

The engine restarted here is a private one (`tests.support.engine`: a second dockerd with its own
data root, exec root, containerd, socket and network namespace, and setup's daemon.json), behind a
private socket proxy (the project's own). The shared engine other tests use is never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from tests.conftest import IMAGE
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway
from tests.e2e.test_cli import cli
from tests.support import (
    EventuallyFailed,
    audit_events,
    eventually,
    eventually_async,
    matching,
    settled_events,
)
from tests.support.engine import ENGINES, PrivateEngine, clean, clean_stale_engines, processes_mentioning
from tests.support.proxy import PrivateProxy

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@dataclass
class Rig:
    engine: PrivateEngine
    proxy: PrivateProxy
    gateway: Gateway


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Private engine, private proxy, gateway. Afterwards: no container left in the engine, no process
    of the rig left running, nothing mounted, the directory gone (its logs are kept in pytest's tmp)."""
    clean_stale_engines()
    engine = PrivateEngine(ENGINES / uuid.uuid4().hex[:8])
    proxy = PrivateProxy(engine.root, docker_socket=engine.socket, image=IMAGE)
    gateway: Gateway | None = None
    try:
        started = time.monotonic()
        engine.start()
        engine.load_image(IMAGE)
        print(f"\nprivate engine up and sandbox image loaded in {time.monotonic() - started:.1f} s")
        proxy.start()
        (engine.root / "gateway").mkdir()
        gateway = start_gateway(engine.root / "gateway", "--docker-host", proxy.url)
        yield Rig(engine, proxy, gateway)
        if engine.process is None:
            engine.start()
        stop_gateway(gateway)
        gateway = None
        assert engine.containers() == [], "the gateway left containers in the private engine"
    finally:
        try:
            if gateway is not None:
                gateway.process.kill()
                gateway.process.wait(timeout=30)
            proxy.stop()
            engine.stop(containerd_too=True)
            # A container's shim exits just after its container is gone: give it a bounded moment.
            with contextlib.suppress(EventuallyFailed):
                eventually(lambda: not processes_mentioning(str(engine.root)), timeout_s=15, interval_s=0.2)
            # A shim whose container the engine lost track of across its restart (the engine no
            # longer lists it) outlives containerd: it is the engine's, not the gateway's; end it.
            for pid, cmdline in processes_mentioning(str(engine.root)):
                if cmdline.startswith(b"/usr/bin/containerd-shim"):
                    print(f"\nended a shim the private engine lost: {cmdline[:160]!r}")
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(EventuallyFailed):
                eventually(lambda: not processes_mentioning(str(engine.root)), timeout_s=5, interval_s=0.2)
            left = processes_mentioning(str(engine.root))
        finally:
            logs = tmp_path_factory.mktemp("engine-restart-logs")
            for log in ("dockerd.log", "gateway/gateway.log", "gateway/audit.jsonl"):
                with contextlib.suppress(OSError):
                    shutil.copy(engine.root / log, logs)
            clean(engine.root)
    assert left == [], f"processes of the rig still run: {left}"
    mounts = Path("/proc/self/mounts").read_text()
    assert f"{engine.root}/" not in mounts and not engine.root.exists(), "the rig's directory is gone"


async def call(rig: Rig, command: str) -> Any:
    async with mcp_client(rig.gateway.url, rig.gateway.tokens["alice"]) as client:
        return await client.call_tool("execute_bash", {"command": command})


def sandboxes(rig: Rig) -> list[str]:
    """The principals' sandboxes (not the warm pool's unassigned ones)."""
    rows = (
        rig.engine.docker(
            "ps",
            "-a",
            "--no-trunc",
            "--format",
            "{{.ID}} {{.Names}}",
            "--filter",
            f"label=sandbox-gateway.gateway={rig.gateway.gateway_id}",
        )
        .stdout.decode()
        .splitlines()
    )
    return [row.split()[0] for row in rows if not row.split()[1].startswith("sgw-pool-")]


def container_state(rig: Rig, container_id: str) -> dict[str, Any]:
    """The engine's view of a container (`State` of `docker inspect`)."""
    return dict(json.loads(rig.engine.docker("inspect", container_id).stdout)[0]["State"])


def ready(rig: Rig) -> httpx.Response:
    return httpx.get(f"{rig.gateway.base}/ready", timeout=30)


def wait_ready(rig: Rig) -> None:
    def is_ready() -> bool:
        answer = ready(rig)
        assert answer.status_code == 200, f"/ready never came back: {answer.text}"
        return True

    eventually(is_ready, timeout_s=60, interval_s=0.2)


def assert_engine_down(rig: Rig) -> None:
    """While dockerd is down: /ready is 503 and says the engine is unreachable; the gateway serves."""
    answer = ready(rig)
    assert answer.status_code == 503, answer.text
    body = answer.json()
    assert body["engine"] is False and body["ready"] is False
    assert "Docker engine" in body["error"], body
    assert httpx.get(f"{rig.gateway.base}/health").status_code == 200


def tool_error(result: Any) -> str:
    """The stable code of a failed call, after checking that its message is a clear one: the code is
    about the engine or the sandbox, the message names it, and no trace or internal path leaks."""
    assert result.is_error, result.content
    text = result.content[0].text
    match = re.search(r"\b((?:engine|sandbox)-[a-z-]+): (.+)$", text, re.DOTALL)
    assert match is not None, f"not an engine or sandbox error: {text}"
    code, message = match.groups()
    assert "engine" in message or "sandbox" in message, text
    assert "Traceback" not in text and 'File "' not in text, text
    return code


def assert_every_call_recorded(rig: Rig, since: int, calls: int, errors: list[str]) -> None:
    """Each call after event `since` has its decision, start and finish events, each error is recorded
    with the code its caller got, and the whole chain holds."""
    events = settled_events(rig.gateway.audit_log)[since:]
    decided = matching(events, "policy.decision", decision="allow")
    started = matching(events, "exec.start")
    finished = matching(events, "exec.finish")
    failed = matching(finished, outcome="error")
    assert len(decided) == len(started) == len(finished) == calls
    assert {e["request_id"] for e in started} == {e["request_id"] for e in finished}
    assert [e["outcome"]["error"] for e in failed] == errors, failed
    verify = cli("audit", "verify", str(rig.gateway.audit_log), "--from-genesis")
    assert verify.returncode == 0, verify.stdout


async def test_dockerd_restarted_while_idle(rig: Rig) -> None:
    since = len(audit_events(rig.gateway.audit_log))
    first = await call(rig, "echo before > /workspace/f; cat /workspace/f")
    assert first.structured_content["stdout"] == "before\n", first.content
    [old] = sandboxes(rig)
    assert ready(rig).status_code == 200
    started = container_state(rig, old)
    made = len(audit_events(rig.gateway.audit_log))

    rig.engine.stop()
    assert_engine_down(rig)
    down = tool_error(await call(rig, "echo during"))

    rig.engine.start()
    wait_ready(rig)
    # live-restore: the sandbox kept running while dockerd was down, and the engine took it back.
    kept = container_state(rig, old)
    assert kept["Running"] and kept["Pid"] == started["Pid"], (started, kept)
    assert kept["StartedAt"] == started["StartedAt"], (started, kept)
    # So the gateway carries on in it: the files are there, and the call says nothing was replaced.
    after = await call(rig, "cat /workspace/f 2>/dev/null || echo fresh")
    assert after.structured_content["stdout"] == "before\n", after.content
    assert after.structured_content["sandbox_replaced"] is False, after.content
    assert sandboxes(rig) == [old]
    changes = [
        e
        for e in audit_events(rig.gateway.audit_log)[made:]
        if e["event"] in ("sandbox.remove", "sandbox.create", "sandbox.assign")
        and not e.get("detail", {}).get("pool")
        and not str(e.get("detail", {}).get("reason", "")).startswith("pool-")
    ]
    assert changes == [], "no principal's sandbox was removed or replaced"
    assert_every_call_recorded(rig, since, calls=3, errors=[down])


async def test_dockerd_restarted_while_a_call_runs(rig: Rig) -> None:
    since = len(audit_events(rig.gateway.audit_log))
    before = await call(rig, "echo ok")
    assert before.structured_content["stdout"] == "ok\n", before.content
    [sandbox] = sandboxes(rig)
    results: list[Any] = []

    async def long_call() -> None:
        results.append(await call(rig, "sleep 30; echo done"))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(long_call)
        await eventually_async(
            lambda: b"sleep 30" in rig.engine.docker("top", sandbox).stdout,
            timeout_s=30,
            message="the long call never started",
        )
        await anyio.to_thread.run_sync(rig.engine.stop)
        # A hung call fails here rather than block the suite.
        await eventually_async(lambda: results, timeout_s=60, message="the interrupted call never answered")
        assert_engine_down(rig)
    [interrupted] = results
    print(f"the interrupted call answered: {interrupted.content[0].text}")
    code = tool_error(interrupted)
    assert "done" not in interrupted.content[0].text
    assert rig.gateway.process.poll() is None, "the gateway still runs"

    rig.engine.start()
    wait_ready(rig)
    # live-restore kept the sandbox through the restart; only the interrupted call's result is lost.
    after = await call(rig, "echo after")
    assert after.structured_content["stdout"] == "after\n", after.content
    assert sandboxes(rig) == [sandbox], "the sandbox survived the engine restart and serves on"
    assert_every_call_recorded(rig, since, calls=3, errors=[code])
