"""Every environment variable the gateway reads, as documented constants, and the frozen settings.

Configuration is read once at start-up; nothing reads the environment afterwards.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.egress import network as egress_net
from gateway.engine_settings import (
    CERT_PATH_FILES,
    DEFAULT_DOCKER_HOST,
    DEFAULT_DOCKER_SOCKET,
    DEFAULT_PROXY_SOCKET,
    ENV_DOCKER_CERT_PATH,
    ENV_DOCKER_HOST,
    ENV_DOCKER_SOCKET,
    ENV_DOCKER_TLS_VERIFY,
    check_docker_host,
    check_engine_tls,
    engine_tls_from_env,
)
from gateway.errors import ConfigError
from gateway.uids import DEFAULT_UID_RANGE, UidRange

__all__ = [
    "CERT_PATH_FILES",
    "DEFAULT_DOCKER_HOST",
    "DEFAULT_DOCKER_SOCKET",
    "DEFAULT_IMAGE",
    "DEFAULT_PROXY_SOCKET",
    "ENV_DOCKER_CERT_PATH",
    "ENV_DOCKER_HOST",
    "ENV_DOCKER_SOCKET",
    "ENV_DOCKER_TLS_VERIFY",
    "ENV_EXECUTOR_IMAGE",
    "ENV_HOSTS_FILE",
    "ENV_LOG_LEVEL",
    "ENV_REPLICA_ID",
    "ENV_SANDBOX_UIDS",
    "ENV_UPSTREAMS",
    "Settings",
    "check_docker_host",
    "check_engine_tls",
    "engine_tls_from_env",
]

#: The sandbox image to build and run (must be in the policy profile's `images`).
ENV_EXECUTOR_IMAGE = "MCP_EXECUTOR_IMAGE"
#: Gateway log level (DEBUG, INFO, WARNING, ERROR).
ENV_LOG_LEVEL = "LOG_LEVEL"
#: The unix socket the socket proxy that `setup` starts listens on.
ENV_PROXY_SOCKET = "SGW_PROXY_SOCKET"
#: Extra host directories (os.pathsep-separated) the proxy that `setup` starts lets be mounted at
#: /tools or /skills.
ENV_MOUNT_SOURCES = "SGW_MOUNT_SOURCES"
#: Extra images (os.pathsep-separated) the proxy that `setup` starts lets sandboxes be made from,
#: besides the shipped policy's and $MCP_EXECUTOR_IMAGE.
ENV_PROXY_IMAGES = "SGW_PROXY_IMAGES"
#: Where `setup` keeps logs, pid files and the cached sandbox root filesystem.
ENV_STATE_DIR = "SGW_STATE_DIR"
#: File holding the key for HMACs of submitted code in audit events (32+ random bytes).
ENV_AUDIT_HMAC_KEY_FILE = "SGW_AUDIT_HMAC_KEY_FILE"
#: Standard OpenTelemetry variables: when set, traces, metrics and audit events are exported over OTLP/HTTP.
ENV_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"

#: Host uid range sandboxes run as (each its own uid); the gateway and its socket proxy share it.
ENV_SANDBOX_UIDS = "SGW_SANDBOX_UIDS"
#: Code mode: the operator's file of upstream MCP servers (see gateway/upstream/config.py).
ENV_UPSTREAMS = "SGW_UPSTREAMS"
#: Fleet mode: the file of sandbox hosts (gateway/fleet/hosts.py); it replaces DOCKER_HOST.
ENV_HOSTS_FILE = "SGW_HOSTS_FILE"
#: Fleet mode: this replica's name among the gateways of one fleet (which share --gateway-id).
ENV_REPLICA_ID = "SGW_REPLICA_ID"
_REPLICA = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")

DEFAULT_IMAGE = "mcp-code-executor:latest"
DEFAULT_STATE_DIR = "/var/lib/sandbox-gateway"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True)
class Settings:
    """The gateway's configuration, frozen after start-up."""

    host: str = "127.0.0.1"
    port: int = 8000
    docker_host: str = DEFAULT_DOCKER_HOST
    allow_raw_socket: bool = False
    #: The engine's CA and this gateway's client pair, for a remote engine over TLS (all or none).
    docker_tls_ca: Path | None = None
    docker_tls_cert: Path | None = None
    docker_tls_key: Path | None = None
    image: str | None = None
    policy_file: Path | None = None
    tokens_file: Path | None = None
    audit_log: Path | None = None
    audit_max_bytes: int = 100 * 1024 * 1024
    audit_backups: int = 5
    audit_fsync: str = "never"  # or "batch": fsync the file after each batch of lines (audit.sinks.Fsync)
    audit_stdout: bool = True
    audit_hmac_key_file: Path | None = None
    #: Repeated auth failures and rate-limit hits from one source are folded per window this long...
    audit_repeat_window_s: float = 60.0
    #: ...for at most this many sources per window; beyond, new sources are counted together.
    audit_repeat_sources: int = 512
    log_level: str = "INFO"
    gateway_id: str = "default"
    max_body_bytes: int = 1024 * 1024
    docker_workers: int = 16
    #: How often expired sandboxes (idle TTL, max age) are looked for.
    reap_interval_s: float = 30.0
    #: On shutdown, how long running calls may take to finish before sandboxes are removed.
    shutdown_grace_s: float = 30.0
    #: Live sandboxes this gateway keeps at most, across all principals.
    max_sandboxes: int = 1000
    #: Requests to /mcp per client address, counted before authentication.
    address_rate: str = "600/minute"
    #: Where rate-limit counters live (slowapi storage URI).
    rate_limit_storage: str = "memory://"
    #: Open MCP sessions one principal may hold...
    sessions_per_principal: int = 8
    #: ...and the whole gateway.
    max_sessions: int = 10_000
    #: A session no request has used for this long is closed.
    session_idle_timeout_s: float = 900.0
    #: Requests in flight at once on one session (this bounds what a session holds).
    requests_per_session: int = 16
    tls_cert: Path | None = None
    tls_key: Path | None = None
    remove_on_shutdown: bool = True
    tools_path: Path | None = None
    #: Code mode: the upstream MCP servers sandbox code may call (the policy decides who may).
    upstreams_file: Path | None = None
    #: Code mode: write the upstream tools' modules into `tools_path` at start and when a list changes.
    generate_tools: bool = False
    skills_path: Path | None = None
    #: Egress: the network setup made, the egress proxy's files and how it resolves names.
    egress_network: str = egress_net.DEFAULT_EGRESS_NETWORK
    egress_subnet: str = egress_net.DEFAULT_EGRESS_SUBNET
    egress_state_dir: Path | None = None
    egress_hosts_file: Path | None = None
    egress_dns: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = field(default=())
    #: Proxies in front (addresses or networks) whose X-Forwarded-For is taken for the client's
    #: address; none by default: the peer address is the client's.
    trusted_proxies: tuple[str, ...] = field(default=())
    #: HTTP: a head's time to arrive, a client's silence mid-request, a response it does not read.
    http_timeout_s: float = 30.0
    #: Host uids sandboxes run as, `LOW-HIGH` (each sandbox its own); the socket proxy's range too.
    sandbox_uids: str = DEFAULT_UID_RANGE
    #: Fleet mode: the sandbox hosts (instead of `docker_host`), and this replica's name.
    hosts_file: Path | None = None
    replica_id: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from the environment, then explicit overrides (CLI flags) on top."""
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "docker_host": env.get(ENV_DOCKER_HOST) or DEFAULT_DOCKER_HOST,
            "image": env.get(ENV_EXECUTOR_IMAGE) or None,
            "log_level": (env.get(ENV_LOG_LEVEL) or "INFO").upper(),
            "sandbox_uids": env.get(ENV_SANDBOX_UIDS) or DEFAULT_UID_RANGE,
            "audit_hmac_key_file": Path(env[ENV_AUDIT_HMAC_KEY_FILE])
            if env.get(ENV_AUDIT_HMAC_KEY_FILE)
            else None,
            "upstreams_file": Path(env[ENV_UPSTREAMS]) if env.get(ENV_UPSTREAMS) else None,
            "egress_network": env.get(egress_net.ENV_EGRESS_NETWORK) or egress_net.DEFAULT_EGRESS_NETWORK,
            "egress_subnet": env.get(egress_net.ENV_EGRESS_SUBNET) or egress_net.DEFAULT_EGRESS_SUBNET,
            "hosts_file": Path(env[ENV_HOSTS_FILE]) if env.get(ENV_HOSTS_FILE) else None,
            "replica_id": env.get(ENV_REPLICA_ID) or "",
        }
        tls = engine_tls_from_env(env)
        if tls is not None:
            values["docker_tls_ca"], values["docker_tls_cert"], values["docker_tls_key"] = tls
        flags = {k: v for k, v in overrides.items() if v is not None}
        if any(k.startswith("docker_tls_") for k in flags):  # flags replace the environment's set whole
            values = {k: v for k, v in values.items() if not k.startswith("docker_tls_")}
        values.update(flags)
        settings = cls(**values)  # type: ignore[arg-type]
        settings.validate()
        return settings

    @property
    def docker_tls(self) -> tuple[Path, Path, Path] | None:
        """(CA, client certificate, client key) when the engine is reached over TLS."""
        if self.docker_tls_ca and self.docker_tls_cert and self.docker_tls_key:
            return self.docker_tls_ca, self.docker_tls_cert, self.docker_tls_key
        return None

    def _validate_sessions(self) -> None:
        if not 1 <= self.max_sessions <= 1_000_000:
            raise ConfigError("--max-sessions must be between 1 and 1000000")
        if not 1 <= self.sessions_per_principal <= self.max_sessions:
            raise ConfigError("--sessions-per-principal must be between 1 and --max-sessions")
        if not 1 <= self.session_idle_timeout_s <= 86400:
            raise ConfigError("--session-idle-timeout must be between 1 and 86400 seconds")
        if not 1 <= self.requests_per_session <= 1024:
            raise ConfigError("--requests-per-session must be between 1 and 1024")

    def _validate_http(self) -> None:
        if not 1 <= self.http_timeout_s <= 3600:
            raise ConfigError("--http-timeout must be between 1 and 3600 seconds")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ConfigError(f"--trusted-proxy {proxy!r} is not an IP address or network") from None

    def validate(self) -> None:
        """Raise ConfigError for a setting that cannot work or is unsafe without an explicit flag."""
        check_docker_host(self.docker_host, allow_raw_socket=self.allow_raw_socket)
        check_engine_tls(self.docker_host, self.docker_tls_ca, self.docker_tls_cert, self.docker_tls_key)
        UidRange.parse(self.sandbox_uids)
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL={self.log_level!r}; use one of {', '.join(LOG_LEVELS)}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range")
        if not self.audit_stdout and self.audit_log is None:
            raise ConfigError(
                "--no-audit-stdout needs --audit-log: every decision must be recorded somewhere"
            )
        if not 1 <= self.audit_repeat_window_s <= 3600:
            raise ConfigError("--audit-repeat-window must be between 1 and 3600 seconds")
        if not 1 <= self.audit_repeat_sources <= 1_000_000:
            raise ConfigError("--audit-repeat-sources must be between 1 and 1000000")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        for name, tls_path in (("certificate", self.tls_cert), ("key", self.tls_key)):
            if tls_path is not None and not tls_path.is_file():
                raise ConfigError(f"the TLS {name} {tls_path} does not exist")
        if not 0 <= self.shutdown_grace_s <= 3600:
            raise ConfigError("--shutdown-grace must be between 0 and 3600 seconds")
        self._validate_sessions()
        self._validate_http()
        if self.max_body_bytes < 1024:
            raise ConfigError("the request body cap must be at least 1 KiB")
        for name, path in (("tools", self.tools_path), ("skills", self.skills_path)):
            if path is not None and not path.is_dir():
                raise ConfigError(f"the {name} directory {path} does not exist")
        self._validate_code_mode()
        self._validate_fleet()

    def _validate_fleet(self) -> None:
        if self.hosts_file is not None and not self.hosts_file.is_file():
            raise ConfigError(f"the hosts file {self.hosts_file} does not exist")
        if self.replica_id and not _REPLICA.fullmatch(self.replica_id):
            raise ConfigError(f"--replica-id {self.replica_id!r}: use 1-63 of a-z, 0-9 and '-'")

    @property
    def egress(self) -> egress_net.EgressNetwork:
        return egress_net.EgressNetwork.parse(self.egress_network, self.egress_subnet)

    def _validate_code_mode(self) -> None:
        self.egress  # noqa: B018 - raises ConfigError for a bad name or subnet
        if self.egress_hosts_file is not None and not self.egress_hosts_file.is_file():
            raise ConfigError(f"the egress hosts file {self.egress_hosts_file} does not exist")
        if self.upstreams_file is not None and not self.upstreams_file.is_file():
            raise ConfigError(f"the upstreams file {self.upstreams_file} does not exist")
        if self.generate_tools and (self.tools_path is None or self.upstreams_file is None):
            raise ConfigError("--generate-tools needs --upstreams and --tools-dir (where the modules go)")
