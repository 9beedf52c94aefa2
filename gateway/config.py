"""Every environment variable the gateway reads, as documented constants, and the frozen settings.

Configuration is read once at start-up; nothing reads the environment afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.errors import ConfigError

__all__ = [
    "DEFAULT_DOCKER_HOST",
    "DEFAULT_IMAGE",
    "ENV_DOCKER_HOST",
    "ENV_EXECUTOR_IMAGE",
    "ENV_LOG_LEVEL",
    "Settings",
    "check_docker_host",
]

#: Where the Docker API is reached. The default is the socket proxy started by `setup`.
ENV_DOCKER_HOST = "DOCKER_HOST"
#: The sandbox image to build and run (must be in the policy profile's `images`).
ENV_EXECUTOR_IMAGE = "MCP_EXECUTOR_IMAGE"
#: Gateway log level (DEBUG, INFO, WARNING, ERROR).
ENV_LOG_LEVEL = "LOG_LEVEL"
#: Listen address of the socket proxy that `setup` starts.
ENV_PROXY_BIND = "SGW_PROXY_BIND"
#: The engine's unix socket, for `setup` and the socket proxy only.
ENV_DOCKER_SOCKET = "SGW_DOCKER_SOCKET"
#: Where `setup` keeps logs, pid files and the cached sandbox root filesystem.
ENV_STATE_DIR = "SGW_STATE_DIR"
#: File holding the key for HMACs of submitted code in audit events (32+ random bytes).
ENV_AUDIT_HMAC_KEY_FILE = "SGW_AUDIT_HMAC_KEY_FILE"
#: Standard OpenTelemetry variables: when set, traces, metrics and audit events are exported over OTLP/HTTP.
ENV_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"

DEFAULT_DOCKER_HOST = "tcp://127.0.0.1:2375"
DEFAULT_IMAGE = "mcp-code-executor:latest"
DEFAULT_PROXY_BIND = "127.0.0.1:2375"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_STATE_DIR = "/var/lib/sandbox-gateway"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def check_docker_host(url: str, *, allow_raw_socket: bool) -> str:
    """Refuse a raw engine socket unless explicitly allowed: the proxy is the only door."""
    if url.startswith(("unix://", "npipe://")) and not allow_raw_socket:
        raise ConfigError(
            f"DOCKER_HOST={url} is the engine's raw socket, which gives full control of the host. "
            "Point the gateway at the socket proxy (default tcp://127.0.0.1:2375, started by "
            "`sandbox-gateway setup`), or pass --allow-raw-socket to accept the risk."
        )
    if not url.startswith(("tcp://", "http://", "https://", "unix://", "ssh://", "npipe://")):
        raise ConfigError(f"DOCKER_HOST={url!r} is not a URL the Docker client understands (tcp://host:port)")
    return url


@dataclass(frozen=True, slots=True)
class Settings:
    """The gateway's configuration, frozen after start-up."""

    host: str = "127.0.0.1"
    port: int = 8000
    docker_host: str = DEFAULT_DOCKER_HOST
    allow_raw_socket: bool = False
    image: str | None = None
    policy_file: Path | None = None
    tokens_file: Path | None = None
    audit_log: Path | None = None
    audit_max_bytes: int = 100 * 1024 * 1024
    audit_backups: int = 5
    audit_stdout: bool = True
    audit_hmac_key_file: Path | None = None
    log_level: str = "INFO"
    gateway_id: str = "default"
    max_body_bytes: int = 1024 * 1024
    docker_workers: int = 16
    #: How often expired sandboxes (idle TTL, max age) are looked for.
    reap_interval_s: float = 30.0
    #: Live sandboxes this gateway keeps at most, across all principals.
    max_sandboxes: int = 1000
    #: Requests to /mcp per client address, counted before authentication.
    address_rate: str = "600/minute"
    #: Where rate-limit counters live (slowapi storage URI).
    rate_limit_storage: str = "memory://"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    remove_on_shutdown: bool = True
    tools_path: Path | None = None
    skills_path: Path | None = None
    allowed_hosts: tuple[str, ...] = field(default=())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from the environment, then explicit overrides (CLI flags) on top."""
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "docker_host": env.get(ENV_DOCKER_HOST) or DEFAULT_DOCKER_HOST,
            "image": env.get(ENV_EXECUTOR_IMAGE) or None,
            "log_level": (env.get(ENV_LOG_LEVEL) or "INFO").upper(),
            "audit_hmac_key_file": Path(env[ENV_AUDIT_HMAC_KEY_FILE])
            if env.get(ENV_AUDIT_HMAC_KEY_FILE)
            else None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ConfigError for a setting that cannot work or is unsafe without an explicit flag."""
        check_docker_host(self.docker_host, allow_raw_socket=self.allow_raw_socket)
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL={self.log_level!r}; use one of {', '.join(LOG_LEVELS)}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range")
        if not self.audit_stdout and self.audit_log is None:
            raise ConfigError(
                "--no-audit-stdout needs --audit-log: every decision must be recorded somewhere"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        for name, tls_path in (("certificate", self.tls_cert), ("key", self.tls_key)):
            if tls_path is not None and not tls_path.is_file():
                raise ConfigError(f"the TLS {name} {tls_path} does not exist")
        if self.max_body_bytes < 1024:
            raise ConfigError("the request body cap must be at least 1 KiB")
        for name, path in (("tools", self.tools_path), ("skills", self.skills_path)):
            if path is not None and not path.is_dir():
                raise ConfigError(f"the {name} directory {path} does not exist")
