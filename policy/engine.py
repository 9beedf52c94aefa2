"""evaluate(principal, action) -> Decision. Pure: no I/O, no clock, no Docker."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from policy.code_mode import decide_upstream
from policy.model import Policy, Profile
from policy.types import Action, Allowed, Decision, Denied, Principal, UpstreamDecision

__all__ = ["PolicyEngine", "evaluate"]

#: A check returns None to pass, or (reason code, rule id suffix, message) to deny.
Denial = tuple[str, str, str]
_Check = Callable[[str, Profile, Action], Denial | None]


def _tool(name: str, profile: Profile, action: Action) -> Denial | None:
    if action.tool in profile.tools:
        return None
    return "tool-not-allowed", "tools", f"tool {action.tool!r} is not allowed for profile {name!r}"


def _input_size(name: str, profile: Profile, action: Action) -> Denial | None:
    limit = profile.exec.max_input_bytes
    if action.input_bytes <= limit:
        return None
    return (
        "input-too-large",
        "exec.max_input_bytes",
        f"input is {action.input_bytes} bytes; the limit is {limit}",
    )


def _timeout(name: str, profile: Profile, action: Action) -> Denial | None:
    if action.timeout_s is None:
        return None
    limit = profile.exec.max_timeout_s
    if not math.isfinite(action.timeout_s) or action.timeout_s <= 0:
        return "timeout-invalid", "exec.max_timeout_s", "timeout_s must be a positive number of seconds"
    if action.timeout_s > limit:
        return (
            "timeout-above-max",
            "exec.max_timeout_s",
            f"timeout_s={action.timeout_s:g} exceeds the profile's maximum of {limit:g} s",
        )
    return None


def _image(name: str, profile: Profile, action: Action) -> Denial | None:
    if action.image is None or action.image in profile.sandbox.image_names():
        return None
    return (
        "image-not-allowed",
        "sandbox.images",
        f"image {action.image!r} is not in the profile's allow-list {list(profile.sandbox.image_names())}",
    )


_CHECKS: tuple[_Check, ...] = (_tool, _input_size, _timeout, _image)


class PolicyEngine:
    """A loaded policy and its digest, ready to decide."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.digest = policy.digest()

    def evaluate(self, principal: Principal, action: Action) -> Decision:
        """Decide one tool call. Denials carry a stable reason code and the rule that decided."""
        name = self.policy.profile_for(principal.id, principal.tenant, principal.profile)
        profile = self.policy.profiles.get(name)
        if profile is None:
            message = (
                f"principal {principal.id!r} is mapped to profile {name!r}, which the policy does not define"
            )
            return self._deny(name, ("unknown-profile", "profiles", message), base="")
        for check in _CHECKS:
            denial = check(name, profile, action)
            if denial is not None:
                return self._deny(name, denial, base=f"profiles.{name}.")
        base = f"profiles.{name}"
        return allow(
            name,
            profile,
            self.digest,
            image=action.image,
            timeout_s=action.timeout_s,
            rule_ids=(f"{base}.tools", f"{base}.exec", f"{base}.sandbox.images"),
        )

    def decide_upstream(
        self,
        principal: Principal,
        server: str,
        tool: str,
        arguments: Mapping[str, Any],
        argument_bytes: int,
    ) -> UpstreamDecision:
        """Decide one call of upstream `server`'s `tool` by code in `principal`'s sandbox (code mode).
        `arguments` is the decoded JSON object the sandbox sent, `argument_bytes` its encoded size.
        Denial reasons: code-mode-off, upstream-not-allowed, argument-too-large,
        argument-not-allowed (and unknown-profile, as `evaluate`)."""
        return decide_upstream(
            self.policy,
            self.digest,
            principal,
            server=server,
            tool=tool,
            arguments=arguments,
            argument_bytes=argument_bytes,
        )

    def _deny(self, profile: str, denial: Denial, *, base: str) -> Denied:
        reason, rule, message = denial
        return Denied(
            profile=profile,
            policy_digest=self.digest,
            reasons=(reason,),
            rule_ids=(f"{base}{rule}",),
            message=message,
        )


def allow(
    name: str,
    profile: Profile,
    digest: str,
    *,
    image: str | None = None,
    timeout_s: float | None = None,
    rule_ids: tuple[str, ...] = (),
) -> Allowed:
    """What profile `name` grants: its sandbox, limits and lifecycle, with `image` (default: the
    profile's first) and `timeout_s` (default: the profile's)."""
    image = image or profile.sandbox.image_names()[0]
    return Allowed(
        profile=name,
        policy_digest=digest,
        rule_ids=rule_ids,
        spec=profile.sandbox,
        limits=profile.exec,
        image=image,
        image_digest=profile.sandbox.pinned_digest(image),
        timeout_s=profile.exec.default_timeout_s if timeout_s is None else timeout_s,
        lifecycle=profile.lifecycle,
        rate_limits=profile.rate_limits,
        interpreter=profile.interpreter,
    )


def evaluate(policy: Policy, principal: Principal, action: Action) -> Decision:
    """One-shot evaluation; long-lived callers keep a PolicyEngine to reuse the digest."""
    return PolicyEngine(policy).evaluate(principal, action)
