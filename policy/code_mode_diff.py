"""What `policy diff` says about a profile's `code_mode`.

WEAKER: code mode turned on; a server/tool newly allowed (`*`: every tool, said so); an argument
constraint removed or loosened (a prefix that is not below the old one, a value added to `one_of`, a
higher `max_length`, `required` dropped); higher budgets, sizes and timeouts; `refuse_secrets` off.
Stronger: the reverse. A tool is compared with the rule that allowed it before, whichever it was: a
tool once allowed by `*` and now named alone is not new, but its constraints are compared.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Literal

from policy.code_mode_model import ALL_TOOLS, ArgumentConstraint, CodeMode, UpstreamRule

__all__ = ["Verdict", "code_mode_changes"]

Verdict = Literal["weaker", "stronger", "changed"]
#: (field, old, new, verdict), as a `policy.diff.Change` has them.
Item = tuple[str, Any, Any, Verdict]

_BUDGETS = (
    "calls_per_execution",
    "calls_per_minute",
    "max_argument_bytes",
    "max_result_bytes",
    "call_timeout_s",
)


def _higher_is_weaker(old: float, new: float) -> Verdict:
    return "weaker" if new > old else "stronger"


def _grant(tool: str, rule: UpstreamRule) -> str:
    text = "added: EVERY tool of the server ('*')" if tool == ALL_TOOLS else "added"
    if rule.arguments:
        text += " (" + "; ".join(f"{name}: {c.describe()}" for name, c in rule.arguments.items()) + ")"
    return text


def _grants(mode: CodeMode) -> dict[str, tuple[str, str, UpstreamRule]]:
    return {f"{rule.server}/{tool}": (rule.server, tool, rule) for rule in mode.allow for tool in rule.tools}


def _cover(mode: CodeMode, server: str, tool: str) -> UpstreamRule | None:
    """The rule of `mode` that allows `server`/`tool` (for `*`: the server's `*` rule), or None."""
    if tool == ALL_TOOLS:
        return next((r for r in mode.allow if r.server == server and r.tools == (ALL_TOOLS,)), None)
    found = mode.rule_for(server, tool)
    return found[1] if found else None


def _one_of(values: tuple[Any, ...]) -> set[tuple[str, Any]]:
    return {(type(value).__name__, value) for value in values}


def _constraint_changes(field: str, a: ArgumentConstraint, b: ArgumentConstraint) -> Iterator[Item]:
    if a.prefix != b.prefix:
        narrower = a.prefix is None or (b.prefix is not None and b.prefix.startswith(a.prefix))
        yield f"{field}.prefix", a.prefix, b.prefix, "stronger" if narrower else "weaker"
    before = None if a.one_of is None else _one_of(a.one_of)  # type-aware: `1 == True` in Python
    after = None if b.one_of is None else _one_of(b.one_of)
    if before != after:
        subset = before is None or (after is not None and after <= before)
        old = None if a.one_of is None else list(a.one_of)
        new = None if b.one_of is None else list(b.one_of)
        yield f"{field}.one_of", old, new, "stronger" if subset else "weaker"
    if a.max_length != b.max_length:
        if a.max_length is None or b.max_length is None:
            verdict: Verdict = "stronger" if a.max_length is None else "weaker"
        else:
            verdict = _higher_is_weaker(a.max_length, b.max_length)
        yield f"{field}.max_length", a.max_length, b.max_length, verdict
    if a.required != b.required:
        yield f"{field}.required", a.required, b.required, "stronger" if b.required else "weaker"


def _argument_changes(
    key: str, old: Mapping[str, ArgumentConstraint], new: Mapping[str, ArgumentConstraint]
) -> Iterator[Item]:
    for name in sorted(old.keys() | new.keys()):
        field = f"code_mode.allow[{key}].arguments.{name}"
        a, b = old.get(name), new.get(name)
        if b is None and a is not None:
            yield field, a.describe(), "unconstrained", "weaker"
        elif a is None and b is not None:
            yield field, "unconstrained", b.describe(), "stronger"
        elif a is not None and b is not None:
            yield from _constraint_changes(field, a, b)


def _allow_changes(old: CodeMode, new: CodeMode) -> Iterator[Item]:
    before, after = _grants(old), _grants(new)
    for key, (server, tool, rule) in sorted(after.items()):
        prior = _cover(old, server, tool)
        if prior is None:
            yield f"code_mode.allow[{key}]", None, _grant(tool, rule), "weaker"
        else:
            yield from _argument_changes(key, prior.arguments, rule.arguments)
    for key, (server, tool, rule) in sorted(before.items()):
        if key in after:
            continue
        now = _cover(new, server, tool)
        if now is None:
            yield f"code_mode.allow[{key}]", "present", None, "stronger"
        else:
            yield from _argument_changes(key, rule.arguments, now.arguments)


def code_mode_changes(old: CodeMode | None, new: CodeMode | None) -> Iterator[Item]:
    """Every difference between two `code_mode` settings of one profile, with its verdict."""
    if new is None:
        if old is not None:
            yield "code_mode", "on", "off", "stronger"
        return
    if old is None:
        yield "code_mode", "off", "on", "weaker"
        for key, (_, tool, rule) in sorted(_grants(new).items()):
            yield f"code_mode.allow[{key}]", None, _grant(tool, rule), "weaker"
        return
    for name in _BUDGETS:
        a, b = getattr(old, name), getattr(new, name)
        if a != b:
            yield f"code_mode.{name}", a, b, _higher_is_weaker(a, b)
    if old.refuse_secrets != new.refuse_secrets:
        verdict: Verdict = "stronger" if new.refuse_secrets else "weaker"
        yield "code_mode.refuse_secrets", old.refuse_secrets, new.refuse_secrets, verdict
    yield from _allow_changes(old, new)
