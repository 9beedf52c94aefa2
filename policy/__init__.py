"""The policy engine: a pure library that turns (principal, action, policy) into a Decision.

No Docker, no network: the only I/O is reading policy files.
"""

from policy.code_mode import (
    ARGUMENT_NOT_ALLOWED,
    ARGUMENT_TOO_LARGE,
    CODE_MODE_OFF,
    UPSTREAM_NOT_ALLOWED,
    argument_size,
)
from policy.code_mode_model import ArgumentConstraint, CodeMode, UpstreamRule
from policy.engine import PolicyEngine, evaluate
from policy.errors import PolicyError, PolicyLoadError
from policy.loader import default_policy_path, load_policy, load_policy_text
from policy.model import ExecLimits, Policy, Profile, SandboxSpec
from policy.secrets import looks_like_secret
from policy.types import Action, Allowed, Decision, Denied, Principal, UpstreamAllowed, UpstreamDecision

__all__ = [
    "ARGUMENT_NOT_ALLOWED",
    "ARGUMENT_TOO_LARGE",
    "CODE_MODE_OFF",
    "UPSTREAM_NOT_ALLOWED",
    "Action",
    "Allowed",
    "ArgumentConstraint",
    "CodeMode",
    "Decision",
    "Denied",
    "ExecLimits",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "PolicyLoadError",
    "Principal",
    "Profile",
    "SandboxSpec",
    "UpstreamAllowed",
    "UpstreamDecision",
    "UpstreamRule",
    "argument_size",
    "default_policy_path",
    "evaluate",
    "load_policy",
    "load_policy_text",
    "looks_like_secret",
]
