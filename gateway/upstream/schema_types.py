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
#: Schema nodes looked at per annotation, and union members kept: past either, the annotation is
#: `Any` (a small self-referencing schema must not cost more than that).
_MAX_WORK = 2000
_MAX_MEMBERS = 64
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


class _Budget:
    def __init__(self) -> None:
        self.work = 0

    def spend(self) -> bool:
        self.work += 1
        return self.work <= _MAX_WORK


def _members(schema: Any, root: dict[str, Any], depth: int, budget: _Budget) -> list[str]:  # noqa: PLR0911, PLR0912 - one return per schema form
    """The union members a schema allows; ["Any"] when it cannot be said (or costs too much)."""
    if depth > _MAX_DEPTH or not isinstance(schema, dict) or not budget.spend():
        return ["Any"]
    if "$ref" in schema:
        return _members(_resolve(schema["$ref"], root), root, depth + 1, budget)
    if "const" in schema and (literal := _literal([schema["const"]])) is not None:
        return literal
    if isinstance(schema.get("enum"), list) and (literal := _literal(schema["enum"])) is not None:
        return literal
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            found = []
            for option in schema[key]:
                found += _members(option, root, depth + 1, budget)
                if len(found) > _MAX_MEMBERS or "Any" in found:
                    return ["Any"]
            return found
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) == 1:
        return _members(schema["allOf"][0], root, depth + 1, budget)
    kinds = schema.get("type")
    if isinstance(kinds, str):
        kinds = [kinds]
    if not isinstance(kinds, list) or not kinds:
        return ["Any"]
    members = []
    for kind in kinds:
        if kind == "array":
            items = schema.get("items")
            inner = _join(_members(items, root, depth + 1, budget)) if isinstance(items, dict) else "Any"
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
    budget = _Budget()
    found = _members(schema, root if isinstance(root, dict) else {}, 0, budget)
    return "Any" if budget.work > _MAX_WORK else _join(found)


def with_none(text: str) -> str:
    """The annotation of an optional parameter: `X | None`."""
    if text in {"Any", "None"} or text.endswith(" | None"):
        return text
    return f"{text} | None"
