"""Code mode's cost: one upstream tool call from code in a sandbox, through the agent and the gateway,
against the same call made directly with the MCP SDK over a kept-open session.

    python -m bench.code_mode [--samples N] [--json FILE]      (make bench-code-mode)

The upstream is the test suite's notes server (streamable HTTP on loopback, bearer token). Direct:
`read_note` over one SDK session, each call timed at the client. Through the gateway: one
`execute_python` whose code calls `read_note` N times through `sgw_tools` and times each call
inside the sandbox (perf_counter around the call: the sandbox -> agent -> gateway -> policy,
audit, upstream -> back path); the first call of each side is a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from bench.gateways import bench_policy
from bench.stats import Series
from gateway.config import DEFAULT_DOCKER_HOST
from policy.loader import default_policy_path
from tests.support import gateway_process
from tests.support.upstreams import notes_entry, notes_server, write_upstreams

__all__ = ["main"]

PROFILE = "bench-code-mode"
INSIDE = """
import json, time
from sgw_tools import call_tool
samples = []
for i in range({n} + 1):
    started = time.perf_counter()
    call_tool("notes", "read_note", {{"id": "n2"}})
    samples.append((time.perf_counter() - started) * 1000)
print(json.dumps(samples[1:]))
"""


def _policy() -> dict[str, Any]:
    shipped = yaml.safe_load(default_policy_path().read_text())
    policy = bench_policy("agent", 0)
    profile = next(iter(policy["profiles"].values()))
    profile["code_mode"] = {
        "allow": [{"server": "notes", "tools": ["read_note"]}],
        "calls_per_execution": 10_000,
        "calls_per_minute": 100_000,
    }
    profile["exec"]["max_timeout_s"] = profile["exec"]["default_timeout_s"] = 300
    return {"version": 1, "audit": shipped.get("audit", {}), "profiles": {PROFILE: profile}}


async def _direct(url: str, token: str, samples: int) -> Series:
    series = Series("upstream read_note", "direct, MCP SDK session")
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        await client.call_tool("read_note", {"id": "n2"})
        for _ in range(samples):
            started = asyncio.get_running_loop().time()
            result = await client.call_tool("read_note", {"id": "n2"})
            series.latencies_ms.append((asyncio.get_running_loop().time() - started) * 1000)
            if result.is_error:
                series.error("read_note failed")
    return series


async def _through_gateway(url: str, token: str, samples: int) -> Series:
    series = Series("upstream read_note", "sandbox code, through the gateway")
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        result = await client.call_tool(
            "execute_python", {"code": INSIDE.format(n=samples), "timeout_s": 300}
        )
    body = result.structured_content or {}
    try:
        series.latencies_ms = [float(x) for x in json.loads(body.get("stdout", ""))]
    except ValueError:
        series.error(f"the sandbox code failed: {str(body.get('stderr', result.content))[:200]}")
    return series


async def measure(samples: int, workdir: Path) -> list[Series]:
    with notes_server(workdir / "notes") as notes:
        upstreams = write_upstreams(
            workdir / "upstreams.yaml", {"notes": notes_entry(notes, tools=["read_note"])}
        )
        (workdir / "policy.yaml").write_text(yaml.safe_dump(_policy(), sort_keys=False))
        gateway = gateway_process.start_gateway(
            workdir,
            "--policy", str(workdir / "policy.yaml"),
            "--upstreams", str(upstreams),
            principals={"bench": PROFILE},
            gateway_id=f"bench-cm-{uuid.uuid4().hex[:8]}",
            docker_host=DEFAULT_DOCKER_HOST,
            env={"LOG_LEVEL": "WARNING"},
        )  # fmt: skip
        try:
            token = notes.token_file.read_text().strip()
            direct = await _direct(notes.url, token, samples)
            through = await _through_gateway(gateway.url, gateway.tokens["bench"], samples)
        finally:
            gateway_process.stop_gateway(gateway, 60)
    return [direct, through]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.code_mode", description=__doc__)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sgw-bench-cm-") as tmp:
        rows = asyncio.run(measure(args.samples, Path(tmp)))
    summaries = [row.summary() for row in rows]
    print(
        f"{'workload':<22} {'variant':<36} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    for s in summaries:
        print(
            f"{s['workload']:<22} {s['variant']:<36} {s['n']:>5} {s['p50_ms']:>8.2f} {s['p95_ms']:>8.2f} "
            f"{s['p99_ms']:>8.2f} {s['errors']:>6}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(summaries, indent=2, default=str))
    return 1 if any(s["errors"] for s in summaries) else 0


if __name__ == "__main__":
    sys.exit(main())
