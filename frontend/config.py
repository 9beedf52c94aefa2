"""Where the gateway is: `MCP_SERVER_URL` (or `--mcp-server-url`), checked once at start; and, for
sign-in through the gateway's OAuth issuer, the console's client registration at that issuer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from frontend.oauth import OAuthClient, SignInError, https_or_loopback

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_URL",
    "ENV_URL",
    "OAuthOptions",
    "UiConfig",
    "check_gateway_url",
    "oauth_client",
]

ENV_URL = "MCP_SERVER_URL"
DEFAULT_URL = "http://127.0.0.1:8000/mcp"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
ENV_CLIENT_ID = "SGW_UI_OAUTH_CLIENT_ID"
ENV_CLIENT_SECRET_FILE = "SGW_UI_OAUTH_CLIENT_SECRET_FILE"  # noqa: S105 - a variable name
ENV_PUBLIC_URL = "SGW_UI_PUBLIC_URL"
ENV_ISSUER = "SGW_UI_OAUTH_ISSUER"
ENV_SCOPES = "SGW_UI_OAUTH_SCOPES"
CALLBACK_PATH = "/oauth/callback"


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
class OAuthOptions:
    """What the command line gave for OAuth sign-in; each falls back to its environment variable."""

    client_id: str | None = None
    client_secret_file: str | None = None
    public_url: str | None = None
    issuer: str | None = None
    scopes: str | None = None


def oauth_client(options: OAuthOptions, host: str, port: int) -> OAuthClient | None:
    """The console's OAuth client registration, or None when no client id is configured (then people
    sign in with a pasted token only). ValueError for a registration that cannot work."""
    client_id = (options.client_id or os.environ.get(ENV_CLIENT_ID) or "").strip()
    if not client_id:
        return None
    public = (options.public_url or os.environ.get(ENV_PUBLIC_URL) or "").strip().rstrip("/")
    if not public:
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - naming the wildcard, not binding to it
            raise ValueError(
                f"set {ENV_PUBLIC_URL} (or --public-url): the issuer sends people back to a URL they reach"
            )
        public = f"http://{host}:{port}"
    parts = urlsplit(public)
    if not parts.hostname or parts.path or parts.query or parts.fragment or parts.username:
        raise ValueError(
            f"{ENV_PUBLIC_URL} must be the console's origin, like https://console.example.com, not {public!r}"
        )
    try:
        https_or_loopback(public, f"console URL ({ENV_PUBLIC_URL})")
    except SignInError as exc:
        raise ValueError(str(exc)) from None
    secret_file = options.client_secret_file or os.environ.get(ENV_CLIENT_SECRET_FILE)
    secret = None
    if secret_file:
        try:
            secret = Path(secret_file).read_text().strip() or None
        except OSError as exc:
            raise ValueError(
                f"cannot read the OAuth client secret file {secret_file}: {exc.strerror}"
            ) from None
        if secret is None:
            raise ValueError(f"the OAuth client secret file {secret_file} is empty")
    scopes = tuple((options.scopes or os.environ.get(ENV_SCOPES) or "").split())
    issuer = (options.issuer or os.environ.get(ENV_ISSUER) or "").strip() or None
    return OAuthClient(client_id, public + CALLBACK_PATH, secret, issuer, scopes)


@dataclass(frozen=True, slots=True)
class UiConfig:
    gateway_url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    oauth: OAuthClient | None = None

    @classmethod
    def from_env(
        cls,
        url: str | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        oauth: OAuthOptions | None = None,
    ) -> UiConfig:
        gateway = check_gateway_url(url or os.environ.get(ENV_URL) or DEFAULT_URL)
        return cls(gateway, host, port, oauth_client(oauth or OAuthOptions(), host, port))
