"""evaluate(principal, action) -> Decision. Pure: no I/O, no clock, no Docker."""

from __future__ import annotations

import math

from policy.model import Policy
from policy.types import Action, Decision, Principal

__all__ = ["PolicyEngine", "evaluate"]


class PolicyEngine:
    """A loaded policy and its digest, ready to decide."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.digest = policy.digest()

    def evaluate(self, principal: Principal, action: Action) -> Decision:
        """Decide one tool call. Denials carry a stable reason code and the rule that decided."""
        profile = self.policy.profiles.get(principal.profile)
        if profile is None:
            return self._deny(
                principal.profile,
                "unknown-profile",
                "profiles",
                f"principal {principal.id!r} is mapped to profile {principal.profile!r}, "
                "which the policy does not define",
            )
        base = f"profiles.{principal.profile}"
        if action.tool not in profile.tools:
            return self._deny(
                principal.profile,
                "tool-not-allowed",
                f"{base}.tools",
                f"tool {action.tool!r} is not allowed for profile {principal.profile!r}",
            )
        limits = profile.exec
        if action.input_bytes > limits.max_input_bytes:
            return self._deny(
                principal.profile,
                "input-too-large",
                f"{base}.exec.max_input_bytes",
                f"input is {action.input_bytes} bytes; the limit is {limits.max_input_bytes}",
            )
        timeout = limits.default_timeout_s if action.timeout_s is None else action.timeout_s
        if not math.isfinite(timeout) or timeout <= 0:
            return self._deny(
                principal.profile,
                "timeout-invalid",
                f"{base}.exec.max_timeout_s",
                "timeout_s must be a positive number of seconds",
            )
        if timeout > limits.max_timeout_s:
            return self._deny(
                principal.profile,
                "timeout-above-max",
                f"{base}.exec.max_timeout_s",
                f"timeout_s={timeout:g} exceeds the profile's maximum of {limits.max_timeout_s:g} s",
            )
        image = action.image or profile.sandbox.images[0]
        if image not in profile.sandbox.images:
            return self._deny(
                principal.profile,
                "image-not-allowed",
                f"{base}.sandbox.images",
                f"image {image!r} is not in the profile's allow-list {list(profile.sandbox.images)}",
            )
        return Decision(
            allowed=True,
            profile=principal.profile,
            policy_digest=self.digest,
            reasons=("allowed",),
            rule_ids=(f"{base}.tools", f"{base}.exec", f"{base}.sandbox.images"),
            spec=profile.sandbox,
            limits=limits,
            image=image,
            timeout_s=timeout,
        )

    def _deny(self, profile: str, reason: str, rule_id: str, message: str) -> Decision:
        return Decision(
            allowed=False,
            profile=profile,
            policy_digest=self.digest,
            reasons=(reason,),
            rule_ids=(rule_id,),
            message=message,
        )


def evaluate(policy: Policy, principal: Principal, action: Action) -> Decision:
    """One-shot evaluation; long-lived callers keep a PolicyEngine to reuse the digest."""
    return PolicyEngine(policy).evaluate(principal, action)
