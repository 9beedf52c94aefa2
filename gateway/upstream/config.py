"""The upstreams file: the MCP servers whose tools code in a sandbox may call through the gateway.

YAML, reviewed by the operator like the policy. Every key is known (an unknown or duplicate one is
refused), every name maps to a Python module name, every referenced env var or file exists and is
not empty when the file is loaded. Credentials stay on the gateway: header values and secrets are
read from the environment or from files, and never appear in a repr, a log line or an error.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.errors import UpstreamConfigError
from gateway.upstream.credentials import HEADER_NAME, SecretSource, SecretUnavailable, looks_secret
from gateway.upstream.names import server_module
from policy.loader import UniqueKeyLoader

__all__ = [
    "HttpServer",
    "OAuthClientCredentials",
    "ServerConfig",
    "StdioServer",
    "UpstreamConfig",
    "load_upstreams",
    "load_upstreams_text",
]

#: Headers the MCP transport sets itself.
_TRANSPORT_HEADERS = frozenset(
    {"host", "content-length", "content-type", "accept", "connection", "transfer-encoding", "te",
     "upgrade", "mcp-session-id", "mcp-protocol-version", "last-event-id"}
)  # fmt: skip
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_TOOL_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,128}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, *, allow_insecure_http: bool) -> str:
    """An absolute http(s) URL without credentials or fragment; http only to a loopback address
    unless `allow_insecure_http`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (user:password@); use headers or oauth")
    if parts.fragment:
        raise ValueError("must not have a #fragment")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise ValueError("http:// is allowed only to a loopback address (set allow_insecure_http: true)")
    return url


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class OAuthClientCredentials(_Strict):
    """An OAuth 2 client credentials grant: the gateway fetches (and caches) an access token."""

    token_url: str
    client_id: str = Field(min_length=1, max_length=256)
    client_secret_file: str | None = Field(default=None, min_length=1)
    client_secret_env: str | None = Field(default=None, pattern=_ENV_NAME.pattern)
    scope: str | None = Field(default=None, min_length=1, max_length=1024)
    #: RFC 8707 resource indicator.
    resource: str | None = None
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"

    @model_validator(mode="after")
    def _one_secret(self) -> OAuthClientCredentials:
        if (self.client_secret_file is None) == (self.client_secret_env is None):
            raise ValueError("give exactly one of client_secret_file or client_secret_env")
        if self.client_secret_file is not None and not Path(self.client_secret_file).is_absolute():
            raise ValueError("client_secret_file must be an absolute path")
        return self

    def secret_source(self) -> SecretSource:
        return SecretSource(env=self.client_secret_env, file=self.client_secret_file)


Tools = Literal["*"] | list[str]


class _Server(_Strict):
    #: The tools exposed to sandboxes: a list of names, or "*" for all the server lists.
    tools: Tools
    timeout_s: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("tools", mode="before")
    @classmethod
    def _tool_names(cls, tools: Any) -> Any:
        if tools == "*":
            return tools
        if not isinstance(tools, list) or not all(
            isinstance(t, str) and _TOOL_NAME.fullmatch(t) for t in tools
        ):
            raise ValueError('a list of tool names, or "*" for every tool the server lists')
        if not tools:
            raise ValueError("an empty list exposes nothing; list tools or remove the server")
        if len(set(tools)) != len(tools):
            raise ValueError("a tool is listed twice")
        return tools

    def exposes(self, tool: str) -> bool:
        return self.tools == "*" or tool in self.tools


class HttpServer(_Server):
    """A server the gateway reaches over streamable HTTP."""

    transport: Literal["http"]
    url: str
    headers: dict[str, SecretSource] = Field(default_factory=dict, repr=False)
    oauth: OAuthClientCredentials | None = None
    allow_insecure_http: bool = False

    @model_validator(mode="after")
    def _check(self) -> HttpServer:
        check_url(self.url, allow_insecure_http=self.allow_insecure_http)
        if self.oauth is not None:
            check_url(self.oauth.token_url, allow_insecure_http=self.allow_insecure_http)
        for name, source in self.headers.items():
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"header {name!r} is not a valid HTTP field name")
            if name.lower() in _TRANSPORT_HEADERS:
                raise ValueError(f"header {name} is set by the MCP transport itself")
            if source.is_literal and looks_secret(name):
                raise ValueError(
                    f"header {name} carries a credential: take it from {{env: ...}} or {{file: ...}}"
                )
            if self.oauth is not None and name.lower() == "authorization":
                raise ValueError("give either oauth or an Authorization header, not both")
        return self


class StdioServer(_Server):
    """A server the gateway starts itself, as its own user, and talks to over stdin/stdout."""

    transport: Literal["stdio"]
    command: Annotated[list[Annotated[str, Field(min_length=1, pattern=r"^[^\x00]*$")]], Field(min_length=1)]
    #: The only variables given to the process, besides the SDK's safe defaults (PATH, HOME...).
    env: dict[str, str | SecretSource] = Field(default_factory=dict, repr=False)
    cwd: str | None = None

    @model_validator(mode="after")
    def _check(self) -> StdioServer:
        for name in self.env:
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"env var name {name!r} is not valid")
        for name, value in self.env.items():
            if isinstance(value, str) and ("\x00" in value):
                raise ValueError(f"env var {name} holds a NUL byte")
        if self.cwd is not None and not Path(self.cwd).is_absolute():
            raise ValueError("cwd must be an absolute path")
        return self


ServerConfig = Annotated[HttpServer | StdioServer, Field(discriminator="transport")]


class UpstreamConfig(_Strict):
    """The upstream servers by name."""

    servers: dict[str, ServerConfig] = Field(default_factory=dict)

    @field_validator("servers")
    @classmethod
    def _names(cls, servers: dict[str, Any]) -> dict[str, Any]:
        modules: dict[str, str] = {}
        for name in servers:
            try:
                module = server_module(name)
            except ValueError as exc:
                raise ValueError(f"server {name[:80]!r}: {exc}") from None
            if module.lower() in modules:
                raise ValueError(f"servers {modules[module.lower()]!r} and {name!r} map to one module name")
            modules[module.lower()] = name
        return servers

    def module(self, server: str) -> str:
        """The Python module (directory) the server's tools are generated into."""
        return server_module(server)


def _dotted(loc: tuple[int | str, ...]) -> str:
    parts = [
        str(p) for i, p in enumerate(loc) if not (i == 2 and loc[0] == "servers" and p in ("http", "stdio"))
    ]
    return ".".join(parts) or "<root>"


def _check_sources(config: UpstreamConfig, source: str) -> None:
    """Read every referenced secret once, so that a missing one fails the load, naming its server."""
    for name, server in config.servers.items():
        found: list[tuple[str, SecretSource]] = []
        if isinstance(server, HttpServer):
            found += [(f"headers.{header}", src) for header, src in server.headers.items()]
            if server.oauth is not None:
                found.append(("oauth", server.oauth.secret_source()))
        else:
            found += [(f"env.{var}", v) for var, v in server.env.items() if isinstance(v, SecretSource)]
            if server.cwd is not None and not Path(server.cwd).is_dir():
                raise UpstreamConfigError(f"{source}: servers.{name}.cwd: {server.cwd} is not a directory")
        for key, secret in found:
            try:
                secret.read()
            except SecretUnavailable as exc:
                raise UpstreamConfigError(f"{source}: servers.{name}.{key}: {exc}") from None


def load_upstreams_text(text: str, source: str = "<string>") -> UpstreamConfig:
    """Parse and check an upstreams file's text; UpstreamConfigError names the file, key and rule."""
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise UpstreamConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UpstreamConfigError(f"{source}: an upstreams file is a mapping with 'servers'")
    try:
        config = UpstreamConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        rule = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        rule = rule.removeprefix("Value error, ")
        raise UpstreamConfigError(f"{source}: {_dotted(tuple(first['loc']))}: {rule}") from None
    _check_sources(config, source)
    return config


def load_upstreams(path: str | Path) -> UpstreamConfig:
    """Load and check the upstreams file at `path`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        raise UpstreamConfigError(f"{file}: cannot be read ({why})") from None
    return load_upstreams_text(text, source=file.name)
