"""Where the gateway reaches its Docker engine: DOCKER_HOST and, for a remote engine, its TLS
material; a raw engine socket is refused unless explicitly allowed."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from gateway.errors import ConfigError

__all__ = [
    "CERT_PATH_FILES",
    "DEFAULT_DOCKER_HOST",
    "DEFAULT_DOCKER_SOCKET",
    "DEFAULT_PROXY_SOCKET",
    "ENV_DOCKER_CERT_PATH",
    "ENV_DOCKER_HOST",
    "ENV_DOCKER_SOCKET",
    "ENV_DOCKER_TLS_VERIFY",
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
#: The engine's unix socket, for `setup` and the socket proxy only.
ENV_DOCKER_SOCKET = "SGW_DOCKER_SOCKET"
#: The socket proxy's unix socket (owner-only) that `setup` starts it on.
DEFAULT_PROXY_SOCKET = "/run/sandbox-gateway/docker-proxy.sock"
DEFAULT_DOCKER_HOST = f"unix://{DEFAULT_PROXY_SOCKET}"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
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
