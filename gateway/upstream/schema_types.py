"""JSON Schema to Python type annotations, as source text built only from known type names and
`repr` of enum values: a hostile schema can give a useless annotation (`Any`), never code."""

from __future__ import annotations

from typing import Any

__all__ = ["annotation", "with_none"]

_SIMPLE = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "object": "dict[str, Any]",
    "null": "None",
}
_MAX_DEPTH = 6
_MAX_LITERALS = 64
_MAX_LITERAL_CHARS = 200


def _literal(values: list[Any]) -> list[str] | None:
    """`Literal[...]` (and `None`) for enum values that can be literals, else None."""
    if not values or len(values) > _MAX_LITERALS:
        return None
    shown: list[str] = []
    has_none = False
    for value in values:
        if value is None:
            has_none = True
        elif isinstance(value, bool | int) or (isinstance(value, str) and len(value) <= _MAX_LITERAL_CHARS):
            if repr(value) not in shown:
                shown.append(repr(value))
        else:
            return None
    members = [f"Literal[{', '.join(shown)}]"] if shown else []
    return [*members, "None"] if has_none else members


def _resolve(ref: Any, root: dict[str, Any]) -> Any:
    if not isinstance(ref, str):
        return None
    for prefix in ("#/$defs/", "#/definitions/"):
        if ref.startswith(prefix):
            table = root.get(prefix[2:-1])
            return table.get(ref[len(prefix) :]) if isinstance(table, dict) else None
    return None


def _members(schema: Any, root: dict[str, Any], depth: int) -> list[str]:  # noqa: PLR0911, PLR0912 - one return per schema form
    """The union members a schema allows; ["Any"] when it cannot be said."""
    if depth > _MAX_DEPTH or not isinstance(schema, dict):
        return ["Any"]
    if "$ref" in schema:
        return _members(_resolve(schema["$ref"], root), root, depth + 1)
    if "const" in schema and (literal := _literal([schema["const"]])) is not None:
        return literal
    if isinstance(schema.get("enum"), list) and (literal := _literal(schema["enum"])) is not None:
        return literal
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return [m for option in schema[key] for m in _members(option, root, depth + 1)]
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
        return _members(schema["allOf"][0], root, depth + 1)
    kinds = schema.get("type")
    if isinstance(kinds, str):
        kinds = [kinds]
    if not isinstance(kinds, list) or not kinds:
        return ["Any"]
    members = []
    for kind in kinds:
        if kind == "array":
            items = schema.get("items")
            inner = _join(_members(items, root, depth + 1)) if isinstance(items, dict) else "Any"
            members.append(f"list[{inner}]")
        elif isinstance(kind, str) and kind in _SIMPLE:
            members.append(_SIMPLE[kind])
        else:
            return ["Any"]
    return members


def _join(members: list[str]) -> str:
    if "Any" in members:
        return "Any"
    unique = list(dict.fromkeys(m for m in members if m != "None"))
    if "None" in members:
        unique.append("None")
    return " | ".join(unique) if unique else "None"


def annotation(schema: Any, root: dict[str, Any] | None = None) -> str:
    """The annotation for a property's schema (`root` holds its `$defs`)."""
    return _join(_members(schema, root if isinstance(root, dict) else {}, 0))


def with_none(text: str) -> str:
    """The annotation of an optional parameter: `X | None`."""
    if text in {"Any", "None"} or text.endswith(" | None"):
        return text
    return f"{text} | None"
