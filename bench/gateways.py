"""Gateways under test: each a real `sandbox-gateway serve` process with a benchmark policy.

The policy is the shipped `default` profile with only what the benchmark needs changed: the exec
path, the warm pool, an output cap above the 1 MB workload, and rates and quotas lifted so that
limits meant for abuse do not shape the figures.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from policy.loader import default_policy_path
from policy.units import parse_size
from tests.support import eventually_async, gateway_process, matching
from tests.support.gateway_process import Gateway

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
    """A gateway under test (`server`: the process) and the variant it serves."""

    label: str
    exec_path: str
    warm_pool: int
    server: Gateway

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def tokens(self) -> dict[str, str]:
        return self.server.tokens

    @property
    def audit_log(self) -> Path:
        return self.server.audit_log


def start_gateway(
    workdir: Path,
    *,
    label: str,
    exec_path: str,
    warm_pool: int,
    principals: dict[str, str],
    gateway_id: str,
    docker_host: str,
    env: dict[str, str] | None = None,
) -> BenchGateway:
    """Write the policy and every principal's token (before start: no reload during the run), start
    the gateway in its own session (so a Ctrl-C reaches only the benchmark, which stops it), and wait
    for /health. `env` is added to the gateway's environment."""
    workdir.mkdir(parents=True, exist_ok=True)
    policy_file = workdir / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(bench_policy(exec_path, warm_pool), sort_keys=False))
    server = gateway_process.start_gateway(
        workdir,
        "--policy", str(policy_file),
        "--address-rate", ADDRESS_RATE,
        principals=principals,
        gateway_id=gateway_id,
        docker_host=docker_host,
        env={"LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING")} | (env or {}),
        new_session=True,
    )  # fmt: skip
    return BenchGateway(label, exec_path, warm_pool, server)


def stop_gateway(gateway: BenchGateway, timeout_s: float = 60) -> bool:
    """SIGTERM (the gateway removes its sandboxes), then wait; SIGKILL if it does not stop.
    Returns True when it stopped by itself."""
    return gateway_process.stop_gateway(gateway.server, timeout_s)


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

    def named(self, event: str, **match: Any) -> list[dict[str, Any]]:
        self.poll()
        return matching(self.events, event, **match)

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
            for e in matching(self.events[since:], f"docker.{op}", outcome="ok")
        ]

    def assigned(self) -> int:
        """Pooled sandboxes handed to a principal so far."""
        return len(self.named("sandbox.assign"))

    async def wait_pool_ready(self, size: int, timeout_s: float = 60) -> None:
        """Until the pool holds `size` ready sandboxes (made for it, minus those handed out)."""

        def ready() -> bool:
            held = self.pool_fills() - self.assigned()
            if held < size:  # retried until the deadline, then reported with this message
                raise AssertionError(f"the warm pool holds {held} of {size} sandboxes")
            return True

        await eventually_async(ready, timeout_s=timeout_s, interval_s=0.01)
