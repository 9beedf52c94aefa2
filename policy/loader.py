"""Reading policy files: YAML -> guardrails -> schema -> `Policy`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from policy.errors import PolicyLoadError
from policy.guardrails import check_effective_guardrails, check_guardrails
from policy.model import Policy

__all__ = ["UniqueKeyLoader", "default_policy_path", "load_policy", "load_policy_text"]


class UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys: the second one would silently win."""


def _mapping_without_duplicates(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def default_policy_path() -> Path:
    """The policy shipped with the package: `policy/profiles/default.yaml`."""
    return Path(__file__).with_name("profiles") / "default.yaml"


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _resolve_extends(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Flatten `extends:` chains: a profile is its parent deep-merged with its own keys (lists replace)."""
    profiles = raw.get("profiles")
    if not isinstance(profiles, dict):
        return raw
    resolved: dict[str, Any] = {}

    def resolve(name: str, chain: tuple[str, ...]) -> Any:
        if name in resolved:
            return resolved[name]
        if name in chain:
            cycle = " -> ".join((*chain, name))
            raise PolicyLoadError(source, f"profiles.{chain[0]}.extends", "inheritance cycle", cycle)
        body = profiles[name]
        if not isinstance(body, dict) or "extends" not in body:
            resolved[name] = body
            return body
        parent = body["extends"]
        if not isinstance(parent, str) or parent not in profiles:
            raise PolicyLoadError(
                source, f"profiles.{name}.extends", "names no profile of this file", repr(parent)
            )
        base = resolve(parent, (*chain, name))
        own = {key: value for key, value in body.items() if key != "extends"}
        result = _deep_merge(base, own) if isinstance(base, dict) else own
        resolved[name] = result
        return result

    for name in profiles:
        resolve(str(name), ())
    return {**raw, "profiles": resolved}


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<root>"


def load_policy_text(text: str, source: str = "<string>") -> Policy:
    """Parse and validate a policy from YAML text; raise PolicyLoadError naming file, key and rule."""
    try:
        raw = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise PolicyLoadError(source, "<yaml>", "not valid YAML", str(exc).replace("\n", " ")) from exc
    if not isinstance(raw, dict):
        raise PolicyLoadError(source, "<root>", "a policy file is a mapping with 'version' and 'profiles'")
    check_guardrails(raw, source)
    effective = _resolve_extends(raw, source)
    check_effective_guardrails(effective, source)
    try:
        return Policy.model_validate(effective)
    except ValidationError as exc:
        first = exc.errors()[0]
        rule = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise PolicyLoadError(source, _dotted(tuple(first["loc"])), rule) from exc


def load_policy(path: str | Path | None = None) -> Policy:
    """Load a policy file (the shipped default when `path` is None)."""
    file = Path(path) if path is not None else default_policy_path()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyLoadError(str(file), "<file>", "cannot be read", exc.strerror or str(exc)) from exc
    return load_policy_text(text, source=file.name)
