"""Code mode: may code in a principal's sandbox call `tool` of upstream MCP server `server` with
these arguments? Pure: no I/O, no clock. `PolicyEngine.decide_upstream` is the way in.

The arguments are what the sandbox sent (decoded JSON, untrusted). The constraints hold for that
very object, so the gateway must send upstream exactly it (re-encoded), never the raw bytes the
sandbox wrote: with a duplicate key, the bytes could mean one value here and another upstream.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from policy.code_mode_model import ArgumentConstraint, UpstreamRule, is_name, path_problem
from policy.model import Policy
from policy.types import Denied, Principal, UpstreamAllowed, UpstreamDecision

__all__ = [
    "ARGUMENT_NOT_ALLOWED",
    "ARGUMENT_TOO_LARGE",
    "CODE_MODE_DENIALS",
    "CODE_MODE_OFF",
    "UPSTREAM_NOT_ALLOWED",
    "argument_size",
    "decide_upstream",
]

#: The profile has no `code_mode`.
CODE_MODE_OFF = "code-mode-off"
#: No allow rule names that server and tool.
UPSTREAM_NOT_ALLOWED = "upstream-not-allowed"
#: An argument breaks a constraint of the rule (or the arguments are not a JSON object).
ARGUMENT_NOT_ALLOWED = "argument-not-allowed"
#: The arguments are larger than `max_argument_bytes`.
ARGUMENT_TOO_LARGE = "argument-too-large"
#: Every reason code `decide_upstream` denies with (besides `unknown-profile`, as `evaluate`).
CODE_MODE_DENIALS = frozenset({CODE_MODE_OFF, UPSTREAM_NOT_ALLOWED, ARGUMENT_NOT_ALLOWED, ARGUMENT_TOO_LARGE})

_SHOWN = 80


def argument_size(arguments: Mapping[str, Any]) -> int:
    """The size `max_argument_bytes` bounds, when the caller has no byte count of its own: the
    arguments as compact JSON (non-ASCII escaped), in bytes."""
    return len(json.dumps(arguments, separators=(",", ":")).encode())


def _show(value: object) -> str:
    """A value for a message: a string's first 80 characters (repr, so control characters show as
    escapes), a scalar's repr, and only the JSON type of a list or object."""
    if isinstance(value, str):
        return repr(value[:_SHOWN]) + ("..." if len(value) > _SHOWN else "")
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)[:_SHOWN]
    return _json_type(value)


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list | tuple) else "an object"


def constraint_problem(constraint: ArgumentConstraint, value: object) -> str | None:
    """Why `value` breaks `constraint`, or None when it holds."""
    if constraint.one_of is not None and not any(
        type(value) is type(allowed) and value == allowed for allowed in constraint.one_of
    ):
        listed = json.dumps(list(constraint.one_of))
        listed = listed if len(listed) <= 200 else listed[:200] + "..."
        return f"{_show(value)} is not one of {listed} (compared with its JSON type)"
    if constraint.max_length is None and constraint.prefix is None:
        return None
    if not isinstance(value, str):
        return f"must be a string, not {_json_type(value)}"
    return _string_problem(constraint, value)


def _string_problem(constraint: ArgumentConstraint, value: str) -> str | None:
    if constraint.max_length is not None and len(value) > constraint.max_length:
        return f"{len(value)} characters, above the limit of {constraint.max_length}"
    if constraint.prefix is not None:
        problem = path_problem(value)
        if problem:
            return f"{_show(value)} is not an absolute canonical path: it {problem}"
        if not (value.startswith(constraint.prefix) and len(value) > len(constraint.prefix)):
            return f"{_show(value)} is not a path below {constraint.prefix!r}"
    return None


def _arguments_problem(rule: UpstreamRule, arguments: object) -> tuple[str, str] | None:
    """(rule id suffix, why) for the first argument that breaks a constraint of `rule`, or None."""
    if not isinstance(arguments, Mapping):
        return ".arguments", "the arguments must be a JSON object"
    for name, constraint in rule.arguments.items():
        if name not in arguments:
            if constraint.required:
                return f".arguments.{name}", f"argument {name!r} is required but absent"
            continue
        why = constraint_problem(constraint, arguments[name])
        if why is not None:
            return f".arguments.{name}", f"argument {name!r}: {why}"
    return None


def decide_upstream(
    policy: Policy,
    digest: str,
    principal: Principal,
    *,
    server: str,
    tool: str,
    arguments: Mapping[str, Any],
    argument_bytes: int,
) -> UpstreamDecision:
    """Decide one upstream call from code mode: code mode on, the server and tool allowed by a
    rule, the arguments within `max_argument_bytes` and every constraint of the rule; checked in
    that order, the first failure is the reason."""
    name = policy.profile_for(principal.id, principal.tenant, principal.profile)

    def deny(reason: str, rule_id: str, message: str) -> Denied:
        return Denied(name, digest, reasons=(reason,), rule_ids=(rule_id,), message=message)

    profile = policy.profiles.get(name)
    if profile is None:
        message = f"principal {principal.id!r} is mapped to profile {name!r}, which the policy lacks"
        return deny("unknown-profile", "profiles", message)
    base = f"profiles.{name}.code_mode"
    code_mode = profile.code_mode
    if code_mode is None:
        return deny(CODE_MODE_OFF, base, f"code mode is off for profile {name!r} (it has no code_mode)")
    found = code_mode.rule_for(server, tool) if is_name(server) and is_name(tool) else None
    if found is None:
        return deny(
            UPSTREAM_NOT_ALLOWED,
            f"{base}.allow",
            f"tool {_show(tool)} of upstream server {_show(server)} is not allowed for profile {name!r}",
        )
    index, rule = found
    rule_id = f"{base}.allow[{index}]"
    limit = code_mode.max_argument_bytes
    if type(argument_bytes) is not int or not 0 <= argument_bytes <= limit:
        return deny(
            ARGUMENT_TOO_LARGE,
            f"{base}.max_argument_bytes",
            f"the arguments are {argument_bytes!r} bytes; the limit is {limit}",
        )
    problem = _arguments_problem(rule, arguments)
    if problem is not None:
        suffix, why = problem
        return deny(ARGUMENT_NOT_ALLOWED, f"{rule_id}{suffix}", f"{server}/{tool}: {why}")
    return UpstreamAllowed(
        profile=name,
        policy_digest=digest,
        server=server,
        tool=tool,
        rule_id=rule_id,
        calls_per_execution=code_mode.calls_per_execution,
        calls_per_minute=code_mode.calls_per_minute,
        max_result_bytes=code_mode.max_result_bytes,
        call_timeout_s=code_mode.call_timeout_s,
        refuse_secrets=code_mode.refuse_secrets,
    )
