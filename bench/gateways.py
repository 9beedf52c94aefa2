"""Gateways under test: each a real `sandbox-gateway serve` process with a benchmark policy.

The policy is the shipped `default` profile with only what the benchmark needs changed: the exec
path, the warm pool, an output cap above the 1 MB workload, and rates and quotas lifted so that
limits meant for abuse do not shape the figures.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import yaml

from gateway.auth.tokens import TokenStore
from policy.loader import default_policy_path
from policy.units import parse_size

__all__ = [
    "NOPOOL",
    "PER_NEIGHBOUR",
    "PROFILE",
    "AuditTail",
    "BenchGateway",
    "bench_policy",
    "start_gateway",
    "stop_gateway",
]

PROFILE = "bench"
NOPOOL = "bench-nopool"
#: Rates far above anything the benchmark sends (per principal, per address).
REQUEST_RATE = "1000000/minute"
CREATION_RATE = "100000/minute"
ADDRESS_RATE = "10000000/minute"
#: Calls one principal may run at once (the shipped default profile's max_concurrent, kept).
PER_NEIGHBOUR = 4
#: Above the 1 MB workload, so its output is never cut.
MAX_OUTPUT = "2m"
LIFTED = (
    f"rate limits lifted: {REQUEST_RATE} requests (per principal and per tenant) and {CREATION_RATE} "
    f"sandbox creations per principal, --address-rate {ADDRESS_RATE}; max_sandboxes_per_tenant 1000; "
    f"max_output_bytes {MAX_OUTPUT}"
)


def bench_policy(exec_path: str, warm_pool: int) -> dict[str, Any]:
    """The shipped policy's `default` profile, tuned as the module says, as two profiles: `bench`
    with a warm pool of `warm_pool`, and `bench-nopool` without one. Pools are shared by profiles
    with the same sandbox spec, so `bench-nopool`'s /tmp is 1 MiB smaller: nothing else differs."""
    shipped = yaml.safe_load(default_policy_path().read_text())
    profile = copy.deepcopy(shipped["profiles"]["default"])
    profile["description"] = f"Benchmark: the default profile on the {exec_path} path."
    profile["sandbox"]["exec_path"] = exec_path
    profile["exec"]["max_output_bytes"] = MAX_OUTPUT
    profile["lifecycle"] |= {"warm_pool": warm_pool, "max_sandboxes_per_tenant": 1000}
    profile["rate_limits"] = {
        "requests": REQUEST_RATE,
        "tenant_requests": REQUEST_RATE,
        "sandbox_creations": CREATION_RATE,
    }
    nopool = copy.deepcopy(profile)
    nopool["description"] += " No warm pool."
    nopool["lifecycle"]["warm_pool"] = 0
    tmp = "/tmp"  # noqa: S108 - the sandbox's own /tmp, a tmpfs
    nopool["sandbox"]["tmpfs"] = [
        mount | {"size": f"{parse_size(mount['size']) // 1024**2 - 1}m"} if mount["path"] == tmp else mount
        for mount in nopool["sandbox"]["tmpfs"]
    ]
    return {"version": 1, "audit": shipped.get("audit", {}), "profiles": {PROFILE: profile, NOPOOL: nopool}}


@dataclass
class BenchGateway:
    label: str
    exec_path: str
    warm_pool: int
    url: str
    gateway_id: str
    audit_log: Path
    log: Path
    process: subprocess.Popen[bytes]
    tokens: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(
    workdir: Path,
    *,
    label: str,
    exec_path: str,
    warm_pool: int,
    principals: dict[str, str],
    gateway_id: str,
    docker_host: str,
) -> BenchGateway:
    """Write the policy and every principal's token (before start: no reload during the run), start
    the gateway in its own session (so a Ctrl-C reaches only the benchmark, which stops it), and wait
    for /health."""
    workdir.mkdir(parents=True, exist_ok=True)
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(bench_policy(exec_path, warm_pool), sort_keys=False))
    store = TokenStore(workdir / "tokens.jsonl")
    tokens = {name: store.create(name, profile=profile) for name, profile in principals.items()}
    port = _free_port()
    audit_log, log = workdir / "audit.jsonl", workdir / "gateway.log"
    argv = [
        sys.executable, "-m", "gateway.cli", "serve",
        "--port", str(port),
        "--tokens", str(workdir / "tokens.jsonl"),
        "--policy", str(policy_file),
        "--gateway-id", gateway_id,
        "--docker-host", docker_host,
        "--audit-log", str(audit_log),
        "--address-rate", ADDRESS_RATE,
    ]  # fmt: skip
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING")},
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    gateway = BenchGateway(
        label, exec_path, warm_pool, f"{base}/mcp", gateway_id, audit_log, log, process, tokens
    )
    try:
        _wait_healthy(gateway, base)
    except BaseException:  # also an interrupt: the gateway must not outlive the run
        stop_gateway(gateway)
        raise
    return gateway


def _wait_healthy(gateway: BenchGateway, base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            raise RuntimeError(f"gateway {gateway.label} exited: {gateway.log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway {gateway.label} did not answer /health within 30 s")


def stop_gateway(gateway: BenchGateway, timeout_s: float = 60) -> bool:
    """SIGTERM (the gateway removes its sandboxes), then wait; SIGKILL if it does not stop.
    Returns True when it stopped by itself."""
    process = gateway.process
    if process.poll() is not None:
        return True
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        return False
    return True


class AuditTail:
    """The gateway's audit events, read incrementally from its audit file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.events: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        """Events appended since the last poll (also kept in `events`)."""
        try:
            with self.path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        new = [json.loads(line) for line in lines if line.strip()]
        self.events.extend(new)
        return new

    def named(self, event: str) -> Iterator[dict[str, Any]]:
        self.poll()
        return (e for e in self.events if e.get("event") == event)

    def pool_fills(self) -> int:
        """Sandboxes made for the warm pool so far."""
        return sum(1 for e in self.named("sandbox.create") if (e.get("detail") or {}).get("pool"))

    def mark(self) -> int:
        """A position in the event list; `durations` counts only events after it."""
        self.poll()
        return len(self.events)

    def durations(self, op: str, since: int) -> list[float]:
        """Durations (ms) of the gateway's successful `docker.<op>` operations after `since`."""
        self.poll()
        return [
            float(e["outcome"]["duration_ms"])
            for e in self.events[since:]
            if e.get("event") == f"docker.{op}" and (e.get("outcome") or {}).get("status") == "ok"
        ]

    def assigned(self) -> int:
        """Pooled sandboxes handed to a principal so far."""
        return sum(1 for _ in self.named("sandbox.assign"))

    async def wait_pool_ready(self, size: int, timeout_s: float = 60) -> None:
        """Until the pool holds `size` ready sandboxes (made for it, minus those handed out)."""
        deadline = time.monotonic() + timeout_s
        while (ready := self.pool_fills() - self.assigned()) < size:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the warm pool holds {ready} of {size} sandboxes after {timeout_s} s")
            await anyio.sleep(0.01)
