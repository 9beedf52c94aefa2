"""A fleet of the test's own: sandbox hosts (`fleet_hosts.SandboxHost`: private engines in network
namespaces, socket proxies on TLS), Redis, gateway replicas sharing one gateway id and tokens file,
and HAProxy in front of them with the project's own `compose/fleet/haproxy.cfg`."""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from gateway.auth.tokens import TokenStore
from policy.loader import default_policy_path
from tests.support import gateway_process
from tests.support.fleet_hosts import SandboxHost, clean_stale_hosts, fleet_pki
from tests.support.gateway_process import Gateway
from tests.support.net import accepts, free_port
from tests.support.pki import Pki
from tests.support.waiting import eventually

__all__ = ["FleetRig", "start_redis"]

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "compose" / "fleet" / "haproxy.cfg"


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A real Redis on loopback (no persistence): its process and URL."""
    server = shutil.which("redis-server")
    assert server, "redis-server is missing: `make test` installs it (make test-tools)"
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    eventually(lambda: process.poll() is None and accepts(port), timeout_s=10, message="redis did not start")
    return process, f"redis://127.0.0.1:{port}/0"


def fleet_policy(path: Path) -> Path:
    """The shipped policy plus `limited` (12 requests a minute) and `quota` (3 sandboxes a tenant)."""
    raw: dict[str, Any] = yaml.safe_load(default_policy_path().read_text())
    default = raw["profiles"]["default"]
    limited = copy.deepcopy(default)  # copied before default's own rate is raised for the load
    default["rate_limits"] = {**default.get("rate_limits", {}), "requests": "1200/minute"}
    limited["rate_limits"] = {**limited.get("rate_limits", {}), "requests": "12/minute"}
    limited["lifecycle"] = {**limited.get("lifecycle", {}), "warm_pool": 0}
    quota = copy.deepcopy(default)
    quota["lifecycle"] = {**quota.get("lifecycle", {}), "max_sandboxes_per_tenant": 3, "warm_pool": 0}
    raw["profiles"].update({"limited": limited, "quota": quota})
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@dataclass
class FleetRig:
    """Everything a fleet test talks to; `start` brings it up, `close` takes it down."""

    workdir: Path
    image: str
    host_count: int = 3
    capacity: int = 40
    gateway_id: str = field(default_factory=lambda: f"fleet-{uuid.uuid4().hex[:8]}")
    hosts: list[SandboxHost] = field(default_factory=list)
    replicas: dict[str, Gateway] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    audit_logs: dict[str, list[Path]] = field(default_factory=dict)
    drained: set[str] = field(default_factory=set)
    pki: Pki | None = None
    redis: subprocess.Popen[bytes] | None = None
    redis_url: str = ""
    haproxy: subprocess.Popen[bytes] | None = None
    balancer: str = ""

    @property
    def hosts_file(self) -> Path:
        return self.workdir / "hosts.yaml"

    @property
    def tokens_file(self) -> Path:
        return self.workdir / "tokens.jsonl"

    def start(self, principals: dict[str, tuple[str, str]]) -> None:
        """Hosts, Redis, tokens (principal -> (profile, tenant)), two replicas and the balancer."""
        clean_stale_hosts()
        self.hosts = [SandboxHost(f"h{i + 1}") for i in range(self.host_count)]
        (self.workdir / "pki").mkdir()
        self.pki = fleet_pki(self.workdir / "pki", self.hosts)
        with ThreadPoolExecutor(max_workers=self.host_count) as pool:
            list(pool.map(lambda host: host.start(self.pki, self.image), self.hosts))
        self.redis, self.redis_url = start_redis(self.workdir)
        store = TokenStore(self.tokens_file)
        self.tokens = {n: store.create(n, profile=p, tenant=t) for n, (p, t) in principals.items()}
        self.write_hosts()
        fleet_policy(self.workdir / "policy.yaml")
        for replica in ("gw-1", "gw-2"):
            self.start_replica(replica)
        self.start_balancer()

    def write_hosts(self) -> None:
        assert self.pki is not None
        hosts = {
            "tls": {"ca": str(self.pki.ca), "cert": str(self.pki.cert), "key": str(self.pki.key)},
            "health": {"probe_interval_s": 0.5, "probe_timeout_s": 2.0, "down_after_s": 4.0},
            "hosts": [
                {
                    "name": h.name,
                    "address": h.address,
                    "capacity": self.capacity,
                    "drain": h.name in self.drained,
                }
                for h in self.hosts
            ],
        }
        self.hosts_file.write_text(yaml.safe_dump(hosts, sort_keys=False))

    def start_replica(self, name: str) -> Gateway:
        """A replica (again, after a kill: its audit goes to a new file, a chain of its own)."""
        logs = self.audit_logs.setdefault(name, [])
        audit_log = self.workdir / name / f"audit-{len(logs)}.jsonl"
        logs.append(audit_log)
        self.replicas[name] = gateway_process.start_gateway(
            self.workdir / name,
            "--tokens", str(self.tokens_file),
            "--hosts-file", str(self.hosts_file),
            "--replica-id", name,
            "--rate-limit-storage", self.redis_url,
            "--policy", str(self.workdir / "policy.yaml"),
            "--audit-log", str(audit_log),
            "--address-rate", "100000/minute",
            principals={},
            gateway_id=self.gateway_id,
            docker_host="unix:///run/sandbox-gateway/docker-proxy.sock",
            env={"LOG_LEVEL": "INFO"},
        )  # fmt: skip
        return self.replicas[name]

    def kill_replica(self, name: str) -> None:
        """SIGKILL, as a crash ends it: no shutdown, no last audit line."""
        process = self.replicas[name].process
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def start_balancer(self) -> None:
        port = free_port()
        env = {
            **os.environ,
            "BALANCER_BIND": f"127.0.0.1:{port}",
            "GW1_ADDR": self.replicas["gw-1"].base.removeprefix("http://"),
            "GW2_ADDR": self.replicas["gw-2"].base.removeprefix("http://"),
        }
        argv = ["haproxy", "-db", "-f", str(HAPROXY_CFG)]
        with (self.workdir / "haproxy.log").open("wb") as log:
            self.haproxy = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        self.balancer = f"http://127.0.0.1:{port}"

        def both_up() -> bool:
            assert self.haproxy is not None and self.haproxy.poll() is None, "haproxy exited"
            return httpx.get(f"{self.balancer}/health", timeout=2).status_code == 200

        eventually(both_up, timeout_s=20, retry_on=(httpx.HTTPError,), message="the balancer did not answer")

    def hup(self) -> None:
        """SIGHUP every live replica (policy and hosts file re-read)."""
        for replica in self.replicas.values():
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGHUP)

    def sandboxes(self) -> dict[str, list[str]]:
        """Host -> names of the fleet's sandboxes on it (running or not), asked of each engine."""
        label = f"label=sandbox-gateway.gateway={self.gateway_id}"
        return {
            host.name: host.docker("ps", "-a", "--filter", label, "--format", "{{.Names}}")
            .stdout.decode()
            .split()
            for host in self.hosts
            if host.engine.answers()
        }

    def close(self) -> None:
        for replica in self.replicas.values():
            if replica.process.poll() is None:
                gateway_process.stop_gateway(replica)
        for process in (self.haproxy, self.redis):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
        errors = []
        for host in self.hosts:
            try:
                host.close(logs=self.workdir / "host-logs")
            except Exception as exc:  # every host is closed; the first error is raised
                errors.append(exc)
        if errors:
            raise errors[0]
