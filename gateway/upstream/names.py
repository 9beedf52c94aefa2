"""Names of upstream servers, tools and tool arguments as Python identifiers: the generated modules'
and functions' names, and the directories `tools generate` writes.

An upstream's tool and argument names are untrusted text: they pass only when they map to a plain
ASCII identifier, so that no name can become a path outside the output directory or code.
"""

from __future__ import annotations

import keyword
import re
import sys

__all__ = ["BODY_NAMES", "NAME_PATTERN", "argument_identifier", "server_module", "tool_identifier"]

#: A server's name in the upstreams file, and the tool names a module can be generated for.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAPPED = str.maketrans({"-": "_", ".": "_"})
#: What a server module may not be called: the sandbox runtime, and what Python itself imports.
_RESERVED_MODULES = frozenset({"sgw_tools", *sys.stdlib_module_names, *sys.builtin_module_names})
#: Names the generated function's body uses; an argument of that name gets a trailing underscore.
BODY_NAMES = frozenset({"call_tool", "arguments"})


def _mapped(name: str) -> str | None:
    if not NAME_PATTERN.fullmatch(name):
        return None
    mapped = name.translate(_MAPPED)
    return mapped if mapped.isidentifier() and not mapped.startswith("_") else None


def server_module(name: str) -> str:
    """The module (directory) name of a server, or ValueError saying why `name` cannot be one."""
    mapped = _mapped(name)
    if mapped is None:
        raise ValueError(
            "a server name is 1-64 of A-Z a-z 0-9 _ . - and, with - and . read as _, a Python "
            "identifier that does not begin with _ or a digit"
        )
    if keyword.iskeyword(mapped):
        raise ValueError(f"{mapped!r} is a Python keyword")
    if mapped in _RESERVED_MODULES:
        raise ValueError(f"{mapped!r} would shadow a Python module of that name in the sandbox")
    return mapped


def tool_identifier(name: str) -> str | None:
    """The module and function name of an upstream tool (a keyword gets a trailing `_`), or None
    when the name cannot be one (it is skipped)."""
    mapped = _mapped(name)
    if mapped is None:
        return None
    return f"{mapped}_" if keyword.iskeyword(mapped) else mapped


def argument_identifier(name: str) -> str | None:
    """The keyword parameter for a tool argument (a keyword, or a name the body uses, gets a
    trailing `_`), or None when it cannot be one."""
    if not isinstance(name, str) or not name.isascii() or len(name) > 64:
        return None
    mapped = name.translate(_MAPPED)
    if not mapped.isidentifier():
        return None
    return f"{mapped}_" if keyword.iskeyword(mapped) or mapped in BODY_NAMES else mapped
