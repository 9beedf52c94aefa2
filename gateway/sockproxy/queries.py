"""Query parameters of the container verbs and the container list: only those the broker sends,
with the values it sends; what is forwarded is rebuilt from them."""

from __future__ import annotations

import re

from gateway.sockproxy.errors import Refused, StrictJSONError
from gateway.sockproxy.shapes import fail, list_of, obj, text
from gateway.sockproxy.strict_json import canonical, decode

__all__ = ["allowed_query", "attach_query", "list_query", "no_query"]

_LIST_KEYS = frozenset({"limit", "all", "size", "trunc_cmd", "filters"})
_FILTERS = obj({}, {key: list_of(text, max_items=32) for key in ("label", "name", "status", "id")})


def no_query(query: dict[str, str]) -> None:
    if query:
        raise Refused("query", f"no query parameters here, got {sorted(query)}")


def allowed_query(query: dict[str, str], allowed: dict[str, tuple[str, ...]]) -> None:
    for key, value in query.items():
        if value not in allowed.get(key, ()):
            raise Refused("query", f"{key}={value[:40]!r} is not allowed here")


def attach_query(query: dict[str, str]) -> dict[str, str]:
    if query.get("logs", "0") not in ("0", "false"):
        raise Refused("attach-logs", "attach never replays the container's log (logs=1)")
    allowed_query(
        query,
        dict.fromkeys(("stdin", "stdout", "stderr", "stream", "logs"), ("0", "1", "true", "false")),
    )
    if query.get("stream") not in ("1", "true"):
        raise Refused("query", "attach needs stream=1")
    return {key: "1" if query.get(key) in ("1", "true") else "0" for key in ("stdin", "stdout", "stderr")} | {
        "stream": "1",
        "logs": "0",
    }


def list_query(query: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(query) - _LIST_KEYS)
    if unknown:
        raise Refused("query", f"unknown list parameter(s) {unknown}")
    if query.get("size", "0") not in ("0", "false"):
        raise Refused("query", "size=1 is refused (it walks every container's files)")
    out = {"all": "1" if query.get("all") in ("1", "true") else "0"}
    if "limit" in query:
        if not re.fullmatch(r"-1|[0-9]{1,6}", query["limit"]):
            raise fail("limit", "must be an integer")
        out["limit"] = query["limit"]
    if "filters" in query:
        try:
            filters = _FILTERS(decode(query["filters"].encode()), "filters")
        except StrictJSONError as exc:
            raise Refused("query", f"filters: {exc}") from exc
        out["filters"] = canonical(filters).decode()
    return out
