"""Every environment variable the gateway reads, as documented constants, and the frozen settings.

Configuration is read once at start-up; nothing reads the environment afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.egress import network as egress_net
from gateway.errors import ConfigError
from gateway.uids import DEFAULT_UID_RANGE, UidRange

__all__ = [
    "DEFAULT_DOCKER_HOST",
    "DEFAULT_IMAGE",
    "ENV_DOCKER_CERT_PATH",
    "ENV_DOCKER_HOST",
    "ENV_DOCKER_TLS_VERIFY",
    "ENV_EXECUTOR_IMAGE",
    "ENV_LOG_LEVEL",
    "ENV_SANDBOX_UIDS",
    "ENV_UPSTREAMS",
    "Settings",
    "check_docker_host",
    "check_engine_tls",
    "engine_tls_from_env",
]

#: Where the Docker API is reached. The default is the socket proxy started by `setup`.
ENV_DOCKER_HOST = "DOCKER_HOST"
#: Docker's convention for a remote engine over TLS (tcp://host:2376): any value but empty turns
#: TLS with client certificates on; the material is read from ENV_DOCKER_CERT_PATH.
ENV_DOCKER_TLS_VERIFY = "DOCKER_TLS_VERIFY"
#: Directory holding ca.pem (the engine's CA), cert.pem and key.pem (this gateway's client pair).
ENV_DOCKER_CERT_PATH = "DOCKER_CERT_PATH"
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
#: The engine's unix socket, for `setup` and the socket proxy only.
ENV_DOCKER_SOCKET = "SGW_DOCKER_SOCKET"
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

#: The socket proxy's unix socket (owner-only) that `setup` starts it on.
DEFAULT_PROXY_SOCKET = "/run/sandbox-gateway/docker-proxy.sock"
DEFAULT_DOCKER_HOST = f"unix://{DEFAULT_PROXY_SOCKET}"
DEFAULT_IMAGE = "mcp-code-executor:latest"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_STATE_DIR = "/var/lib/sandbox-gateway"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: File names in DOCKER_CERT_PATH, as the Docker CLI expects them.
CERT_PATH_FILES = ("ca.pem", "cert.pem", "key.pem")
_TLS_FLAGS = "--docker-tls-ca, --docker-tls-cert and --docker-tls-key"


def engine_tls_from_env(env: Mapping[str, str]) -> tuple[Path, Path, Path] | None:
    """(CA, client certificate, client key) from DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, or None."""
    verify = env.get(ENV_DOCKER_TLS_VERIFY, "")
    if verify == "":
        return None
    if verify.lower() in ("0", "false", "no", "off"):
        raise ConfigError(
            f"{ENV_DOCKER_TLS_VERIFY}={verify}: Docker treats any value as 'on'. "
            f"Unset it to talk to the engine without TLS, or set it to 1."
        )
    cert_path = env.get(ENV_DOCKER_CERT_PATH)
    if not cert_path:
        raise ConfigError(
            f"{ENV_DOCKER_TLS_VERIFY} is set but {ENV_DOCKER_CERT_PATH} is not: set it to the directory "
            f"holding {', '.join(CERT_PATH_FILES)}, or pass {_TLS_FLAGS}"
        )
    base = Path(cert_path).expanduser()
    ca, cert, key = (base / name for name in CERT_PATH_FILES)
    return ca, cert, key


def _engine_socket(url: str) -> bool:
    """A unix:// URL that names an engine's own socket rather than the socket proxy's."""
    path = url.removeprefix("unix://")
    engine_sockets = {DEFAULT_DOCKER_SOCKET, "/run/docker.sock", os.environ.get(ENV_DOCKER_SOCKET, "")}
    name = os.path.basename(path)
    return path in engine_sockets or name == "docker.sock" or "containerd" in name


def check_docker_host(url: str, *, allow_raw_socket: bool) -> str:
    """Refuse a raw engine socket unless explicitly allowed: the proxy is the only door."""
    raw = url.startswith("npipe://") or (url.startswith("unix://") and _engine_socket(url))
    if raw and not allow_raw_socket:
        raise ConfigError(
            f"DOCKER_HOST={url} is the engine's raw socket, which gives full control of the host. "
            f"Point the gateway at the socket proxy (default {DEFAULT_DOCKER_HOST}, started by "
            "`sandbox-gateway setup`), or pass --allow-raw-socket to accept the risk."
        )
    if not url.startswith(("tcp://", "http://", "https://", "unix://", "ssh://", "npipe://")):
        raise ConfigError(f"DOCKER_HOST={url!r} is not a URL the Docker client understands (unix://PATH)")
    return url


def check_engine_tls(url: str, ca: Path | None, cert: Path | None, key: Path | None) -> bool:
    """True when the engine is reached over TLS with client certificates; refuse half-made setups."""
    given = [item for item in (ca, cert, key) if item is not None]
    if given and len(given) != 3:
        raise ConfigError(
            f"TLS to the engine needs {_TLS_FLAGS} together (or {ENV_DOCKER_TLS_VERIFY}=1 with "
            f"{ENV_DOCKER_CERT_PATH} holding {', '.join(CERT_PATH_FILES)})"
        )
    if not given:
        if url.startswith("https://") or url.rstrip("/").endswith(":2376"):
            raise ConfigError(
                f"DOCKER_HOST={url} is an engine over TLS but no TLS material is configured: set "
                f"{ENV_DOCKER_TLS_VERIFY}=1 and {ENV_DOCKER_CERT_PATH}, or pass {_TLS_FLAGS}"
            )
        return False
    if not url.startswith(("tcp://", "https://")):
        raise ConfigError(
            f"TLS material for the engine was given but DOCKER_HOST={url} is not a tcp:// or https:// "
            "URL; point it at the remote engine (tcp://host:2376) or drop the TLS settings"
        )
    for what, path in (("CA certificate", ca), ("client certificate", cert), ("client key", key)):
        if path is not None and not path.is_file():
            raise ConfigError(f"the engine TLS {what} {path} does not exist or is not a file")
    return True


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
    #: Host uids sandboxes run as, `LOW-HIGH` (each sandbox its own); the socket proxy's range too.
    sandbox_uids: str = DEFAULT_UID_RANGE

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
        if self.max_body_bytes < 1024:
            raise ConfigError("the request body cap must be at least 1 KiB")
        for name, path in (("tools", self.tools_path), ("skills", self.skills_path)):
            if path is not None and not path.is_dir():
                raise ConfigError(f"the {name} directory {path} does not exist")
        self._validate_code_mode()

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
