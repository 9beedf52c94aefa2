"""What got weaker and what got stronger between two policies, per profile and field.

Every field has a direction. A change that loosens a limit, adds access or removes a protection is
WEAKER; one that tightens is stronger; one without an order (a different user, seccomp profile or
mapping) is CHANGED and needs a reviewer's eye just the same. Code mode: `policy.code_mode_diff`;
egress: `policy.egress_diff`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from limits import parse

from policy.code_mode_diff import Verdict, code_mode_changes
from policy.egress_diff import egress_changes
from policy.interpreter_model import InterpreterLimits
from policy.model import Policy, Profile

__all__ = ["Change", "diff_policies", "render_diff"]


@dataclass(frozen=True, slots=True)
class Change:
    profile: str
    field: str
    old: Any
    new: Any
    verdict: Verdict


def _higher_is_weaker(old: float, new: float) -> Verdict:
    return "weaker" if new > old else "stronger"


def _true_is_stronger(old: bool, new: bool) -> Verdict:
    return "stronger" if new else "weaker"


def _rate(text: str) -> float:
    item = parse(text)
    return float(item.amount) / float(item.get_expiry())


#: Ordered fields: how to compare old and new.
_NUMERIC = (
    "sandbox.cpus",
    "sandbox.memory",
    "sandbox.memory_swap",
    "sandbox.pids_limit",
    "exec.default_timeout_s",
    "exec.max_timeout_s",
    "exec.max_output_bytes",
    "exec.max_input_bytes",
    "exec.max_concurrent",
    "exec.max_concurrent_per_tenant",
    "lifecycle.idle_ttl_s",
    "lifecycle.max_age_s",
    "lifecycle.max_sandboxes_per_tenant",
    *(f"interpreter.{name}" for name in InterpreterLimits.model_fields),
)
_BOOLEAN = ("sandbox.read_only_rootfs", "sandbox.no_new_privileges", "sandbox.init")
_SETS = ("tools", "sandbox.images", "sandbox.cap_add")
_RATES = ("rate_limits.requests", "rate_limits.tenant_requests", "rate_limits.sandbox_creations")
#: `sandbox.network` follows `egress` (policy/egress_model.py), whose own changes are listed instead.
_UNORDERED = ("sandbox.seccomp", "sandbox.workdir", "sandbox.host_labels")


def _get(profile: Profile, dotted: str) -> Any:
    value: Any = profile
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _profile_changes(name: str, old: Profile, new: Profile) -> Iterator[Change]:
    compare: list[tuple[str, Callable[[Any, Any], Verdict]]] = [
        *((f, _higher_is_weaker) for f in _NUMERIC),
        *((f, _true_is_stronger) for f in _BOOLEAN),
        *((f, lambda a, b: _higher_is_weaker(_rate(a), _rate(b))) for f in _RATES),
    ]
    for field, judge in compare:
        a, b = _get(old, field), _get(new, field)
        if a != b:
            yield Change(name, field, a, b, judge(a, b))
    for field in _SETS:
        a, b = set(_get(old, field)), set(_get(new, field))
        for item in sorted(b - a):
            yield Change(name, f"{field}[{item}]", None, "added", "weaker")
        for item in sorted(a - b):
            yield Change(name, f"{field}[{item}]", "present", None, "stronger")
    if old.sandbox.runtime != new.sandbox.runtime:
        runtime: Verdict = "stronger" if new.sandbox.runtime == "runsc" else "weaker"
        yield Change(name, "sandbox.runtime", old.sandbox.runtime, new.sandbox.runtime, runtime)
    for field in _UNORDERED:
        a, b = _get(old, field), _get(new, field)
        if a != b:
            yield Change(name, field, a, b, "changed")
    yield from _tmpfs_changes(name, old, new)
    yield from _ulimit_changes(name, old, new)
    for field, a, b, verdict in code_mode_changes(old.code_mode, new.code_mode):
        yield Change(name, field, a, b, verdict)
    for field, a, b, verdict in egress_changes(old.egress, new.egress):
        yield Change(name, field, a, b, verdict)


def _tmpfs_changes(name: str, old: Profile, new: Profile) -> Iterator[Change]:
    before = {m.path: m for m in old.sandbox.tmpfs}
    after = {m.path: m for m in new.sandbox.tmpfs}
    for path in sorted(after.keys() - before.keys()):
        yield Change(name, f"sandbox.tmpfs[{path}]", None, "added", "weaker")
    for path in sorted(before.keys() - after.keys()):
        yield Change(name, f"sandbox.tmpfs[{path}]", "present", None, "stronger")
    for path in sorted(before.keys() & after.keys()):
        a, b = before[path], after[path]
        if a.size != b.size:
            yield Change(
                name, f"sandbox.tmpfs[{path}].size", a.size, b.size, _higher_is_weaker(a.size, b.size)
            )
        if a.noexec != b.noexec:
            yield Change(
                name,
                f"sandbox.tmpfs[{path}].noexec",
                a.noexec,
                b.noexec,
                _true_is_stronger(a.noexec, b.noexec),
            )
        if a.mode != b.mode:
            yield Change(name, f"sandbox.tmpfs[{path}].mode", oct(a.mode), oct(b.mode), "changed")


def _ulimit_changes(name: str, old: Profile, new: Profile) -> Iterator[Change]:
    a, b = old.sandbox.ulimits, new.sandbox.ulimits
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            yield Change(name, f"sandbox.ulimits.{key}", a[key], "unlimited", "weaker")
        elif key not in a:
            yield Change(name, f"sandbox.ulimits.{key}", "unlimited", b[key], "stronger")
        elif a[key] != b[key]:
            yield Change(name, f"sandbox.ulimits.{key}", a[key], b[key], _higher_is_weaker(a[key], b[key]))


def diff_policies(old: Policy, new: Policy) -> list[Change]:
    """Every difference that matters for security, with its verdict."""
    changes: list[Change] = []
    for name in sorted(old.profiles.keys() | new.profiles.keys()):
        if name not in old.profiles:
            changes.append(Change(name, "<profile>", None, "added", "weaker"))
        elif name not in new.profiles:
            changes.append(Change(name, "<profile>", "present", None, "stronger"))
        else:
            changes.extend(_profile_changes(name, old.profiles[name], new.profiles[name]))
    if old.audit.code != new.audit.code:
        verdict: Verdict = "weaker" if new.audit.code == "full" else "changed"
        changes.append(Change("<audit>", "audit.code", old.audit.code, new.audit.code, verdict))
    for section in ("principals", "tenants"):
        a, b = getattr(old, section), getattr(new, section)
        for who in sorted(a.keys() | b.keys()):
            if a.get(who) != b.get(who):
                changes.append(Change("<mapping>", f"{section}.{who}", a.get(who), b.get(who), "changed"))
    return changes


_MARK = {"weaker": "!! WEAKER ", "changed": "?  CHANGED", "stronger": "   stronger"}


def render_diff(changes: list[Change]) -> str:
    """A reviewer's report: one line per change, weakenings marked so they cannot be missed."""
    if not changes:
        return "no security-relevant change\n"
    lines, current = [], None
    for change in changes:
        if change.profile != current:
            current = change.profile
            lines.append(f"profile {current}:" if not current.startswith("<") else f"{current}:")
        lines.append(f"  {_MARK[change.verdict]}  {change.field}: {change.old} -> {change.new}")
    counts = {v: sum(c.verdict == v for c in changes) for v in ("weaker", "changed", "stronger")}
    lines.append(f"{counts['weaker']} weaker, {counts['changed']} changed, {counts['stronger']} stronger")
    return "\n".join(lines) + "\n"
