"""The `code_mode` key of a profile: which tools of upstream MCP servers the code in its sandboxes
may call through the gateway, with which arguments, and how much.

A profile without `code_mode` has code mode off (the default). The decision itself is in
`policy.code_mode`; this module only says what a valid `code_mode` is.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import unicodedata
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator, model_validator

from policy.model_base import Strict
from policy.units import Size

__all__ = [
    "ALL_TOOLS",
    "MAX_ARGUMENT_BYTES",
    "MAX_CALL_TIMEOUT_S",
    "MAX_PATH_CHARS",
    "MAX_RESULT_BYTES",
    "ArgumentConstraint",
    "CodeMode",
    "UpstreamRule",
    "is_name",
    "path_problem",
]

#: `tools: ["*"]`: every tool the server exposes (marked by `policy diff`).
ALL_TOOLS = "*"
MAX_RESULT_BYTES = 4 * 1024**2
MAX_ARGUMENT_BYTES = 4 * 1024**2
MAX_CALL_TIMEOUT_S = 300.0
#: Longest path a `prefix` constraint lets through (Linux's PATH_MAX).
MAX_PATH_CHARS = 4096

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_SCALARS = (str, int, float, bool, type(None))


def is_name(value: object) -> bool:
    """A server, tool or argument name: 1-128 of A-Z a-z 0-9 _ - . (nothing else, no line end)."""
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _name(value: str) -> str:
    if not is_name(value):
        raise ValueError(f"{value[:80]!r} is not a name: use 1-128 of A-Z a-z 0-9 _ - .")
    return value


Name = Annotated[str, AfterValidator(_name)]


def path_problem(value: str) -> str | None:
    """Why `value` is not an absolute canonical path, or None when it is one.

    Canonical: starts with `/`; no empty, `.` or `..` segment (so no `//`, no trailing `/` but
    for `/` itself); no segment of dots and spaces only (`...`, `.. `: some systems strip trailing
    dots and spaces); no backslash and no `%` (an upstream that decodes them could find a `..`);
    Unicode in NFKC form (no U+2025 two-dot leader, no fullwidth dot or slash: they fold into `..`
    and `/`); no control, format, private-use, unassigned or surrogate code point, no line or
    paragraph separator; at most 4096 characters. Case is kept: `/PUBLIC/` is not `/public/`.
    """
    if len(value) > MAX_PATH_CHARS:
        return f"is longer than {MAX_PATH_CHARS} characters"
    hidden = next((c for c in value if _hidden(c)), None)
    problems = (
        (not value.startswith("/"), "is not an absolute path"),
        (hidden is not None, f"holds the control or invisible character U+{ord(hidden or ' '):04X}"),
        ("\\" in value or "%" in value, "holds a backslash or '%'"),
        (unicodedata.normalize("NFKC", value) != value, "holds characters that fold into others (not NFKC)"),
        (
            value != "/" and any(not segment.strip(". ") for segment in value[1:].split("/")),
            "has an empty ('//', a trailing '/'), '.', '..' or dots-only segment",
        ),
        (posixpath.normpath(value) != value, "is not in canonical form"),
    )
    return next((why for broken, why in problems if broken), None)


def _hidden(char: str) -> bool:
    """Control, format, surrogate, private-use and unassigned code points, line and paragraph
    separators."""
    category = unicodedata.category(char)
    return category[0] == "C" or category in ("Zl", "Zp")


class ArgumentConstraint(Strict):
    """A constraint on one argument of an upstream call; every key given must hold.

    - `prefix`: the value is a string naming a path strictly below this directory (which is itself
      an absolute canonical path ending in `/`), and is canonical itself (see `path_problem`):
      `/public/a` passes `prefix: /public/`; `/public`, `/public/`, `/public/../x`, `/publicx/a`,
      `/PUBLIC/a` (comparison is case-sensitive) and `/public/a%2f..` do not.
    - `one_of`: the value equals one of these JSON scalars, type included (`1`, `"1"`, `1.0` and
      `true` are four different values).
    - `max_length`: the value is a string of at most this many characters (code points).
    - `required`: the argument must be present. Without it an absent argument passes (the
      upstream's default applies), so constrain a path whose default is wide with `required: true`.

    Arguments no constraint names are not policed here: the upstream's own schema checks them.
    """

    prefix: str | None = None
    one_of: tuple[Any, ...] | None = Field(default=None, min_length=1, max_length=256)
    max_length: int | None = Field(default=None, ge=0, le=MAX_ARGUMENT_BYTES, strict=True)
    required: bool = Field(default=False, strict=True)

    @field_validator("prefix")
    @classmethod
    def _directory(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.endswith("/"):
            raise ValueError(f"prefix {value[:80]!r} must end with '/' (a directory)")
        problem = None
        if value != "/":
            problem = "has an empty segment" if value == "//" else path_problem(value[:-1])
        if problem:
            raise ValueError(f"prefix {value[:80]!r} must be an absolute canonical path: it {problem}")
        return value

    @field_validator("one_of")
    @classmethod
    def _scalars(cls, value: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        if value is None:
            return None
        seen: set[tuple[str, Any]] = set()
        for item in value:
            if type(item) not in _SCALARS or (isinstance(item, float) and not math.isfinite(item)):
                raise ValueError(f"one_of holds JSON scalars (string, number, boolean, null), not {item!r}")
            key = (type(item).__name__, item)
            if key in seen:
                raise ValueError(f"one_of lists {item!r} twice")
            seen.add(key)
        return value

    def describe(self) -> str:
        """In short: `prefix /public/, one_of ["read"], max_length 200, required`."""
        parts = [] if self.prefix is None else [f"prefix {self.prefix}"]
        if self.one_of is not None:
            parts.append(f"one_of {json.dumps(list(self.one_of))}")
        if self.max_length is not None:
            parts.append(f"max_length {self.max_length}")
        return ", ".join([*parts, "required"] if self.required else parts)

    @model_validator(mode="after")
    def _not_empty(self) -> ArgumentConstraint:
        if self.prefix is None and self.one_of is None and self.max_length is None and not self.required:
            raise ValueError("a constraint needs at least one of prefix, one_of, max_length, required")
        return self


class UpstreamRule(Strict):
    """Tools of one upstream server that code may call, and constraints on their arguments."""

    server: Name
    #: Tool names, or `["*"]` for every tool the server exposes.
    tools: tuple[str, ...] = Field(min_length=1)
    arguments: dict[Name, ArgumentConstraint] = Field(default_factory=dict)

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if ALL_TOOLS in value and len(value) > 1:
            raise ValueError("'*' stands alone: it already means every tool of the server")
        if value != (ALL_TOOLS,):
            for tool in value:
                _name(tool)
        if len(set(value)) != len(value):
            raise ValueError("a tool is listed twice")
        return value

    def covers(self, tool: str) -> bool:
        return self.tools == (ALL_TOOLS,) or tool in self.tools

    def describe(self) -> list[str]:
        """One line per tool: `notes/read_note (path: prefix /public/)`, `wiki/*`."""
        constraints = "; ".join(f"{name}: {c.describe()}" for name, c in self.arguments.items())
        suffix = f" ({constraints})" if constraints else ""
        return [f"{self.server}/{tool}{suffix}" for tool in self.tools]


class CodeMode(Strict):
    """Code mode of a profile. Each (server, tool) is allowed by at most one rule, and a rule with
    `tools: ["*"]` is the only rule for its server, so the rule that decides a call is never in
    doubt. The budgets bound what one execution (and one principal per minute) may spend. Numbers
    and switches take their own YAML type only (`true`, not `1` or `"on"`); sizes take `64k`."""

    allow: tuple[UpstreamRule, ...] = Field(min_length=1)
    calls_per_execution: int = Field(default=100, gt=0, le=100_000, strict=True)
    calls_per_minute: int = Field(default=600, gt=0, le=100_000, strict=True)
    max_argument_bytes: Size = Field(default=64 * 1024, gt=0, le=MAX_ARGUMENT_BYTES)
    max_result_bytes: Size = Field(default=1024**2, gt=0, le=MAX_RESULT_BYTES)
    call_timeout_s: float = Field(default=30.0, gt=0, le=MAX_CALL_TIMEOUT_S, strict=True)
    #: Results that look like secrets (private keys, cloud and API tokens, JWTs) are refused.
    refuse_secrets: bool = Field(default=True, strict=True)

    @model_validator(mode="after")
    def _one_rule_per_tool(self) -> CodeMode:
        by_server: dict[str, list[int]] = {}
        for index, rule in enumerate(self.allow):
            by_server.setdefault(rule.server, []).append(index)
        for server, indexes in by_server.items():
            every = [i for i in indexes if self.allow[i].tools == (ALL_TOOLS,)]
            if every and len(indexes) > 1:
                raise ValueError(
                    f"allow[{every[0]}] allows every tool of {server}, so it must be the only rule for "
                    f"{server} (rules {indexes})"
                )
            owner: dict[str, int] = {}
            for index in indexes:
                for tool in self.allow[index].tools:
                    if tool in owner:
                        raise ValueError(
                            f"allow[{owner[tool]}] and allow[{index}] both allow {server}/{tool}: "
                            "one rule per tool"
                        )
                    owner[tool] = index
        return self

    def rule_for(self, server: str, tool: str) -> tuple[int, UpstreamRule] | None:
        """The rule that allows `server`/`tool` and its index, or None when none does."""
        for index, rule in enumerate(self.allow):
            if rule.server == server and rule.covers(tool):
                return index, rule
        return None
