"""Abuse through MCP: each attack is contained, the gateway keeps serving, other principals are unaffected."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway
from tests.support import eventually_async
from tests.support.sandboxes import commands_in_sandboxes

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory, backend: DockerBackend) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("abuse"), principals={"attacker": "default", "victim": "default"}
    )
    yield gateway
    stop_gateway(gateway)
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == []


async def call(gateway: Gateway, who: str, command: str, timeout_s: float | None = None) -> dict[str, Any]:
    arguments: dict[str, Any] = {"command": command}
    if timeout_s is not None:
        arguments["timeout_s"] = timeout_s
    async with mcp_client(gateway.url, gateway.tokens[who]) as client:
        result = await client.call_tool("execute_bash", arguments)
    assert result.structured_content is not None, result.content
    return dict(result.structured_content)


async def healthy(gateway: Gateway) -> None:
    """The attacker's own sandbox still answers, and so does the victim's."""
    assert (await call(gateway, "attacker", "echo alive"))["stdout"] == "alive\n"
    assert (await call(gateway, "victim", "echo fine"))["stdout"] == "fine\n"


def gateway_rss_kib(gateway: Gateway) -> int:
    status = Path(f"/proc/{gateway.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


async def test_a_fork_bomb_stops_at_the_pids_limit(arena: Gateway) -> None:
    result = await call(
        arena,
        "attacker",
        "bomb() { bomb | bomb & }; bomb; sleep 3; echo procs=$(ls /proc | grep -c '^[0-9]')",
        timeout_s=8,
    )
    assert result["exit_code"] is not None
    await healthy(arena)


async def test_a_memory_bomb_is_reported_as_oom_killed(arena: Gateway) -> None:
    result = await call(arena, "attacker", "python3 -c 'x = bytearray(3 * 1024**3)'")
    assert result["oom_killed"] and result["exit_code"] == 137
    await healthy(arena)


@pytest.mark.parametrize(("path", "cap_mib"), [("/tmp", 64), ("/workspace", 256)])
async def test_filling_a_writable_path_stops_at_its_cap(arena: Gateway, path: str, cap_mib: int) -> None:
    result = await call(
        arena,
        "attacker",
        f"dd if=/dev/zero of={path}/fill bs=1M count={cap_mib + 50} 2>&1; "
        f"du -m {path}/fill | cut -f1; rm -f {path}/fill",
    )
    assert "No space left on device" in result["stdout"]
    assert int(result["stdout"].strip().splitlines()[-1]) <= cap_mib
    await healthy(arena)


async def test_100_mb_of_output_is_cut_and_gateway_memory_stays_bounded(arena: Gateway) -> None:
    before = gateway_rss_kib(arena)
    result = await call(arena, "attacker", "head -c 100000000 /dev/zero | tr '\\0' x; echo done >&2")
    after = gateway_rss_kib(arena)
    assert result["truncated"] and len(result["stdout"]) == 1024 * 1024 and result["stderr"] == "done\n"
    assert after - before < 64 * 1024, f"gateway RSS grew by {after - before} KiB for 100 MB of output"
    await healthy(arena)


async def test_a_cpu_hog_does_not_starve_another_principal(arena: Gateway, backend: DockerBackend) -> None:
    answered: dict[str, float] = {}

    async def hog() -> None:
        await call(
            arena, "attacker", "for i in 1 2 3 4; do (while :; do :; done) & done; sleep 6", timeout_s=8
        )

    async def victim() -> None:
        # The hog's four loops spin once its shell has gone on to `sleep 6`.
        await eventually_async(
            lambda: ("sleep", "6") in commands_in_sandboxes(backend, arena.gateway_id),
            timeout_s=30,
            interval_s=0.05,
            message="the CPU hog never started",
        )
        started = time.monotonic()
        assert (await call(arena, "victim", "python3 -c 'print(sum(range(10**5)))'"))["exit_code"] == 0
        answered["s"] = time.monotonic() - started

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(hog)
        tasks.start_soon(victim)
    assert answered["s"] < 5, f"the victim waited {answered['s']:.1f} s behind a CPU hog (limit: 1 CPU each)"
    await healthy(arena)


async def test_an_infinite_loop_and_a_sigterm_ignorer_end_at_the_timeout(arena: Gateway) -> None:
    loop = await call(arena, "attacker", "while :; do :; done", timeout_s=2)
    stubborn = await call(arena, "attacker", "trap '' TERM; while :; do sleep 0.1; done", timeout_s=2)
    assert loop["timed_out"] and stubborn["timed_out"] and stubborn["exit_code"] == 137
    await healthy(arena)


async def test_zombies_are_reaped(arena: Gateway) -> None:
    await call(
        arena,
        "attacker",
        "python3 -c 'import os\nfor _ in range(20):\n    os.fork() or os._exit(0)\nos._exit(0)'",
    )
    result = await call(arena, "attacker", "sleep 0.5; ps -eo stat | grep -c '^Z' || true")
    assert result["stdout"] == "0\n"
