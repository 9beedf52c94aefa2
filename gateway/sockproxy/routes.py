"""Which requests exist at all: method, path and query of each operation the broker makes.

Anything not in ROUTES answers 403 before any body is read. Paths are matched whole, against one
API version prefix only (the one the gateway speaks; older versions take a HostConfig at start),
with no percent-encoding anywhere. The path and query sent to the engine are rebuilt from what
matched, never copied from the request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

from gateway.sockproxy.errors import Refused

__all__ = ["API", "IMAGE", "ROUTES", "Match", "Route", "match", "query_of"]

#: The one Engine API version the proxy serves (Docker 20.10's; newer engines accept it too).
API = "/v1.41"
_REF = r"(?P<ref>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})"
_EXEC = r"(?P<ref>[0-9a-f]{64})"
#: An image as the broker names it: its id, or `name[:tag]` (also the `Image` of a create body).
IMAGE = r"sha256:[0-9a-f]{64}|[a-z0-9][a-z0-9._/-]{0,200}(:[A-Za-z0-9._-]{1,128})?"
_IMAGE_REF = rf"(?P<ref>{IMAGE})"


@dataclass(frozen=True, slots=True)
class Route:
    """One operation: `name` (for counters and logs), methods, a whole-path pattern."""

    name: str
    methods: frozenset[str]
    pattern: re.Pattern[str]
    #: How the engine is asked: True for hijacked streams (attach, exec start).
    upgrade: bool = False
    #: Whether a request body is expected (create, exec create, exec start); otherwise none is allowed.
    body: bool = False


def _route(name: str, methods: str, path: str, *, upgrade: bool = False, body: bool = False) -> Route:
    return Route(name, frozenset(methods.split()), re.compile(path), upgrade, body)


ROUTES = (
    _route("ping", "GET HEAD", r"(/v1\.41)?/_ping"),
    _route("version", "GET", r"/v1\.41/version"),
    _route("image.inspect", "GET", rf"/v1\.41/images/{_IMAGE_REF}/json"),
    _route("container.create", "POST", r"/v1\.41/containers/create", body=True),
    _route("container.list", "GET", r"/v1\.41/containers/json"),
    _route("container.inspect", "GET", rf"/v1\.41/containers/{_REF}/json"),
    _route("container.start", "POST", rf"/v1\.41/containers/{_REF}/start"),
    _route("container.kill", "POST", rf"/v1\.41/containers/{_REF}/kill"),
    _route("container.wait", "POST", rf"/v1\.41/containers/{_REF}/wait"),
    _route("container.attach", "POST", rf"/v1\.41/containers/{_REF}/attach", upgrade=True),
    _route("container.rename", "POST", rf"/v1\.41/containers/{_REF}/rename"),
    _route("container.remove", "DELETE", rf"/v1\.41/containers/{_REF}"),
    _route("exec.create", "POST", rf"/v1\.41/containers/{_REF}/exec", body=True),
    _route("exec.start", "POST", rf"/v1\.41/exec/{_EXEC}/start", upgrade=True, body=True),
    _route("exec.inspect", "GET", rf"/v1\.41/exec/{_EXEC}/json"),
    _route("proxy.stats", "GET", r"/_sandbox_gateway/proxy/stats"),
)


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    ref: str
    query: dict[str, str]


def query_of(raw: str) -> dict[str, str]:
    """Query parameters, each at most once; a malformed query is refused."""
    if not raw:
        return {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=True, max_num_fields=16)
    except ValueError as exc:
        raise Refused("query", f"malformed query: {exc}") from exc
    query: dict[str, str] = {}
    for key, value in pairs:
        if key in query:
            raise Refused("query", f"parameter {key!r} given twice")
        query[key] = value
    return query


def match(method: str, target: str) -> Match:
    """The route of a request target, or Refused('no-route')."""
    path, _, raw_query = target.partition("?")
    if "%" in path or "#" in target:
        raise Refused("no-route", f"{method} {path[:120]}: percent-encoding and fragments are refused")
    for route in ROUTES:
        found = route.pattern.fullmatch(path)
        if found is not None and method in route.methods:
            ref = found.groupdict().get("ref") or ""
            if ".." in ref or "//" in ref:
                raise Refused("no-route", f"{method} {path[:120]}: '..' or '//' in a name")
            return Match(route, ref, query_of(raw_query))
    raise Refused("no-route", f"{method} {path[:120]} is not an operation the broker makes")
