"""Load: 50 principals, 20 calls each, in parallel: every call answered, nothing leaked or unrecorded."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from gateway.backend.docker_engine import DockerBackend
from tests.e2e.conftest import Gateway, mcp_client, start_gateway, stop_gateway
from tests.support import audit_events, settled_events

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
PRINCIPALS, CALLS = 50, 20


def rss_kib(gateway: Gateway) -> int:
    status = Path(f"/proc/{gateway.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


async def test_fifty_principals_twenty_calls_each(tmp_path: Path, backend: DockerBackend) -> None:
    names = {f"p{i:02d}": "default" for i in range(PRINCIPALS)}
    gateway = start_gateway(tmp_path, "--address-rate", "100000/minute", principals=names)
    answered: dict[str, int] = {}
    lost: list[tuple[str, int, float]] = []
    try:
        rss_before = rss_kib(gateway)
        started = time.monotonic()

        async def principal(name: str) -> None:
            async with mcp_client(gateway.url, gateway.tokens[name]) as client:
                for call in range(CALLS):
                    result = await client.call_tool("execute_bash", {"command": f"echo {name}-{call}"})
                    assert result.structured_content is not None, result.content
                    if result.structured_content["stdout"] != f"{name}-{call}\n":
                        lost.append((name, call, result.structured_content["duration_ms"]))
                    answered[name] = answered.get(name, 0) + 1

        async with anyio.create_task_group() as tasks:
            for name in names:
                tasks.start_soon(principal, name)
        elapsed = time.monotonic() - started
        rss_after = rss_kib(gateway)
        rows = backend.list({"sandbox-gateway.gateway": gateway.gateway_id})
        live = sum(not row.name.startswith("sgw-pool-") for row in rows)  # the warm pool's are nobody's
    finally:
        stop_gateway(gateway)
    total = sum(answered.values())

    print(
        f"\nload: {total} calls by {PRINCIPALS} principals in {elapsed:.1f} s "
        f"({total / elapsed:.1f} calls/s); gateway RSS {rss_before} -> {rss_after} KiB; "
        f"{live} sandboxes while running; {len(lost)} outputs lost"
    )
    assert total == PRINCIPALS * CALLS
    assert lost == [], f"calls whose output did not come back: {lost[:10]}"
    assert live == PRINCIPALS, "one sandbox per principal"
    assert rss_after - rss_before < 256 * 1024, "gateway memory stays bounded"
    finished = settled_events(gateway.audit_log, "exec.finish", outcome="ok")
    decided = audit_events(gateway.audit_log, "policy.decision")
    assert len(finished) == len(decided) == PRINCIPALS * CALLS, "every call recorded, none lost"
    assert backend.list({"sandbox-gateway.gateway": gateway.gateway_id}) == [], "nothing leaked"
