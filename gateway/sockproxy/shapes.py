"""Small checkers for the exact shapes the broker sends: each returns the value or raises Refused."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.sockproxy.errors import Refused, StrictJSONError
from gateway.sockproxy.strict_json import ascii_text

__all__ = [
    "any_text",
    "boolean",
    "const",
    "integer",
    "list_of",
    "matching",
    "obj",
    "one_of",
    "text",
]

Check = Callable[[Any, str], Any]


def fail(where: str, detail: str) -> Refused:
    return Refused("body-shape", f"{where}: {detail}")


def obj(required: Mapping[str, Check], optional: Mapping[str, Check] | None = None) -> Check:
    """An object with exactly these keys (spelled exactly), each value checked."""
    optional = optional or {}

    def check(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise fail(where, "must be an object")
        unknown = sorted(set(value) - set(required) - set(optional))
        if unknown:
            raise fail(where, f"unknown key(s) {unknown}")
        missing = sorted(set(required) - set(value))
        if missing:
            raise fail(where, f"missing key(s) {missing}")
        out: dict[str, Any] = {}
        for key, checker in (*required.items(), *optional.items()):
            if key in value:
                out[key] = checker(value[key], f"{where}.{key}")
        return out

    return check


def const(expected: Any) -> Check:
    def check(value: Any, where: str) -> Any:
        if type(value) is not type(expected) or value != expected:
            raise fail(where, f"must be {expected!r}")
        return value

    return check


def one_of(*allowed: Any) -> Check:
    def check(value: Any, where: str) -> Any:
        if not any(type(value) is type(item) and value == item for item in allowed):
            raise fail(where, f"must be one of {list(allowed)!r}")
        return value

    return check


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, "must be true or false")
    return value


def integer(low: int, high: int) -> Check:
    def check(value: Any, where: str) -> int:
        if type(value) is not int or not low <= value <= high:
            raise fail(where, f"must be an integer in [{low}, {high}]")
        return value

    return check


def any_text(value: Any, where: str) -> str:
    """A string of any characters (a command's argv); `text` when it must be printable ASCII."""
    if not isinstance(value, str):
        raise fail(where, "must be a string")
    return value


def text(value: Any, where: str) -> str:
    try:
        return ascii_text(any_text(value, where), where)
    except StrictJSONError as exc:
        raise fail(where, str(exc)) from exc


def matching(pattern: str) -> Check:
    compiled = re.compile(pattern)

    def check(value: Any, where: str) -> str:
        if not compiled.fullmatch(text(value, where)):
            raise fail(where, f"{str(value)[:60]!r} does not match {pattern}")
        return str(value)

    return check


def list_of(item: Check, *, max_items: int) -> Check:
    def check(value: Any, where: str) -> list[Any]:
        if not isinstance(value, list) or len(value) > max_items:
            raise fail(where, f"must be a list of at most {max_items} items")
        return [item(element, f"{where}[{index}]") for index, element in enumerate(value)]

    return check
