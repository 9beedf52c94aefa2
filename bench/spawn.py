"""What starting a command costs inside a sandbox, measured there through the gateway."""

from __future__ import annotations

from bench.calls import session
from bench.gateways import BenchGateway

__all__ = ["spawn_cost"]

SPAWN_PROBE = """
import statistics, subprocess, time
def median_ms(argv):
    times = []
    for _ in range(30):
        started = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)
print(median_ms(["true"]), median_ms(["bash", "-c", "true"]),
      median_ms(["timeout", "--kill-after=2", "30s", "bash", "-c", "true"]))
"""


async def spawn_cost(gateway: BenchGateway, token: str) -> tuple[float, float, float] | None:
    """Median ms to spawn `true`, `bash -c true` (what a fast-path call runs) and `timeout ... bash
    -c true` (what a fallback call runs), inside a sandbox."""
    try:
        async with session(gateway.url, token) as client:
            result = await client.call_tool("execute_python", {"code": SPAWN_PROBE})
        plain, bash, wrapped = str((result.structured_content or {}).get("stdout", "")).split()
        return float(plain), float(bash), float(wrapped)
    except Exception:  # noqa: BLE001 - an optional figure: left out when it cannot be had
        return None
