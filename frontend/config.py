"""Where the gateway is: `MCP_SERVER_URL` (or `--mcp-server-url`), checked once at start."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_URL", "ENV_URL", "UiConfig", "check_gateway_url"]

ENV_URL = "MCP_SERVER_URL"
DEFAULT_URL = "http://127.0.0.1:8000/mcp"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860


def check_gateway_url(url: str) -> str:
    """The gateway's MCP endpoint as given, if it is a plain http(s) URL with a host and no
    credentials, query or fragment; else ValueError. The console talks to this URL and no other."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{ENV_URL} must be an http:// or https:// URL, not {url!r}")
    if not parts.hostname:
        raise ValueError(f"{ENV_URL} has no host: {url!r}")
    if parts.username or parts.password:
        raise ValueError(f"{ENV_URL} must not carry credentials; people sign in with their own token")
    if parts.query or parts.fragment:
        raise ValueError(f"{ENV_URL} must not have a query or fragment: {url!r}")
    return url.strip()


@dataclass(frozen=True, slots=True)
class UiConfig:
    gateway_url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT

    @classmethod
    def from_env(cls, url: str | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> UiConfig:
        return cls(check_gateway_url(url or os.environ.get(ENV_URL) or DEFAULT_URL), host, port)
