"""What the proxy accepts in an exec create or exec start body: exactly what the broker sends."""

from __future__ import annotations

from typing import Any

from gateway.sockproxy.fields import plain_path
from gateway.sockproxy.rules import ContainerFacts
from gateway.sockproxy.shapes import any_text, const, list_of, obj, text

__all__ = ["validate_exec_create", "validate_exec_start"]


def validate_exec_create(body: Any, facts: ContainerFacts) -> dict[str, Any]:
    """An exec create body: the sandbox's own uid, not privileged, no tty or stdin, its own
    environment (or none)."""
    env = body.get("Env") if isinstance(body, dict) else None
    checked: dict[str, Any] = obj(
        {
            "Container": text,
            "User": const(facts.user),
            "Privileged": const(False),
            "Tty": const(False),
            "AttachStdin": const(False),
            "AttachStdout": const(True),
            "AttachStderr": const(True),
            "Cmd": list_of(any_text, max_items=4096),
        },
        # No Env (the container's own), none at all, or exactly the container's own.
        {"WorkingDir": _path_or_root, "Env": const([] if env == [] else list(facts.env))},
    )(body, "body")
    return checked


def validate_exec_start(body: Any) -> dict[str, Any]:
    checked: dict[str, Any] = obj({"Detach": const(False), "Tty": const(False)})(body, "body")
    return checked


def _path_or_root(value: Any, where: str) -> str:
    return "/" if value == "/" else plain_path(value, where)
