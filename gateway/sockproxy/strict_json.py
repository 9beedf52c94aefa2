"""JSON decoding that refuses whatever another decoder could read differently.

The engine decodes request bodies with Go's `encoding/json`: object keys are matched to struct
fields without case and with Unicode folding, duplicate keys keep the last value, invalid UTF-8
and lone surrogates become U+FFFD. A check over a body only holds if it reads the body the way
the engine will, so here nothing ambiguous is accepted at all: keys must be printable ASCII and
unique, strings printable ASCII (no escapes of anything else survive), numbers integers only.
What passes is re-encoded by `canonical()` and those bytes, not the client's, reach the engine.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.sockproxy.errors import StrictJSONError

__all__ = ["ascii_text", "canonical", "decode"]


def ascii_text(text: str, what: str) -> str:
    if not all(" " <= ch <= "~" for ch in text):
        raise StrictJSONError(f"{what} {text[:40]!r} holds characters outside printable ASCII")
    return text


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        ascii_text(key, "key")
        if key in result:
            raise StrictJSONError(f"duplicate key {key!r}")
        result[key] = value
    folded = {key.casefold() for key in result}
    if len(folded) != len(result):
        raise StrictJSONError("two keys differ only in case")
    return result


def _no_float(text: str) -> Any:
    raise StrictJSONError(f"number {text[:20]!r} is not an integer")


def _no_constant(text: str) -> Any:
    raise StrictJSONError(f"{text} is not JSON")


def decode(body: bytes) -> Any:
    """Decode `body` strictly. String values are left to the caller (`ascii_text`): a command's
    argv may hold any text, a path or a label may not."""
    try:
        text = body.decode("utf-8", errors="strict")
        value = json.loads(text, object_pairs_hook=_pairs, parse_float=_no_float, parse_constant=_no_constant)
    except StrictJSONError:
        raise
    except RecursionError as exc:
        raise StrictJSONError("nested too deeply") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise StrictJSONError(f"not valid JSON: {exc}") from exc
    return value


def canonical(value: Any) -> bytes:
    """The bytes forwarded to the engine: compact, ASCII only."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")
